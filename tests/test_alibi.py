"""Tests for ALiBi slopes and linear biases."""

import jax
import numpy as np
import pytest

import attention_jax as aj
import oracle
import path_parity as pp
from tolerances import tolerance


def test_alibi_slopes_eight_heads():
  expected = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125,
              0.00390625]
  np.testing.assert_array_equal(aj.alibi_slopes(8), expected)


def test_alibi_slopes_six_heads():
  # Four heads of the 4-head sequence 2^-2, 2^-4, 2^-6, 2^-8, then the 1st
  # and 3rd slopes of the 8-head sequence, 2^-1 and 2^-3.
  expected = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1,
              2.0 ** -3]
  np.testing.assert_array_equal(aj.alibi_slopes(6), expected)


def test_alibi_slopes_twelve_heads():
  # The 8-head sequence, then the 1st, 3rd, 5th and 7th slopes of the
  # 16-head sequence 2^-0.5, 2^-1, 2^-1.5, ...
  expected = [2.0 ** -1, 2.0 ** -2, 2.0 ** -3, 2.0 ** -4, 2.0 ** -5,
              2.0 ** -6, 2.0 ** -7, 2.0 ** -8, 2.0 ** -0.5, 2.0 ** -1.5,
              2.0 ** -2.5, 2.0 ** -3.5]
  np.testing.assert_allclose(aj.alibi_slopes(12), expected, rtol=1e-7)


def test_alibi_slopes_three_and_one_heads():
  np.testing.assert_array_equal(aj.alibi_slopes(3),
                                [2.0 ** -4, 2.0 ** -8, 2.0 ** -2])
  np.testing.assert_array_equal(aj.alibi_slopes(1), [2.0 ** -8])


def test_alibi_bias_hand_written():
  # T = 2 queries at positions 2 and 3 (bottom-right), S = 4 keys.
  bias = aj.alibi_bias(np.array([0.5, 0.25], np.float32), 2, 4)

  distances = np.array([[2, 1, 0, 1], [3, 2, 1, 0]])
  np.testing.assert_array_equal(bias[0], -0.5 * distances)
  np.testing.assert_array_equal(bias[1], -0.25 * distances)


@pytest.mark.parametrize(
    "positions",
    [dict(query_offset=np.array([0, 9], np.int32)),
     dict(query_positions=np.array([[5, 6, 7, 0, 1, 2, 3]], np.int32)
          .repeat(2, 0),
          key_positions=np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]],
                                 np.int32).repeat(2, 0))],
    ids=["batched-offset", "packed-positions"])
def test_alibi_bias_matches_oracle(positions):
  slopes = aj.alibi_slopes(6)

  bias = aj.alibi_bias(slopes, 7, 11, **positions)

  if "query_offset" in positions:
    query, key = oracle.default_positions(7, 11, positions["query_offset"])
  else:
    query, key = positions["query_positions"], positions["key_positions"]
  distance = oracle.relative_positions((2,), query, key)
  np.testing.assert_allclose(bias, oracle.alibi_bias(slopes, distance),
                             rtol=1e-6)


def test_alibi_score_mod_equals_dense_bias():
  query, key, value = pp.attention_inputs(1, query_len=7, key_len=11)
  slopes = aj.alibi_slopes(pp.NUM_HEADS)
  offset = np.array([2, 5], np.int32)

  options = dict(is_causal=True, query_offset=offset,
                 implementation="reference")

  @jax.jit
  def both(query, key, value):
    score_mod = aj.alibi_score_mod(slopes, 7, 11, query_offset=offset)
    bias = aj.alibi_bias(slopes, 7, 11, query_offset=offset)
    return (aj.dot_product_attention(query, key, value, score_mod=score_mod,
                                     **options),
            aj.dot_product_attention(query, key, value, bias, **options))

  with_mod, with_bias = both(query, key, value)

  np.testing.assert_allclose(with_mod, with_bias, rtol=1e-6, atol=1e-6)


def test_alibi_reference_and_chunked_agree():
  query, key, value = pp.attention_inputs(2)
  slopes = aj.alibi_slopes(pp.NUM_HEADS)
  dense = aj.alibi_bias(slopes, pp.QUERY_LEN, pp.KEY_LEN)

  def attend(implementation, query, key, value):
    if implementation == "chunked":
      score_mod = aj.alibi_score_mod(slopes, pp.QUERY_LEN, pp.KEY_LEN)
      return aj.chunked_attention(query, key, value, score_mod=score_mod,
                                  **pp.CAUSAL_PADDING, **pp.BLOCKS)
    return aj.dot_product_attention(query, key, value, dense,
                                    implementation="reference",
                                    **pp.CAUSAL_PADDING)

  out, _ = pp.assert_paths_agree(attend, (query, key, value),
                              ("query", "key", "value"))

  query_positions, key_positions = oracle.default_positions(
      pp.QUERY_LEN, pp.KEY_LEN)
  distance = oracle.relative_positions((pp.BATCH,), query_positions,
                                       key_positions)
  allowed = oracle.attention_mask(
      (pp.BATCH,), pp.NUM_HEADS, pp.QUERY_LEN, pp.KEY_LEN,
      **pp.CAUSAL_PADDING)
  expected, _, _ = oracle.dot_product_attention(
      query, key, value, bias=oracle.alibi_bias(slopes, distance),
      allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: aj.alibi_slopes(0), ValueError,
         r"`num_heads` should be a positive integer, but got 0"),
        (lambda: aj.alibi_bias(np.ones((2, 3), np.float32), 4, 5),
         ValueError, r"`slopes` should have shape \[N\], but got \(2, 3\)"),
        (lambda: aj.alibi_score_mod(np.ones(3, np.float32), 4, 5,
                                    query_positions=np.arange(4)),
         ValueError, r"`query_positions` and `key_positions` should be "
         r"given together"),
        (lambda: aj.alibi_bias(np.ones(3, np.float32), 4, 5,
                               query_positions=np.arange(3),
                               key_positions=np.arange(5)),
         ValueError, r"`query_positions` should have shape \[T\] or "
         r"\[B..., T\] with a last axis of 4, but got \(3,\)"),
    ],
    ids=["zero-heads", "slopes-rank", "one-position-array",
         "positions-length"])
def test_alibi_errors(call, error, message):
  with pytest.raises(error, match=message):
    call()
