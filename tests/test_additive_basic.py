"""Additive (Bahdanau), multiplicative (Luong "general") and basic
feed-forward attention, and the score functions, against the float64 oracle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
from inputs import BATCH
from inputs import KEY_LENGTH as S
from inputs import MULTI_BATCH
from inputs import QUERY_LENGTH as T
from inputs import VALUE_DIM as H_V
from inputs import attention_inputs
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

F32 = tolerance(np.float32)

# Per-head mechanisms: N heads, query features H_q, key features H_k and
# hidden size A, all distinct from each other and from B, T, S and H_v.
N = 3
H_Q = 5
H_K = 4
HIDDEN = 17

ADDITIVE_PARAMS = dict(
    query_kernel=random_normal(100, (N, H_Q, HIDDEN)) / np.float32(H_Q**0.5),
    key_kernel=random_normal(101, (N, H_K, HIDDEN)) / np.float32(H_K**0.5),
    score_vector=random_normal(102, (N, HIDDEN)),
)
MULTIPLICATIVE_PARAMS = dict(
    kernel=random_normal(103, (N, H_Q, H_K)) / np.float32(2))


def additive(query, key, value, **options):
  return aj.additive_attention(query, key, value, **ADDITIVE_PARAMS, **options)


def multiplicative(query, key, value, **options):
  return aj.multiplicative_attention(query, key, value,
                                     **MULTIPLICATIVE_PARAMS, **options)


def additive_logits(query, key):
  return oracle.additive_logits(query, key, **ADDITIVE_PARAMS)


def multiplicative_logits(query, key):
  return oracle.multiplicative_logits(query, key, **MULTIPLICATIVE_PARAMS)


MECHANISMS = {
    "additive": (additive, additive_logits),
    "multiplicative": (multiplicative, multiplicative_logits),
}

CASES = {
    "plain": dict(),
    "mask": dict(mask=random_mask(104, (*BATCH, N, T, S), 0.6)),
    "mask_empty_rows": dict(mask=random_mask(105, (*BATCH, 1, T, S), 0.1)),
    "bias": dict(bias=random_normal(106, (*BATCH, N, T, S))),
    "causal": dict(is_causal=True),
    "causal_offset": dict(is_causal=True,
                          query_offset=np.array([0, 3], np.int32)),
    "key_lengths": dict(key_value_seq_lengths=np.array([0, 8], np.int32)),
    "query_lengths": dict(query_seq_lengths=np.array([5, 7], np.int32)),
    "window": dict(local_window_size=(2, 1)),
    "multi_batch": dict(batch=MULTI_BATCH,
                        mask=random_mask(107, (*MULTI_BATCH, 1, T, S), 0.7)),
    "no_batch": dict(batch=(), is_causal=True,
                     bias=random_normal(108, (T, S))),
}
MASK_OPTIONS = ("mask", "is_causal", "query_offset", "query_seq_lengths",
                "key_value_seq_lengths", "local_window_size")


def per_head_inputs(seed, batch=BATCH, query_length=T, key_length=S,
                    dtype=np.float32):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((*batch, query_length, N, H_Q)).astype(dtype)
  key = rng.standard_normal((*batch, key_length, N, H_K)).astype(dtype)
  value = rng.standard_normal((*batch, key_length, N, H_V)).astype(dtype)
  return query, key, value


def run_case(mechanism, case_name, seed=0):
  """Return `(output, weights, expected_output, expected_weights)`."""
  function, oracle_logits = MECHANISMS[mechanism]
  options = dict(CASES[case_name])
  batch = options.pop("batch", BATCH)
  query_length = options.pop("query_length", T)
  key_length = options.pop("key_length", S)
  query, key, value = per_head_inputs(seed, batch, query_length, key_length)

  output, weights = function(query, key, value, return_weights=True,
                             **options)

  logits = oracle_logits(query, key)
  if "bias" in options:
    logits = logits + options["bias"]
  allowed = oracle.attention_mask(
      batch, N, query_length, key_length,
      **{name: options[name] for name in MASK_OPTIONS if name in options})
  expected_weights, _ = oracle.masked_softmax(logits, allowed)
  expected = oracle.weighted_values(expected_weights, value)
  return output, weights, expected, expected_weights


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_output_matches_oracle(mechanism, case):
  output, _, expected, _ = run_case(mechanism, case)
  assert output.shape == expected.shape
  np.testing.assert_allclose(output, expected, **F32)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_weights_match_oracle(mechanism, case):
  _, weights, _, expected = run_case(mechanism, case)
  assert weights.shape == expected.shape
  np.testing.assert_allclose(weights, expected, **F32)


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_empty_rows_zero_output(mechanism):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(1)
  mask = np.ones((*BATCH, N, T, S), dtype=bool)
  mask[1, 2, 4] = False
  output = np.asarray(function(query, key, value, mask=mask))
  np.testing.assert_array_equal(output[1, 4, 2], 0.0)


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_empty_rows_zero_gradients(mechanism):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(2)
  lengths = np.array([0, 6], np.int32)
  cotangent = np.zeros((*BATCH, T, N, H_V), np.float32)
  cotangent[0] = 1.0  # Batch 0 has no keys, so every row is empty.

  def loss(query, key, value):
    output = function(query, key, value, key_value_seq_lengths=lengths)
    return jnp.sum(output * cotangent)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(query, key, value)
  for name, grad in zip(("query", "key", "value"), grads):
    np.testing.assert_array_equal(grad, 0.0, err_msg=name)


@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_padded_keys_inert(mechanism, poison):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(3)
  lengths = np.array([6, 11], np.int32)
  bad_key, bad_value = key.copy(), value.copy()
  bad_key[0, 6:] = poison
  bad_value[0, 6:] = poison
  np.testing.assert_allclose(
      function(query, bad_key, bad_value, key_value_seq_lengths=lengths),
      function(query, key, value, key_value_seq_lengths=lengths), **F32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16],
                         ids=["bfloat16", "float16"])
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_low_precision_dtype_and_values(mechanism, dtype):
  function, oracle_logits = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(4, dtype=dtype)
  output = function(query, key, value, is_causal=True)
  allowed = oracle.attention_mask(BATCH, N, T, S, is_causal=True)
  weights, _ = oracle.masked_softmax(oracle_logits(query, key), allowed)
  assert output.dtype == dtype
  np.testing.assert_allclose(np.asarray(output, np.float32),
                             oracle.weighted_values(weights, value),
                             **tolerance(dtype))


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_dropout_off_without_rng(mechanism):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(5)
  np.testing.assert_array_equal(
      function(query, key, value, dropout_rate=0.5),
      function(query, key, value))


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_dropout_off_when_deterministic(mechanism):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(6)
  np.testing.assert_array_equal(
      function(query, key, value, dropout_rate=0.5,
               dropout_rng=jax.random.key(0), deterministic=True),
      function(query, key, value))


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_dropout_matches_kept_weights(mechanism):
  function, _ = MECHANISMS[mechanism]
  query, key, value = per_head_inputs(7)
  rate = 0.4
  # Compiled because the random-bit generation behind dropout is many small
  # operations, slow to compile one by one in eager mode.
  compiled = jax.jit(function, static_argnames=("dropout_rate",
                                                "return_weights"))
  output, dropped = compiled(query, key, value, dropout_rate=rate,
                             dropout_rng=jax.random.key(1),
                             return_weights=True)
  _, weights = function(query, key, value, return_weights=True)
  kept = np.asarray(dropped) != 0
  np.testing.assert_allclose(dropped, np.where(kept, weights, 0) / (1 - rate),
                             **F32)
  np.testing.assert_allclose(output, oracle.weighted_values(dropped, value),
                             **F32)


# Score functions.


def test_additive_scores_match_oracle():
  query, key, _ = per_head_inputs(8)
  np.testing.assert_allclose(aj.additive_scores(query, key, **ADDITIVE_PARAMS),
                             additive_logits(query, key), **F32)


def test_multiplicative_scores_match_oracle():
  query, key, _ = per_head_inputs(9)
  np.testing.assert_allclose(
      aj.multiplicative_scores(query, key, **MULTIPLICATIVE_PARAMS),
      multiplicative_logits(query, key), **F32)


def test_dot_product_scores_match_oracle():
  query, key, _ = attention_inputs(10)
  np.testing.assert_allclose(aj.dot_product_scores(query, key),
                             oracle.dot_product_logits(query, key, scale=1.0),
                             **F32)


def test_scaled_dot_product_scores_default_scale():
  query, key, _ = attention_inputs(11)
  np.testing.assert_allclose(aj.scaled_dot_product_scores(query, key),
                             oracle.dot_product_logits(query, key), **F32)


def test_scaled_dot_product_scores_custom_scale():
  query, key, _ = attention_inputs(12, num_kv_heads=1)
  np.testing.assert_allclose(
      aj.scaled_dot_product_scores(query, key, 0.3),
      oracle.dot_product_logits(query, key, scale=0.3), **F32)


# Basic feed-forward attention: B=2, S=11, D=5, A=7, D_v=13.

D = 5
D_V = 13
BASIC_HIDDEN = 7
BASIC_PARAMS = dict(
    kernel=random_normal(200, (D, BASIC_HIDDEN)) / np.float32(D**0.5),
    bias=random_normal(201, (BASIC_HIDDEN,)),
    score_vector=random_normal(202, (BASIC_HIDDEN,)),
)


def basic_expected(inputs, mask=None, values=None):
  """Return the oracle's `(pooled, weights)`."""
  logits = oracle.feedforward_logits(inputs, **BASIC_PARAMS)
  weights, _ = oracle.masked_softmax(logits, mask)
  values = inputs if values is None else values
  return oracle.pool(weights, values), weights


BASIC_CASES = {
    "plain": dict(),
    "mask": dict(mask=random_mask(203, (*BATCH, S))),
    "mask_broadcast": dict(mask=random_mask(204, (S,))),
    "empty_sequence": dict(mask=np.array([[True] * 4 + [False] * (S - 4),
                                          [False] * S])),
    "values": dict(values=random_normal(205, (*BATCH, S, D_V))),
    "multi_batch": dict(batch=MULTI_BATCH,
                        mask=random_mask(206, (*MULTI_BATCH, S))),
    "no_batch": dict(batch=(), mask=random_mask(207, (S,))),
}


def run_basic_case(name):
  options = dict(BASIC_CASES[name])
  batch = options.pop("batch", BATCH)
  inputs = random_normal(208, (*batch, S, D))
  pooled, weights = aj.basic_attention(inputs, **BASIC_PARAMS,
                                       return_weights=True, **options)
  expected, expected_weights = basic_expected(inputs, **options)
  return pooled, weights, expected, expected_weights


@pytest.mark.parametrize("case", list(BASIC_CASES))
def test_basic_output_matches_oracle(case):
  pooled, _, expected, _ = run_basic_case(case)
  assert pooled.shape == expected.shape
  np.testing.assert_allclose(pooled, expected, **F32)


@pytest.mark.parametrize("case", list(BASIC_CASES))
def test_basic_weights_match_oracle(case):
  _, weights, _, expected = run_basic_case(case)
  assert weights.shape == expected.shape
  np.testing.assert_allclose(weights, expected, **F32)


@pytest.mark.parametrize("case", ["plain", "mask", "empty_sequence",
                                  "values"])
def test_basic_causal_pools_each_prefix(case):
  options = dict(BASIC_CASES[case])
  inputs = random_normal(215, (*BATCH, S, D))
  pooled, weights = aj.basic_attention(inputs, **BASIC_PARAMS, is_causal=True,
                                       return_weights=True, **options)
  assert pooled.shape[:-1] == (*BATCH, S)
  assert weights.shape == (*BATCH, S, S)
  mask, values = options.get("mask"), options.get("values")
  for t in range(S):
    prefix = slice(0, t + 1)
    expected, expected_weights = basic_expected(
        inputs[..., prefix, :],
        None if mask is None else np.asarray(mask)[..., prefix],
        None if values is None else values[..., prefix, :])
    np.testing.assert_allclose(pooled[..., t, :], expected, **F32)
    np.testing.assert_allclose(weights[..., t, prefix], expected_weights,
                               **F32)
    np.testing.assert_array_equal(np.asarray(weights)[..., t, t + 1:], 0.0)


def test_basic_empty_sequence_zero():
  pooled, weights, _, _ = run_basic_case("empty_sequence")
  np.testing.assert_array_equal(np.asarray(pooled)[1], 0.0)
  np.testing.assert_array_equal(np.asarray(weights)[1], 0.0)


def test_basic_masked_inputs_inert():
  inputs = random_normal(209, (*BATCH, S, D))
  mask = random_mask(210, (*BATCH, S))
  poisoned = np.where(mask[..., None], inputs, np.nan).astype(np.float32)
  np.testing.assert_allclose(
      aj.basic_attention(poisoned, **BASIC_PARAMS, mask=mask),
      aj.basic_attention(inputs, **BASIC_PARAMS, mask=mask), **F32)


def test_basic_empty_sequence_zero_gradient():
  inputs = random_normal(211, (*BATCH, S, D))
  mask = np.ones((*BATCH, S), dtype=bool)
  mask[0] = False

  def loss(x):
    return jnp.sum(aj.basic_attention(x, **BASIC_PARAMS, mask=mask)[0])

  grad = np.asarray(jax.jit(jax.grad(loss))(inputs))
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16],
                         ids=["bfloat16", "float16"])
def test_basic_low_precision(dtype):
  inputs = random_normal(212, (*BATCH, S, D), dtype)
  mask = random_mask(213, (*BATCH, S))
  pooled = aj.basic_attention(inputs, **BASIC_PARAMS, mask=mask)
  expected, _ = basic_expected(inputs, mask)
  assert pooled.dtype == dtype
  np.testing.assert_allclose(np.asarray(pooled, np.float32), expected,
                             **tolerance(dtype))


def test_feedforward_scores_match_oracle():
  inputs = random_normal(214, (*BATCH, S, D))
  np.testing.assert_allclose(aj.feedforward_scores(inputs, **BASIC_PARAMS),
                             oracle.feedforward_logits(inputs, **BASIC_PARAMS),
                             **F32)
