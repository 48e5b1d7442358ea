"""`dot_product_attention` and `dot_product_attention_weights` against the
float64 oracle over a table of configurations."""

from __future__ import annotations

import numpy as np
import pytest

import attention_jax as aj
import oracle
from inputs import BATCH
from inputs import KEY_LENGTH as S
from inputs import MULTI_BATCH
from inputs import NUM_HEADS as N
from inputs import QUERY_LENGTH as T
from inputs import attention_inputs
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

MASK_OPTIONS = ("mask", "is_causal", "query_offset", "query_seq_lengths",
                "key_value_seq_lengths", "local_window_size",
                "query_segment_ids", "key_segment_ids")


def case(batch=BATCH, query_length=T, key_length=S, num_kv_heads=3,
         **options):
  """Return the shapes and keyword arguments of one configuration."""
  return dict(batch=batch, query_length=query_length, key_length=key_length,
              num_kv_heads=num_kv_heads, options=options)


def segment_ids(seed, shape, count=3):
  ids = np.random.default_rng(seed).integers(0, count, shape)
  return np.sort(ids, axis=-1).astype(np.int32)


CASES = {
    "plain": case(),
    "mask_full": case(mask=random_mask(1, (*BATCH, N, T, S))),
    "mask_keys_only": case(mask=random_mask(2, (*BATCH, 1, 1, S))),
    "mask_rank_two": case(mask=random_mask(3, (T, S))),
    "mask_rank_one": case(mask=random_mask(19, (S,))),
    "mask_empty_rows": case(mask=random_mask(4, (*BATCH, N, T, S), 0.15)),
    "bias_full": case(bias=random_normal(5, (*BATCH, N, T, S))),
    "bias_per_head": case(bias=random_normal(6, (N, 1, S))),
    "bias_and_mask": case(bias=random_normal(7, (*BATCH, 1, T, S)),
                          mask=random_mask(8, (N, T, S))),
    "causal_square": case(query_length=T, key_length=T, is_causal=True),
    "causal_fewer_queries": case(is_causal=True),
    "causal_more_queries": case(query_length=S, key_length=T, is_causal=True),
    "causal_offset_scalar": case(is_causal=True, query_offset=2),
    "causal_offset_batched": case(
        is_causal=True, query_offset=np.array([0, 4], np.int32)),
    "query_lengths": case(query_seq_lengths=np.array([3, 7], np.int32)),
    "key_lengths": case(key_value_seq_lengths=np.array([5, 11], np.int32)),
    "key_length_zero": case(key_value_seq_lengths=np.array([0, 9], np.int32)),
    "lengths_and_causal": case(
        is_causal=True, query_seq_lengths=np.array([7, 4], np.int32),
        key_value_seq_lengths=np.array([6, 10], np.int32)),
    "window_pair": case(local_window_size=(2, 1)),
    "window_int": case(local_window_size=2),
    "window_causal": case(local_window_size=(3, 0), is_causal=True),
    "window_offset": case(local_window_size=(1, 3),
                          query_offset=np.array([1, 5], np.int32)),
    "window_square": case(query_length=T, key_length=T,
                          local_window_size=(1, 2)),
    "segments": case(query_segment_ids=segment_ids(9, (*BATCH, T)),
                     key_segment_ids=segment_ids(10, (*BATCH, S))),
    "multi_query": case(num_kv_heads=1),
    "multi_head": case(num_kv_heads=N),
    "scale_custom": case(scale=0.37),
    "scale_one": case(scale=1.0),
    "multi_batch": case(
        batch=MULTI_BATCH, mask=random_mask(11, (*MULTI_BATCH, 1, T, S), 0.8),
        bias=random_normal(12, (MULTI_BATCH[-1], N, T, S)), is_causal=True,
        query_offset=np.array([[0, 1, 2, 3], [4, 3, 2, 1]], np.int32),
        key_value_seq_lengths=np.array([[11, 9, 7, 5], [4, 6, 8, 10]],
                                       np.int32)),
    "no_batch": case(
        batch=(), mask=random_mask(13, (N, T, S), 0.8),
        bias=random_normal(14, (T, S)), is_causal=True, query_offset=3,
        key_value_seq_lengths=np.array(9, np.int32)),
    "everything": case(
        mask=random_mask(15, (*BATCH, N, T, S), 0.9),
        bias=random_normal(16, (*BATCH, N, T, S)), scale=0.5, is_causal=True,
        query_seq_lengths=np.array([6, 7], np.int32),
        key_value_seq_lengths=np.array([11, 8], np.int32),
        local_window_size=(4, 0),
        query_segment_ids=segment_ids(17, (*BATCH, T), count=2),
        key_segment_ids=segment_ids(18, (*BATCH, S), count=2)),
}
CASE_IDS = list(CASES)


def inputs_for(config, seed=0):
  return attention_inputs(
      seed, batch=config["batch"], query_length=config["query_length"],
      key_length=config["key_length"], num_kv_heads=config["num_kv_heads"])


def expected_for(config, query, key, value):
  """Return the oracle's `(output, weights, logsumexp)` for a configuration."""
  options = config["options"]
  allowed = oracle.attention_mask(
      config["batch"], N, config["query_length"], config["key_length"],
      **{name: options[name] for name in MASK_OPTIONS if name in options})
  return oracle.dot_product_attention(
      query, key, value, scale=options.get("scale"), bias=options.get("bias"),
      allowed=allowed)


@pytest.mark.parametrize("name", CASE_IDS)
def test_output_matches_oracle(name):
  config = CASES[name]
  query, key, value = inputs_for(config)
  expected, _, _ = expected_for(config, query, key, value)
  output = aj.dot_product_attention(query, key, value, **config["options"])
  assert output.shape == expected.shape
  np.testing.assert_allclose(output, expected, **tolerance(np.float32))


@pytest.mark.parametrize("name", CASE_IDS)
def test_weights_match_oracle(name):
  config = CASES[name]
  query, key, value = inputs_for(config)
  _, expected, _ = expected_for(config, query, key, value)
  weights = aj.dot_product_attention_weights(query, key, **config["options"])
  assert weights.shape == expected.shape
  np.testing.assert_allclose(weights, expected, **tolerance(np.float32))


@pytest.mark.parametrize("name", CASE_IDS)
def test_residual_matches_oracle(name):
  config = CASES[name]
  query, key, value = inputs_for(config)
  _, _, expected = expected_for(config, query, key, value)
  _, residual = aj.dot_product_attention(
      query, key, value, return_residual=True, **config["options"])
  assert residual.shape == expected.shape
  np.testing.assert_allclose(residual, expected, **tolerance(np.float32))


@pytest.mark.parametrize("name", ["plain", "everything", "multi_query"])
def test_returned_weights_match_weights_function(name):
  config = CASES[name]
  query, key, value = inputs_for(config)
  _, weights = aj.dot_product_attention(
      query, key, value, return_weights=True, **config["options"])
  np.testing.assert_array_equal(
      weights,
      aj.dot_product_attention_weights(query, key, **config["options"]))


def test_return_order_residual_then_weights():
  query, key, value = attention_inputs(0)
  output, residual, weights = aj.dot_product_attention(
      query, key, value, return_residual=True, return_weights=True)
  assert output.shape == (*BATCH, T, N, 13)
  assert residual.shape == (*BATCH, T, N)
  assert weights.shape == (*BATCH, N, T, S)


@pytest.mark.parametrize("implementation",
                         [None, "reference", "xla", "chunked"])
def test_implementations_agree(implementation):
  config = CASES["everything"]
  query, key, value = inputs_for(config)
  expected, _, _ = expected_for(config, query, key, value)
  output = aj.dot_product_attention(
      query, key, value, implementation=implementation, **config["options"])
  np.testing.assert_allclose(output, expected, **tolerance(np.float32))


def test_value_head_dim_differs_from_key():
  query, key, value = attention_inputs(1, value_dim=2)
  expected, _, _ = oracle.dot_product_attention(query, key, value)
  output = aj.dot_product_attention(query, key, value)
  assert output.shape == (*BATCH, T, N, 2)
  np.testing.assert_allclose(output, expected, **tolerance(np.float32))


def test_single_key():
  query, key, value = attention_inputs(2, key_length=1)
  output = aj.dot_product_attention(query, key, value)
  expected = np.repeat(value[:, :, [0, 0, 1, 1, 2, 2], :], T, axis=1)
  np.testing.assert_allclose(output, expected, **tolerance(np.float32))
