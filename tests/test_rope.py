"""Tests for rotary position embeddings (RoPE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
import path_parity as pp
from tolerances import tolerance

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 7, 3, 10


def _x(seed=0, shape=(BATCH, LENGTH, HEADS, HEAD_DIM), dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _positions(seed=1, shape=(BATCH, LENGTH), high=500):
  return np.random.default_rng(seed).integers(0, high, shape).astype(np.int32)


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [None, 4], ids=["full", "partial"])
def test_rope_matches_oracle(pairing, rotary_dim):
  x, positions = _x(), _positions()

  rotated = aj.apply_rope(x, positions, rotary_dim=rotary_dim,
                          pairing=pairing)

  expected = oracle.rope(x, positions, rotary_dim=rotary_dim,
                         pairing=pairing)
  np.testing.assert_allclose(rotated, expected, rtol=1e-5, atol=1e-5)


def test_rope_base_and_shared_positions():
  x = _x(2)
  positions = np.arange(LENGTH, dtype=np.int32) + 3

  rotated = aj.apply_rope(x, positions, base=500.0, pairing="interleaved")

  expected = oracle.rope(x, positions, base=500.0, pairing="interleaved")
  np.testing.assert_allclose(rotated, expected, rtol=1e-5, atol=1e-5)


def test_rope_position_zero_is_identity():
  x = _x(3)
  rotated = aj.apply_rope(x, np.zeros((LENGTH,), np.int32))
  np.testing.assert_array_equal(rotated, x)


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_rope_scores_depend_on_offset_only(pairing):
  query = _x(4, (1, LENGTH, HEADS, HEAD_DIM))
  key = _x(5, (1, LENGTH, HEADS, HEAD_DIM))
  query_positions = _positions(6, (1, LENGTH), high=50)
  key_positions = _positions(7, (1, LENGTH), high=50)

  def scores(query_shift, key_shift):
    rotated_query = aj.apply_rope(query, query_positions + query_shift,
                                  pairing=pairing)
    rotated_key = aj.apply_rope(key, key_positions + key_shift,
                                pairing=pairing)
    return jnp.einsum("btnh,bsnh->bnts", rotated_query, rotated_key)

  base = scores(0, 0)
  np.testing.assert_allclose(scores(37, 37), base, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores(211, 211), base, rtol=1e-4, atol=1e-4)
  assert not np.allclose(scores(5, 0), base, atol=1e-2)


def test_rope_pairings_are_channel_permutation():
  x, positions = _x(8), _positions(9)
  # Interleaved pair (2i, 2i + 1) sits at half-layout channels (i, i + H/2).
  to_half = np.concatenate([np.arange(0, HEAD_DIM, 2),
                            np.arange(1, HEAD_DIM, 2)])
  to_interleaved = np.argsort(to_half)

  interleaved = aj.apply_rope(x, positions, pairing="interleaved")
  via_half = aj.apply_rope(x[..., to_half], positions, pairing="half")

  np.testing.assert_allclose(via_half[..., to_interleaved], interleaved,
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(aj.apply_rope(x, positions, pairing="half"),
                         interleaved, atol=1e-2)


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_rope_partial_rotation_keeps_tail(pairing):
  x, positions = _x(10), _positions(11)

  rotated = aj.apply_rope(x, positions, rotary_dim=6, pairing=pairing)
  head_only = aj.apply_rope(x[..., :6], positions, pairing=pairing)

  np.testing.assert_array_equal(rotated[..., 6:], x[..., 6:])
  np.testing.assert_allclose(rotated[..., :6], head_only, rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_rope_returns_input_dtype(dtype):
  x, positions = _x(12), _positions(13)
  low = jnp.asarray(x, dtype)

  rotated = aj.apply_rope(low, positions)

  assert rotated.dtype == dtype
  expected = oracle.rope(low, positions)
  np.testing.assert_allclose(rotated.astype(np.float32), expected,
                             **tolerance(dtype))


def test_rope_under_jit_and_vmap():
  x, positions = _x(14), _positions(15)
  expected = aj.apply_rope(x, positions)

  jitted = jax.jit(aj.apply_rope, static_argnames=("pairing",))(
      x, positions, pairing="half")
  mapped = jax.vmap(aj.apply_rope)(x, positions)

  np.testing.assert_allclose(jitted, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mapped, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "x_shape, positions, options, error, message",
    [
        ((2, 7, 3, 10), np.arange(7), dict(rotary_dim=5), ValueError,
         r"`rotary_dim` should be a positive even integer, but got 5"),
        ((2, 7, 3, 10), np.arange(7), dict(rotary_dim=12), ValueError,
         r"`rotary_dim` should be at most the head dimension H=10, but "
         r"got 12"),
        ((2, 7, 3, 9), np.arange(7), dict(), ValueError,
         r"head dimension H=9 should be even"),
        ((2, 7, 3, 10), np.arange(7), dict(pairing="neox"), ValueError,
         r"`pairing` should be one of \('half', 'interleaved'\), but got "
         r"'neox'"),
        ((2, 7, 3, 10), np.arange(6), dict(), ValueError,
         r"`positions` should have shape \[L\] or \[B..., L\] broadcasting "
         r"to \[B..., L\] = \(2, 7\) of the input \(2, 7, 3, 10\), but got "
         r"\(6,\)"),
        ((2, 7, 3, 10), np.zeros((3, 7), np.int32), dict(), ValueError,
         r"but got \(3, 7\)"),
        ((2, 7, 3, 10), np.arange(7.0), dict(), TypeError,
         r"`positions` should have an integer dtype, but got float"),
    ],
    ids=["odd-rotary-dim", "rotary-dim-too-large", "odd-head-dim",
         "unknown-pairing", "positions-length", "positions-batch",
         "float-positions"])
def test_rope_errors(x_shape, positions, options, error, message):
  with pytest.raises(error, match=message):
    aj.apply_rope(np.zeros(x_shape, np.float32), positions, **options)


def test_rope_reference_and_chunked_agree():
  query, key, value = pp.attention_inputs(17)
  query_positions = np.arange(pp.QUERY_LEN) + (pp.KEY_LEN - pp.QUERY_LEN)
  key_positions = np.arange(pp.KEY_LEN)
  options = dict(rotary_dim=6, pairing="interleaved")

  def attend(implementation, query, key, value):
    query = aj.apply_rope(query, query_positions, **options)
    key = aj.apply_rope(key, key_positions, **options)
    if implementation == "chunked":
      return aj.chunked_attention(query, key, value, **pp.CAUSAL_PADDING,
                                  **pp.BLOCKS)
    return aj.dot_product_attention(query, key, value,
                                    implementation="reference",
                                    **pp.CAUSAL_PADDING)

  out, _ = pp.assert_paths_agree(attend, (query, key, value),
                              ("query", "key", "value"))

  allowed = oracle.attention_mask(
      (pp.BATCH,), pp.NUM_HEADS, pp.QUERY_LEN, pp.KEY_LEN,
      **pp.CAUSAL_PADDING)
  expected, _, _ = oracle.dot_product_attention(
      oracle.rope(query, query_positions, **options),
      oracle.rope(key, key_positions, **options), value, allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
