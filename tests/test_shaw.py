"""Tests for Shaw et al. relative position representations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
import path_parity as pp
from tolerances import tolerance

MAX_DISTANCE = 4  # k: tables have 2k + 1 = 9 rows


def _tables(seed, head_dim=pp.HEAD_DIM, value_dim=pp.VALUE_DIM,
            max_distance=MAX_DISTANCE):
  rng = np.random.default_rng(seed)
  rows = 2 * max_distance + 1
  return (jnp.asarray(rng.standard_normal((rows, head_dim)), jnp.float32),
          jnp.asarray(rng.standard_normal((rows, value_dim)), jnp.float32))


def _oracle_distance(query_len, key_len, query_offset=None):
  query_positions, key_positions = oracle.default_positions(
      query_len, key_len, query_offset)
  return oracle.relative_positions((pp.BATCH,), query_positions,
                                   key_positions)


@pytest.mark.parametrize(
    "use_keys, use_values, masks",
    [(True, True, dict(is_causal=True,
                       key_value_seq_lengths=np.array([9, 11], np.int32))),
     (True, False, dict()),
     (False, True, dict(query_seq_lengths=np.array([7, 3], np.int32)))],
    ids=["keys-values-causal", "keys-only", "values-only-padding"])
def test_shaw_reference_matches_oracle(use_keys, use_values, masks):
  query, key, value = pp.attention_inputs(1, query_len=7, key_len=11)
  relative_keys, relative_values = _tables(2, max_distance=3)
  relative_keys = relative_keys if use_keys else None
  relative_values = relative_values if use_values else None

  out = jax.jit(lambda *arrays: aj.shaw_attention(
      *arrays, implementation="reference", **masks))(
          query, key, value, relative_keys, relative_values)

  allowed = oracle.attention_mask((pp.BATCH,), pp.NUM_HEADS, 7, 11, **masks)
  expected = oracle.shaw_attention(
      query, key, value, relative_keys, relative_values,
      _oracle_distance(7, 11), allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize(
    "masks",
    [pp.CAUSAL_PADDING,
     dict(pp.BIDIRECTIONAL_PADDING,
          query_offset=np.array([3, 16], np.int32))],
    ids=["causal-padding", "bidirectional-offset"])
def test_shaw_reference_and_chunked_agree(masks):
  query, key, value = pp.attention_inputs(3)
  relative_keys, relative_values = _tables(4)

  def attend(implementation, *arrays):
    return aj.shaw_attention(*arrays, implementation=implementation,
                             **masks, **pp.BLOCKS)

  out, _ = pp.assert_paths_agree(
      attend, (query, key, value, relative_keys, relative_values),
      ("query", "key", "value", "relative_keys", "relative_values"))

  allowed = oracle.attention_mask(
      (pp.BATCH,), pp.NUM_HEADS, pp.QUERY_LEN, pp.KEY_LEN, **masks)
  expected = oracle.shaw_attention(
      query, key, value, relative_keys, relative_values,
      _oracle_distance(pp.QUERY_LEN, pp.KEY_LEN, masks.get("query_offset")),
      allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


def test_shaw_dropout_paths_agree():
  query, key, value = pp.attention_inputs(5, query_len=19, key_len=23)
  relative_keys, relative_values = _tables(6, max_distance=2)
  options = dict(dropout_rate=0.3, dropout_rng=jax.random.key(8),
                 key_value_seq_lengths=np.array([20, 23], np.int32))

  @jax.jit
  def both_paths(*arrays):
    return [aj.shaw_attention(*arrays, implementation=implementation,
                              **options, **pp.BLOCKS)
            for implementation in ("chunked", "reference")]

  chunked, reference = both_paths(query, key, value, relative_keys,
                                  relative_values)

  np.testing.assert_allclose(chunked, reference, rtol=1e-5, atol=2e-5)


def test_shaw_position_arrays_match_oracle():
  query, key, value = pp.attention_inputs(9, query_len=7, key_len=11)
  relative_keys, relative_values = _tables(10, max_distance=2)
  # Two packed sequences: positions restart where the second one starts.
  query_positions = np.array([[2, 3, 4, 0, 1, 2, 3]] * 2, np.int32)
  key_positions = np.array([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]] * 2,
                           np.int32)

  out = jax.jit(lambda *arrays: aj.shaw_attention(
      *arrays, query_positions=query_positions,
      key_positions=key_positions))(
          query, key, value, relative_keys, relative_values)

  distance = oracle.relative_positions((pp.BATCH,), query_positions,
                                       key_positions)
  expected = oracle.shaw_attention(query, key, value, relative_keys,
                                   relative_values, distance)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize(
    "tables, options, message",
    [
        ((np.ones((8, 8)), None), dict(),
         r"`relative_keys` should have shape \[2k\+1, H\] with k >= 1 and "
         r"H=8, but got \(8, 8\)"),
        ((None, np.ones((9, 8))), dict(),
         r"`relative_values` should have shape \[2k\+1, H_v\] with k >= 1 "
         r"and H_v=7, but got \(9, 8\)"),
        ((np.ones((9, 8)), np.ones((7, 7))), dict(),
         r"`relative_keys` and `relative_values` should have the same "
         r"number of rows 2k\+1, but got 9 and 7"),
        ((None, np.ones((9, 7))),
         dict(implementation="chunked", query_positions=np.arange(37),
              key_positions=np.arange(53)),
         r"implementation='chunked' finds relative-value buckets on "
         r"diagonals"),
    ],
    ids=["even-rows", "value-width", "row-mismatch", "chunked-positions"])
def test_shaw_errors(tables, options, message):
  query, key, value = pp.attention_inputs(11)
  tables = [None if table is None else table.astype(np.float32)
            for table in tables]
  with pytest.raises(ValueError, match=message):
    aj.shaw_attention(query, key, value, *tables, **options)
