"""Dropout on attention weights: off without a key or when deterministic,
oracle-exact with the keep mask it drew, and reproducible for a fixed key."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import attention_jax as aj
import oracle
from inputs import BATCH
from inputs import KEY_LENGTH as S
from inputs import NUM_HEADS as N
from inputs import QUERY_LENGTH as T
from inputs import attention_inputs
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

F32 = tolerance(np.float32)
RATE = 0.3

# Compiled once per configuration: the random-bit generation behind dropout
# is many small operations, slow to compile one by one in eager mode.
STATIC_OPTIONS = ("is_causal", "dropout_rate", "deterministic",
                  "return_weights")
attention = jax.jit(aj.dot_product_attention, static_argnames=STATIC_OPTIONS)
attention_weights = jax.jit(aj.dot_product_attention_weights,
                            static_argnames=STATIC_OPTIONS[:3])


def test_dropout_off_when_deterministic():
  query, key, value = attention_inputs(0)
  np.testing.assert_array_equal(
      attention(query, key, value, dropout_rate=RATE,
                               dropout_rng=jax.random.key(0),
                               deterministic=True),
      attention(query, key, value))


def test_dropout_off_without_rng():
  query, key, value = attention_inputs(1)
  np.testing.assert_array_equal(
      attention(query, key, value, dropout_rate=RATE),
      attention(query, key, value))


def test_dropout_weights_off_without_rng():
  query, key, _ = attention_inputs(2)
  np.testing.assert_array_equal(
      attention_weights(query, key, dropout_rate=RATE),
      attention_weights(query, key))


def test_dropout_rate_zero_is_identity():
  query, key, value = attention_inputs(3)
  np.testing.assert_array_equal(
      attention(query, key, value, dropout_rate=0.0,
                               dropout_rng=jax.random.key(1)),
      attention(query, key, value))


def dropout_case(seed):
  """Return inputs, options and the oracle's weights for a masked, biased,
  causal configuration."""
  query, key, value = attention_inputs(seed)
  mask = random_mask(seed + 1, (*BATCH, N, T, S), 0.8)
  bias = random_normal(seed + 2, (*BATCH, N, T, S))
  allowed = oracle.attention_mask(BATCH, N, T, S, mask=mask, is_causal=True)
  _, weights, _ = oracle.dot_product_attention(query, key, value, bias=bias,
                                               allowed=allowed)
  options = dict(bias=bias, mask=mask, is_causal=True, dropout_rate=RATE,
                 dropout_rng=jax.random.key(seed))
  return (query, key, value), options, weights


def test_dropout_weights_are_kept_and_rescaled():
  (query, key, value), options, expected = dropout_case(4)
  _, weights = attention(query, key, value,
                                        return_weights=True, **options)
  kept = np.asarray(weights) != 0
  np.testing.assert_allclose(weights, np.where(kept, expected, 0) / (1 - RATE),
                             **F32)


def test_dropout_output_matches_oracle_with_keep_mask():
  (query, key, value), options, expected = dropout_case(5)
  output, weights = attention(query, key, value,
                                             return_weights=True, **options)
  kept = np.asarray(weights) != 0
  dropped = np.where(kept, expected, 0) / (1 - RATE)
  np.testing.assert_allclose(output, oracle.weighted_values(dropped, value),
                             **F32)


def test_dropout_drops_some_weights():
  (query, key, value), options, expected = dropout_case(6)
  _, weights = attention(query, key, value,
                                        return_weights=True, **options)
  dropped = (np.asarray(weights) == 0) & (expected > 0)
  assert 0.2 < dropped.sum() / (expected > 0).sum() < 0.4


def test_dropout_reproducible_for_fixed_key():
  (query, key, value), options, _ = dropout_case(7)
  np.testing.assert_array_equal(
      attention(query, key, value, **options),
      attention(query, key, value, **options))


def test_dropout_differs_between_keys():
  (query, key, value), options, _ = dropout_case(8)
  other = dict(options, dropout_rng=jax.random.key(1234))
  difference = np.abs(
      np.asarray(attention(query, key, value, **options))
      - np.asarray(attention(query, key, value, **other)))
  assert difference.max() > 1e-3


def test_dropout_weights_function_matches_attention():
  (query, key, value), options, _ = dropout_case(9)
  _, weights = attention(query, key, value,
                                        return_weights=True, **options)
  np.testing.assert_array_equal(
      attention_weights(query, key, **options), weights)


def test_dropout_empty_rows_stay_zero():
  query, key, value = attention_inputs(10)
  lengths = np.array([0, 11], np.int32)
  output = attention(
      query, key, value, key_value_seq_lengths=lengths, dropout_rate=RATE,
      dropout_rng=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(output)[0], 0.0)


def test_attention_dropout_keep_fraction():
  weights = np.full((50_000,), 0.5, np.float32)
  dropped = np.asarray(aj.attention_dropout(weights, RATE, jax.random.key(3)))
  kept = dropped != 0
  assert abs(kept.mean() - (1 - RATE)) < 0.01


def test_attention_dropout_rescales_kept():
  weights = random_normal(11, (7, 11))
  dropped = np.asarray(aj.attention_dropout(weights, RATE, jax.random.key(4)))
  kept = dropped != 0
  np.testing.assert_allclose(dropped[kept], weights[kept] / (1 - RATE), **F32)


@pytest.mark.parametrize("rng", [None, "key"], ids=["no_rng", "deterministic"])
def test_attention_dropout_off(rng):
  weights = random_normal(12, (7, 11))
  key = None if rng is None else jax.random.key(5)
  np.testing.assert_array_equal(
      aj.attention_dropout(weights, RATE, key, deterministic=rng is not None),
      weights)
