"""The conventions every attention path obeys: mask polarity, empty rows,
inert masked positions, causal alignment, windows, grouped-query heads,
scale, precision, the `jax.nn` drop-in signature and closed-form cases."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
from inputs import BATCH
from inputs import HEAD_DIM as H
from inputs import KEY_LENGTH as S
from inputs import NUM_HEADS as N
from inputs import NUM_KV_HEADS as K
from inputs import QUERY_LENGTH as T
from inputs import VALUE_DIM as H_V
from inputs import attention_inputs
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

GROUP = N // K
F32 = tolerance(np.float32)


@functools.partial(jax.jit, static_argnames="static_options")
def _attention_gradients(query, key, value, bias, cotangent, array_options,
                         static_options):
  def loss(query, key, value, bias):
    output = aj.dot_product_attention(query, key, value, bias,
                                      **array_options, **dict(static_options))
    return jnp.sum(output * cotangent)

  return jax.grad(loss, argnums=(0, 1, 2, 3))(query, key, value, bias)


def gradients(cotangent, query, key, value, bias, **options):
  """Return the gradients of `sum(output * cotangent)` with respect to query,
  key, value and bias.

  One module-level `jax.jit` serves every call, so calls with the same
  shapes and non-array options reuse one compiled gradient. That is much
  faster than differentiating operation by operation.
  """
  array_options = {name: option for name, option in options.items()
                   if isinstance(option, np.ndarray)}
  static_options = tuple(sorted(
      (name, option) for name, option in options.items()
      if name not in array_options))
  return _attention_gradients(query, key, value, bias, cotangent,
                              array_options, static_options)


# Mask polarity.


def test_mask_true_selects_key():
  query, key, value = attention_inputs(0)
  chosen = np.array([3, 8])
  mask = np.zeros((*BATCH, 1, 1, S), dtype=bool)
  mask[0, ..., chosen[0]] = True
  mask[1, ..., chosen[1]] = True
  output = aj.dot_product_attention(query, key, value, mask=mask)
  expected = np.stack([value[b, chosen[b]] for b in range(2)])
  expected = np.broadcast_to(
      np.repeat(expected, GROUP, axis=-2)[:, None], output.shape)
  np.testing.assert_allclose(output, expected, **F32)


def test_mask_false_hides_key():
  query, key, value = attention_inputs(1)
  mask = np.ones((S,), dtype=bool)
  mask[5] = False
  weights = aj.dot_product_attention_weights(query, key, mask=mask)
  np.testing.assert_array_equal(np.asarray(weights)[..., 5], 0.0)


# Query rows with no visible key.


def mask_hiding_row(row):
  """Return a `[T, S]` mask that hides every key from query `row`."""
  mask = np.ones((T, S), dtype=bool)
  mask[row] = False
  return mask


EMPTY_ROW_CASES = {
    "mask": dict(mask=mask_hiding_row(2)),
    "query_length": dict(query_seq_lengths=np.array([4, 7], np.int32)),
    "key_length_zero": dict(key_value_seq_lengths=np.array([0, 11], np.int32)),
    "causal_more_queries": dict(is_causal=True, query_length=S,
                                key_length=T),
    "window_past_end": dict(local_window_size=(0, 0),
                            query_offset=np.array([9, 0], np.int32)),
    "segments": dict(query_segment_ids=np.array([[0, 0, 1, 1, 5, 5, 5]] * 2,
                                                np.int32),
                     key_segment_ids=np.zeros((*BATCH, S), np.int32)),
}


def empty_row_case(case):
  """Return `(inputs, bias, options, empty)` with `empty` `[B, T, N]` True on
  rows that see no key."""
  options = dict(EMPTY_ROW_CASES[case])
  query_length = options.pop("query_length", T)
  key_length = options.pop("key_length", S)
  query, key, value = attention_inputs(
      2, query_length=query_length, key_length=key_length)
  bias = random_normal(3, (*BATCH, N, query_length, key_length))
  allowed = oracle.attention_mask(BATCH, N, query_length, key_length,
                                  **options)
  empty = np.swapaxes(~allowed.any(axis=-1), -1, -2)
  assert empty.any(), "the case should contain an empty row"
  return (query, key, value), bias, options, empty


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_zero_weights(case):
  (query, key, _), bias, options, empty = empty_row_case(case)
  weights = aj.dot_product_attention_weights(query, key, bias, **options)
  rows = np.asarray(weights).swapaxes(-2, -3)[empty]
  np.testing.assert_array_equal(rows, 0.0)


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_zero_output(case):
  (query, key, value), bias, options, empty = empty_row_case(case)
  output = np.asarray(
      aj.dot_product_attention(query, key, value, bias, **options))
  np.testing.assert_array_equal(output[empty], 0.0)


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_no_nan(case):
  (query, key, value), bias, options, _ = empty_row_case(case)
  output, residual, weights = aj.dot_product_attention(
      query, key, value, bias, return_residual=True, return_weights=True,
      **options)
  assert np.all(np.isfinite(output))
  assert np.all(np.isfinite(weights))
  assert not np.any(np.isnan(residual))


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_zero_gradients(case):
  (query, key, value), bias, options, empty = empty_row_case(case)
  # Only the empty rows enter the loss, so every gradient should vanish.
  cotangent = np.where(empty[..., None], random_normal(4, empty.shape + (H_V,)),
                       0.0).astype(np.float32)
  grads = gradients(cotangent, query, key, value, bias, **options)
  for name, grad in zip(("query", "key", "value", "bias"), grads):
    np.testing.assert_array_equal(grad, 0.0, err_msg=name)


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_gradients_finite(case):
  (query, key, value), bias, options, empty = empty_row_case(case)
  cotangent = random_normal(5, empty.shape + (H_V,))
  grads = gradients(cotangent, query, key, value, bias, **options)
  for name, grad in zip(("query", "key", "value", "bias"), grads):
    assert np.all(np.isfinite(grad)), name


@pytest.mark.parametrize("case", list(EMPTY_ROW_CASES))
def test_empty_rows_query_and_bias_gradients_zero(case):
  (query, key, value), bias, options, empty = empty_row_case(case)
  cotangent = random_normal(6, empty.shape + (H_V,))
  grad_query, _, _, grad_bias = gradients(cotangent, query, key, value, bias,
                                          **options)
  np.testing.assert_array_equal(np.asarray(grad_query)[empty], 0.0)
  np.testing.assert_array_equal(
      np.asarray(grad_bias).swapaxes(-2, -3)[empty], 0.0)


# Masked positions are inert.

POISONS = [np.inf, -np.inf, np.nan, 3e38]
POISON_IDS = ["pos_inf", "neg_inf", "nan", "huge"]


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
def test_masked_bias_inert_output(poison):
  query, key, value = attention_inputs(7)
  mask = random_mask(8, (*BATCH, N, T, S))
  clean = np.where(mask, random_normal(9, mask.shape), 0.0).astype(np.float32)
  poisoned = np.where(mask, clean, np.float32(poison))
  np.testing.assert_allclose(
      aj.dot_product_attention(query, key, value, poisoned, mask),
      aj.dot_product_attention(query, key, value, clean, mask), **F32)


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
def test_masked_bias_inert_gradients(poison):
  query, key, value = attention_inputs(10)
  mask = random_mask(11, (*BATCH, N, T, S))
  clean = np.where(mask, random_normal(12, mask.shape), 0.0).astype(np.float32)
  poisoned = np.where(mask, clean, np.float32(poison))
  cotangent = random_normal(13, (*BATCH, T, N, H_V))
  expected = gradients(cotangent, query, key, value, clean, mask=mask)
  actual = gradients(cotangent, query, key, value, poisoned, mask=mask)
  for name, grad, grad_clean in zip(("query", "key", "value", "bias"),
                                    actual, expected):
    np.testing.assert_allclose(grad, grad_clean, err_msg=name, **F32)


def test_masked_bias_zero_gradient():
  query, key, value = attention_inputs(14)
  mask = random_mask(15, (*BATCH, N, T, S))
  bias = random_normal(16, mask.shape)
  cotangent = random_normal(17, (*BATCH, T, N, H_V))
  *_, grad_bias = gradients(cotangent, query, key, value, bias, mask=mask)
  np.testing.assert_array_equal(np.asarray(grad_bias)[~mask], 0.0)


def poison_keys(key, value, hidden, poison):
  """Return key and value with `poison` at key positions where `hidden`
  (`[B, S]`) is True."""
  where = hidden[..., None, None]
  return (np.where(where, np.float32(poison), key),
          np.where(where, np.float32(poison), value))


HIDDEN_KEY_CASES = {
    "key_lengths": dict(key_value_seq_lengths=np.array([6, 11], np.int32)),
    "mask": dict(mask=np.broadcast_to(
        ~np.isin(np.arange(S), [3, 8]), (*BATCH, 1, T, S))),
}


def hidden_keys(options):
  allowed = oracle.attention_mask(BATCH, N, T, S, **options)
  return ~allowed.any(axis=(-3, -2))


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
@pytest.mark.parametrize("case", list(HIDDEN_KEY_CASES))
def test_hidden_key_value_inert_output(case, poison):
  options = HIDDEN_KEY_CASES[case]
  query, key, value = attention_inputs(18)
  hidden = hidden_keys(options)
  bad_key, bad_value = poison_keys(key, value, hidden, poison)
  np.testing.assert_allclose(
      aj.dot_product_attention(query, bad_key, bad_value, **options),
      aj.dot_product_attention(query, key, value, **options), **F32)


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
@pytest.mark.parametrize("case", list(HIDDEN_KEY_CASES))
def test_hidden_key_value_inert_gradients(case, poison):
  options = HIDDEN_KEY_CASES[case]
  query, key, value = attention_inputs(19)
  bias = np.zeros((N, T, S), np.float32)
  hidden = hidden_keys(options)
  bad_key, bad_value = poison_keys(key, value, hidden, poison)
  cotangent = random_normal(20, (*BATCH, T, N, H_V))
  expected = gradients(cotangent, query, key, value, bias, **options)
  actual = gradients(cotangent, query, bad_key, bad_value, bias, **options)
  for name, grad, grad_clean in zip(("query", "key", "value", "bias"),
                                    actual, expected):
    np.testing.assert_allclose(grad, grad_clean, err_msg=name, **F32)


@pytest.mark.parametrize("case", list(HIDDEN_KEY_CASES))
def test_hidden_key_value_zero_gradient(case):
  options = HIDDEN_KEY_CASES[case]
  query, key, value = attention_inputs(21)
  bias = np.zeros((N, T, S), np.float32)
  hidden = hidden_keys(options)
  cotangent = random_normal(22, (*BATCH, T, N, H_V))
  _, grad_key, grad_value, _ = gradients(cotangent, query, key, value, bias,
                                         **options)
  np.testing.assert_array_equal(np.asarray(grad_key)[hidden], 0.0)
  np.testing.assert_array_equal(np.asarray(grad_value)[hidden], 0.0)


# Causal alignment.


def causal_receptive_field(argument):
  """Return `[T, S]`: True where output row t depends on `argument` at key
  position s, for rank-3 causal attention with T < S."""
  query, key, value = attention_inputs(23, batch=())

  def output_of(x):
    inputs = dict(key=key, value=value)
    inputs[argument] = x
    return aj.dot_product_attention(query, is_causal=True, **inputs)

  inputs = dict(key=key, value=value)
  jacobian = np.asarray(jax.jit(jax.jacrev(output_of))(inputs[argument]))
  # [T, N, H_v, S, K, H] -> [T, S]
  return np.any(jacobian != 0, axis=(1, 2, 4, 5))


def causal_visible():
  """Return `[T, S]`: True where key s <= S - T + t (bottom-right)."""
  return np.arange(S)[None, :] <= (S - T + np.arange(T))[:, None]


@pytest.mark.parametrize("argument", ["key", "value"])
def test_causal_no_gradient_from_future(argument):
  field = causal_receptive_field(argument)
  assert not np.any(field[~causal_visible()])


@pytest.mark.parametrize("argument", ["key", "value"])
def test_causal_gradient_from_past(argument):
  field = causal_receptive_field(argument)
  assert np.all(field[causal_visible()])


def test_causal_last_query_sees_all_keys():
  query, key, value = attention_inputs(24)
  causal = aj.dot_product_attention(query, key, value, is_causal=True)
  full = aj.dot_product_attention(query, key, value)
  np.testing.assert_allclose(np.asarray(causal)[:, -1],
                             np.asarray(full)[:, -1], **F32)


def test_causal_offset_zero_is_top_left():
  query, key, value = attention_inputs(25)
  weights = aj.dot_product_attention_weights(query, key, is_causal=True,
                                             query_offset=0)
  top_left = np.arange(S)[None, :] <= np.arange(T)[:, None]
  np.testing.assert_array_equal(np.asarray(weights) != 0,
                                np.broadcast_to(top_left, weights.shape))


# Sliding windows.


@pytest.mark.parametrize("window", [(2, 1), (0, 3), 2, (4, 0)],
                         ids=["left2_right1", "left0_right3", "int2",
                              "left4_right0"])
def test_window_visible_keys(window):
  left, right = window if isinstance(window, tuple) else (window, window)
  query, key, _ = attention_inputs(26)
  weights = aj.dot_product_attention_weights(query, key,
                                             local_window_size=window)
  expected = np.zeros((T, S), dtype=bool)
  for t in range(T):
    position = S - T + t
    expected[t, max(0, position - left):min(S, position + right + 1)] = True
  np.testing.assert_array_equal(np.asarray(weights) != 0,
                                np.broadcast_to(expected, weights.shape))


def test_window_left_only_is_causal():
  query, key, value = attention_inputs(27)
  window_only = aj.dot_product_attention(query, key, value,
                                         local_window_size=(3, 0))
  with_causal = aj.dot_product_attention(query, key, value, is_causal=True,
                                         local_window_size=(3, 0))
  np.testing.assert_array_equal(window_only, with_causal)


def test_window_covering_everything_is_full():
  query, key, value = attention_inputs(28)
  np.testing.assert_allclose(
      aj.dot_product_attention(query, key, value, local_window_size=(S, S)),
      aj.dot_product_attention(query, key, value), **F32)


# Grouped-query heads.


def test_grouped_query_matches_repeated_heads():
  query, key, value = attention_inputs(29)
  repeated = aj.dot_product_attention(
      query, jnp.repeat(key, GROUP, axis=-2), jnp.repeat(value, GROUP, axis=-2))
  np.testing.assert_allclose(aj.dot_product_attention(query, key, value),
                             repeated, **F32)


def test_grouped_query_weights_match_repeated_heads():
  query, key, _ = attention_inputs(30)
  repeated = aj.dot_product_attention_weights(
      query, jnp.repeat(key, GROUP, axis=-2))
  np.testing.assert_allclose(aj.dot_product_attention_weights(query, key),
                             repeated, **F32)


def test_grouped_query_differs_from_tiled_heads():
  # Guards the test above: with these inputs the tiled mapping n % K gives a
  # clearly different output, so a tiled implementation cannot pass it.
  query, key, value = attention_inputs(31)
  tiled = aj.dot_product_attention(
      query, jnp.tile(key, (1, 1, GROUP, 1)), jnp.tile(value, (1, 1, GROUP, 1)))
  difference = np.abs(np.asarray(aj.dot_product_attention(query, key, value))
                      - np.asarray(tiled))
  assert difference.max() > 0.1


def test_multi_query_matches_broadcast_head():
  query, key, value = attention_inputs(32, num_kv_heads=1)
  repeated = aj.dot_product_attention(query, jnp.repeat(key, N, axis=-2),
                                      jnp.repeat(value, N, axis=-2))
  np.testing.assert_allclose(aj.dot_product_attention(query, key, value),
                             repeated, **F32)


# Scale.


def test_scale_default_is_inverse_sqrt_head_dim():
  query, key, value = attention_inputs(33)
  np.testing.assert_allclose(
      aj.dot_product_attention(query, key, value),
      aj.dot_product_attention(query, key, value, scale=1 / np.sqrt(H)), **F32)


def test_scale_one_is_unscaled():
  query, key, value = attention_inputs(34)
  np.testing.assert_allclose(
      aj.dot_product_attention(query, key, value, scale=1.0),
      aj.dot_product_attention(query * np.sqrt(H), key, value), **F32)


# Precision.

LOW_PRECISION = [jnp.bfloat16, jnp.float16]
LOW_PRECISION_IDS = ["bfloat16", "float16"]


def low_precision_case(dtype, seed):
  query, key, value = attention_inputs(seed, dtype=dtype)
  mask = random_mask(seed + 1, (*BATCH, N, T, S), 0.7)
  bias = random_normal(seed + 2, (*BATCH, N, T, S), dtype)
  return (query, key, value), bias, mask


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=LOW_PRECISION_IDS)
def test_low_precision_output_dtype(dtype):
  (query, key, value), bias, mask = low_precision_case(dtype, 35)
  output, weights = aj.dot_product_attention(
      query, key, value, bias, mask, is_causal=True, return_weights=True)
  assert output.dtype == dtype
  assert weights.dtype == dtype


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=LOW_PRECISION_IDS)
def test_low_precision_matches_oracle(dtype):
  (query, key, value), bias, mask = low_precision_case(dtype, 38)
  allowed = oracle.attention_mask(BATCH, N, T, S, mask=mask, is_causal=True)
  expected, _, _ = oracle.dot_product_attention(query, key, value, bias=bias,
                                                allowed=allowed)
  output = aj.dot_product_attention(query, key, value, bias, mask,
                                    is_causal=True)
  np.testing.assert_allclose(np.asarray(output, np.float32), expected,
                             **tolerance(dtype))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=LOW_PRECISION_IDS)
def test_low_precision_weights_match_oracle(dtype):
  (query, key, _), bias, mask = low_precision_case(dtype, 41)
  allowed = oracle.attention_mask(BATCH, N, T, S, mask=mask)
  _, expected, _ = oracle.dot_product_attention(query, key, key, bias=bias,
                                                allowed=allowed)
  weights = aj.dot_product_attention_weights(query, key, bias, mask)
  np.testing.assert_allclose(np.asarray(weights, np.float32), expected,
                             **tolerance(dtype))


def test_float16_large_logits_no_overflow():
  # Each product q . k reaches about 1e5, past the float16 maximum of 65504,
  # so only a float32 computation of the logits stays finite.
  query, key, value = attention_inputs(44, dtype=np.float16)
  query = (query * 150).astype(np.float16)
  key = (key * 150).astype(np.float16)
  mask = random_mask(45, (*BATCH, N, T, S), 0.7)
  logits = oracle.dot_product_logits(query, key, scale=1.0)
  assert np.abs(logits).max() > np.finfo(np.float16).max
  allowed = oracle.attention_mask(BATCH, N, T, S, mask=mask)
  expected, _, _ = oracle.dot_product_attention(query, key, value,
                                                allowed=allowed)
  output = aj.dot_product_attention(query, key, value, mask=mask)
  np.testing.assert_allclose(np.asarray(output, np.float32), expected,
                             **tolerance(np.float16))


def test_float16_masks_finite():
  query, key, value = attention_inputs(46, dtype=np.float16)
  bias = np.full((*BATCH, N, T, S), np.finfo(np.float16).min, np.float16)
  bias[..., :2] = 0
  output, weights = aj.dot_product_attention(
      query, key, value, bias, random_mask(47, (*BATCH, N, T, S)),
      is_causal=True, key_value_seq_lengths=np.array([0, 5], np.int32),
      return_weights=True)
  assert np.all(np.isfinite(np.asarray(output, np.float32)))
  assert np.all(np.isfinite(np.asarray(weights, np.float32)))


# Drop-in signature and parity with jax.nn.dot_product_attention.

JAX_NN_PARAMETERS = inspect.signature(jax.nn.dot_product_attention).parameters


@pytest.mark.parametrize("name", list(JAX_NN_PARAMETERS))
def test_signature_parameter_matches_jax_nn(name):
  ours = inspect.signature(aj.dot_product_attention).parameters
  theirs = JAX_NN_PARAMETERS[name]
  assert name in ours
  assert ours[name].kind == theirs.kind
  assert ours[name].default == theirs.default


def test_signature_extra_parameters_keyword_only():
  ours = inspect.signature(aj.dot_product_attention).parameters
  extra = [p for name, p in ours.items() if name not in JAX_NN_PARAMETERS]
  assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in extra)


def mask_with_first_key(seed, shape):
  """Return a random mask in which every query may attend to key 0.

  `jax.nn` averages all values on a query row with no visible key, where
  this library returns zeros, so parity inputs avoid such rows.
  """
  mask = random_mask(seed, shape, 0.7)
  mask[..., 0] = True
  return mask


# T == S so that causal and window masks align the same way in both
# libraries, and H_v == H because `jax.nn` requires it. Masks and biases are
# 4-D, as `jax.nn` documents.
PARITY_LENGTH = T
PARITY_CASES = {
    "plain": dict(),
    "mask": dict(mask=mask_with_first_key(48, (*BATCH, N, T, T))),
    "mask_broadcast": dict(mask=mask_with_first_key(49, (1, 1, T, T))),
    "bias": dict(bias=random_normal(50, (*BATCH, N, T, T))),
    "causal": dict(is_causal=True),
    "key_lengths": dict(key_value_seq_lengths=np.array([3, 7], np.int32)),
    "query_lengths": dict(query_seq_lengths=np.array([4, 7], np.int32)),
    "window_pair": dict(local_window_size=(2, 1)),
    "window_int": dict(local_window_size=1),
    "causal_window": dict(is_causal=True, local_window_size=(3, 0)),
    "scale": dict(scale=0.29),
    "multi_query": dict(num_kv_heads=1),
    "everything": dict(mask=mask_with_first_key(51, (*BATCH, 1, T, T)),
                       bias=random_normal(52, (*BATCH, N, T, T)),
                       is_causal=True,
                       key_value_seq_lengths=np.array([5, 7], np.int32),
                       local_window_size=(4, 2)),
}


# Compiled once per configuration, which is much faster than running
# `jax.nn.dot_product_attention` eagerly, one operation at a time.
jax_nn_attention = jax.jit(
    jax.nn.dot_product_attention,
    static_argnames=("scale", "is_causal", "local_window_size",
                     "implementation", "return_residual"))


@functools.lru_cache(maxsize=None)
def parity_results(name):
  """Return `(ours, theirs, valid)`: the `(output, residual)` pairs of this
  library and of `jax.nn`, and `[B, T]` True on rows to compare.

  Cached so that the output and residual tests share one call of each.
  """
  options = dict(PARITY_CASES[name])
  num_kv_heads = options.pop("num_kv_heads", K)
  query, key, value = attention_inputs(
      53, key_length=PARITY_LENGTH, num_kv_heads=num_kv_heads, value_dim=H)
  ours = aj.dot_product_attention(query, key, value, return_residual=True,
                                  **options)
  theirs = jax_nn_attention(query, key, value, return_residual=True,
                            **options)
  # jax.nn fills padded query rows with an average instead of zeros, so
  # only rows of real queries are compared.
  valid = np.ones((*BATCH, T), dtype=bool)
  if "query_seq_lengths" in options:
    valid = np.arange(T) < options["query_seq_lengths"][..., None]
  return ours, theirs, valid


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_parity_with_jax_nn_output(name):
  (ours, _), (theirs, _), valid = parity_results(name)
  np.testing.assert_allclose(np.asarray(ours)[valid],
                             np.asarray(theirs)[valid], **F32)


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_parity_with_jax_nn_residual(name):
  (_, ours), (_, theirs), valid = parity_results(name)
  np.testing.assert_allclose(np.asarray(ours)[valid],
                             np.asarray(theirs)[valid], **F32)


def test_parity_with_jax_nn_no_batch_axis():
  query, key, value = attention_inputs(54, batch=(), key_length=T,
                                       value_dim=H)
  mask = mask_with_first_key(55, (1, N, T, T))
  bias = random_normal(56, (1, N, T, T))
  np.testing.assert_allclose(
      aj.dot_product_attention(query, key, value, bias, mask, is_causal=True),
      jax_nn_attention(query, key, value, bias, mask, is_causal=True), **F32)


# Closed-form cases.


def test_zero_queries_average_visible_values():
  _, key, value = attention_inputs(57)
  query = np.zeros((*BATCH, T, N, H), np.float32)
  lengths = np.array([4, 9], np.int32)
  output = aj.dot_product_attention(query, key, value, is_causal=True,
                                    key_value_seq_lengths=lengths)
  expected = np.zeros((*BATCH, T, N, H_V))
  for b in range(2):
    for t in range(T):
      visible = min(lengths[b], S - T + t + 1)
      for n in range(N):
        expected[b, t, n] = value[b, :visible, n // GROUP].mean(axis=0)
  np.testing.assert_allclose(output, expected, **F32)


def test_dominant_logit_selects_value():
  query, key, value = attention_inputs(58)
  chosen = np.array([2, 9])
  bias = np.zeros((*BATCH, 1, 1, S), np.float32)
  bias[0, ..., chosen[0]] = 1e4
  bias[1, ..., chosen[1]] = 1e4
  output = aj.dot_product_attention(query, key, value, bias)
  expected = np.zeros((*BATCH, T, N, H_V))
  for b in range(2):
    for n in range(N):
      expected[b, :, n] = value[b, chosen[b], n // GROUP]
  np.testing.assert_allclose(output, expected, **F32)
