"""Tests for T5 relative position buckets and the learned bias table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
import path_parity as pp
from tolerances import tolerance

# (key position - query position, expected bucket), worked out by hand from
# the T5 definition. 32 buckets bidirectional: 16 per direction, of which 8
# exact; distance n >= 8 gets 8 + floor(log(n / 8) / log(128 / 8) * 8).
BIDIRECTIONAL_32 = [
    (0, 0), (-1, 1), (-7, 7),
    (-8, 8), (-9, 8),  # first logarithmic buckets
    (-16, 10), (-20, 10), (-30, 11), (-32, 12), (-50, 13), (-64, 14),
    (-100, 15), (-127, 15),
    (-128, 15), (-1000, 15),  # at and beyond max_distance: last bucket
    (1, 17), (8, 24), (16, 26), (200, 31),  # keys after the query: +16
]
# 32 buckets causal: 16 exact, then 16 + floor(log(n / 16) / log(8) * 16);
# keys after the query share bucket 0.
CAUSAL_32 = [
    (0, 0), (-1, 1), (-15, 15), (-16, 16), (-31, 21), (-32, 21), (-64, 26),
    (-127, 31), (-128, 31), (-500, 31), (1, 0), (100, 0),
]
# 8 buckets bidirectional, max_distance 20: 4 per direction, 2 exact.
BIDIRECTIONAL_8 = [
    (0, 0), (-1, 1), (-2, 2), (-5, 2), (-7, 3), (-20, 3), (1, 5), (3, 6),
    (50, 7),
]


@pytest.mark.parametrize(
    "cases, options",
    [(BIDIRECTIONAL_32, dict(bidirectional=True)),
     (CAUSAL_32, dict(bidirectional=False)),
     (BIDIRECTIONAL_8, dict(bidirectional=True, num_buckets=8,
                            max_distance=20))],
    ids=["bidirectional-32", "causal-32", "bidirectional-8"])
def test_t5_buckets_hand_picked(cases, options):
  relative = np.array([distance for distance, _ in cases], np.int32)
  expected = [bucket for _, bucket in cases]

  buckets = jax.jit(lambda relative: aj.t5_relative_position_bucket(
      relative, **options))(relative)

  assert buckets.dtype == jnp.int32
  assert np.asarray(buckets).tolist() == expected


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_oracle(bidirectional):
  relative = np.arange(-300, 300, dtype=np.int32)
  options = dict(bidirectional=bidirectional, num_buckets=20,
                 max_distance=64)

  buckets = jax.jit(lambda relative: aj.t5_relative_position_bucket(
      relative, **options))(relative)

  expected = [oracle.t5_bucket(r, **options) for r in relative]
  assert np.asarray(buckets).tolist() == expected


def test_t5_relative_bias_matches_oracle():
  table = np.random.default_rng(0).standard_normal((16, 5)).astype(
      np.float32)
  positions = dict(query_positions=np.array([[3, 4, 5, 0, 1, 2, 3]] * 2),
                   key_positions=np.array([[0, 1, 2, 3, 4, 5, 0, 1, 2]] * 2))

  bias = jax.jit(lambda table: aj.t5_relative_bias(
      table, 7, 9, bidirectional=True, max_distance=12, **positions))(table)

  distance = oracle.relative_positions(
      (2,), positions["query_positions"], positions["key_positions"])
  expected = oracle.t5_bias(table, distance, bidirectional=True,
                            max_distance=12)
  assert bias.shape == (2, 5, 7, 9)
  np.testing.assert_array_equal(bias, expected.astype(np.float32))


def test_t5_reference_and_chunked_agree():
  query, key, value = pp.attention_inputs(3)
  table = jnp.asarray(np.random.default_rng(4).standard_normal(
      (16, pp.NUM_HEADS)), jnp.float32)
  options = dict(bidirectional=False, max_distance=24)

  def attend(implementation, query, key, value, table):
    if implementation == "chunked":
      score_mod = aj.t5_score_mod(pp.QUERY_LEN, pp.KEY_LEN, **options)
      return aj.chunked_attention(query, key, value, score_mod=score_mod,
                                  score_mod_params=table,
                                  **pp.CAUSAL_PADDING, **pp.BLOCKS)
    bias = aj.t5_relative_bias(table, pp.QUERY_LEN, pp.KEY_LEN, **options)
    return aj.dot_product_attention(query, key, value, bias,
                                    implementation="reference",
                                    **pp.CAUSAL_PADDING)

  out, _ = pp.assert_paths_agree(attend, (query, key, value, table),
                              ("query", "key", "value", "table"))

  query_positions, key_positions = oracle.default_positions(
      pp.QUERY_LEN, pp.KEY_LEN)
  distance = oracle.relative_positions((pp.BATCH,), query_positions,
                                       key_positions)
  allowed = oracle.attention_mask(
      (pp.BATCH,), pp.NUM_HEADS, pp.QUERY_LEN, pp.KEY_LEN,
      **pp.CAUSAL_PADDING)
  expected, _, _ = oracle.dot_product_attention(
      query, key, value, bias=oracle.t5_bias(table, distance, **options),
      allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


def test_t5_score_mod_matches_oracle_bidirectional():
  query, key, value = pp.attention_inputs(5, query_len=7, key_len=11)
  table = np.random.default_rng(6).standard_normal(
      (10, pp.NUM_HEADS)).astype(np.float32)
  offset = np.array([1, 4], np.int32)
  options = dict(bidirectional=True, max_distance=6)
  score_mod = aj.t5_score_mod(7, 11, query_offset=offset, **options)

  out = jax.jit(lambda query, key, value, table: aj.dot_product_attention(
      query, key, value, score_mod=score_mod, score_mod_params=table,
      implementation="reference"))(query, key, value, table)

  query_positions, key_positions = oracle.default_positions(7, 11, offset)
  distance = oracle.relative_positions((pp.BATCH,), query_positions,
                                       key_positions)
  expected, _, _ = oracle.dot_product_attention(
      query, key, value, bias=oracle.t5_bias(table, distance, **options))
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: aj.t5_relative_position_bucket(np.arange(3), num_buckets=3),
         ValueError, r"`num_buckets` should be at least 4 with "
         r"bidirectional=True, but got 3"),
        (lambda: aj.t5_relative_position_bucket(
            np.arange(3), bidirectional=False, num_buckets=1),
         ValueError, r"`num_buckets` should be at least 2 with "
         r"bidirectional=False, but got 1"),
        (lambda: aj.t5_relative_position_bucket(
            np.arange(3), num_buckets=32, max_distance=8),
         ValueError, r"`max_distance` should exceed the 8 exact buckets per "
         r"direction, but got 8"),
        (lambda: aj.t5_relative_position_bucket(np.arange(3.0)),
         TypeError, r"`relative_position` should have an integer dtype"),
        (lambda: aj.t5_relative_bias(np.ones(5, np.float32), 3, 4),
         ValueError, r"`table` should have shape \[num_buckets, N\], but "
         r"got \(5,\)"),
    ],
    ids=["bidirectional-buckets", "causal-buckets", "max-distance",
         "float-positions", "table-rank"])
def test_t5_errors(call, error, message):
  with pytest.raises(error, match=message):
    call()
