"""Tests for the chunked forward pass that splits causal diagonal squares."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import hooks
import inputs
import oracle
import path_parity
from attention_jax import _chunked_forward
from test_chunked_defaults import prepare
from tolerances import tolerance

NUM_HEADS, HEAD_DIM, VALUE_DIM = 6, 5, 7
# Query blocks of 16 rows split into quarters of 8 by 8.
BLOCKS = dict(block_q=16, block_k=8)


@pytest.fixture(params=["quarters", "whole"])
def diagonal(request, monkeypatch):
  """Compute diagonal squares in quarters or as whole tiles."""
  threshold = 0 if request.param == "quarters" else 1 << 30
  monkeypatch.setattr(_chunked_forward, "QUARTERS_FROM_BLOCK_Q", threshold)
  return request.param


def _inputs(seed, *, batch=(2,), query_len=48, key_len=48, num_kv_heads=3,
            dtype=np.float32):
  arrays = inputs.attention_inputs(
      seed, batch=batch, query_length=query_len, key_length=key_len,
      num_heads=NUM_HEADS, num_kv_heads=num_kv_heads, head_dim=HEAD_DIM,
      value_dim=VALUE_DIM)
  return tuple(jnp.asarray(array, dtype) for array in arrays)


def _plan(query, key, value, **options):
  return prepare(query, key, value, is_causal=True, **options).plan


SHAPES = {
    "square": dict(),
    "longer-keys": dict(query_len=32, key_len=56),
    "mqa": dict(num_kv_heads=1),
    "mha": dict(num_kv_heads=NUM_HEADS),
    "multi-batch": dict(batch=(2, 3), query_len=32, key_len=32),
    # T is not a multiple of the query block, so keys are padded as far as
    # the queries (`_blocks.padded_to_split`).
    "padded-square": dict(query_len=45, key_len=45),
    "padded-longer-keys": dict(query_len=29, key_len=53),
}


@pytest.mark.parametrize("blocks", [BLOCKS, dict(block_q=8, block_k=8)],
                         ids=["16x8", "8x8"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_split_forward_matches_oracle(name, blocks, diagonal):
  query, key, value = _inputs(1, **SHAPES[name])
  assert _plan(query, key, value, **blocks).split_diagonal
  batch = query.shape[:-3]
  allowed = oracle.attention_mask(batch, NUM_HEADS, query.shape[-3],
                                  key.shape[-3], is_causal=True)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=True, return_residual=True, **blocks))(
          query, key, value)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize(
    "options",
    [dict(), dict(logits_soft_cap=2.0), dict(score_mod=hooks.distance_penalty),
     dict(bias=True), dict(dropout_rate=0.3)],
    ids=["plain", "soft-cap", "score-mod", "bias", "dropout"])
def test_split_gradients_match_reference(options, diagonal):
  _assert_split_gradients_match(options, seed=2)


def _assert_split_gradients_match(options, seed, **mask):
  """Check chunked gradients of a split causal call against the reference.

  `mask` adds options that both paths get, such as a window.
  """
  query, key, value = _inputs(seed, query_len=32, key_len=48)
  options = dict(options, **mask)
  bias = None
  if options.pop("bias", False):
    bias = jax.random.normal(jax.random.key(seed + 1),
                             (1, NUM_HEADS, 32, 48))
  if options.get("dropout_rate"):
    options["dropout_rng"] = jax.random.key(seed + 2)
  assert _plan(query, key, value, **BLOCKS, **{
      name: value for name, value in options.items()
      if name in ("logits_soft_cap", "score_mod",
                  "local_window_size")}).split_diagonal
  cotangent = jax.random.normal(jax.random.key(seed + 3),
                                (2, 32, NUM_HEADS, VALUE_DIM))

  def loss(implementation, query, key, value, bias):
    if implementation == "chunked":
      out = aj.chunked_attention(query, key, value, bias, is_causal=True,
                                 **options, **BLOCKS)
    else:
      out = aj.dot_product_attention(query, key, value, bias, is_causal=True,
                                     implementation="reference", **options)
    return jnp.sum(out * cotangent), out

  argnums = (1, 2, 3) if bias is None else (1, 2, 3, 4)
  (_, expected), expected_grads = jax.value_and_grad(
      loss, argnums, has_aux=True)("reference", query, key, value, bias)
  (_, actual), actual_grads = jax.jit(
      jax.value_and_grad(loss, argnums, has_aux=True), static_argnums=0)(
          "chunked", query, key, value, bias)

  np.testing.assert_allclose(actual, expected, **tolerance(np.float32))
  for index, (got, want) in enumerate(zip(actual_grads, expected_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_split_low_precision_matches_oracle(dtype, diagonal):
  query, key, value = _inputs(6, dtype=dtype)
  allowed = oracle.attention_mask((2,), NUM_HEADS, 48, 48, is_causal=True)
  expected, _, _ = oracle.dot_product_attention(query, key, value,
                                                allowed=allowed)

  out = aj.chunked_attention(query, key, value, is_causal=True, **BLOCKS)

  assert out.dtype == dtype
  np.testing.assert_allclose(out.astype(np.float32), expected,
                             **tolerance(dtype))


def test_split_keeps_nan_queries_in_their_rows(diagonal):
  # The quarters are ordered through the top half's softmax state. A NaN
  # query in the top half must not reach the rows below it.
  query, key, value = _inputs(7)
  query = query.at[0, 0, 0].set(jnp.nan)
  expected = aj.dot_product_attention(query, key, value, is_causal=True,
                                      implementation="reference")

  out = aj.chunked_attention(query, key, value, is_causal=True, **BLOCKS)

  assert np.isnan(out[0, 0, 0]).all()
  assert np.isfinite(out[0, 1:]).all()
  assert np.isfinite(out[0, 0, 1:]).all()
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


# Causal windows with 16-row query blocks and 8-key blocks. A window of at
# least 15 keys shows each row its whole part of the diagonal square.
WINDOWS = {
    "edge-on-block": (15, 0),
    "edge-inside-block": (20, 0),
    "right-side-hidden": (20, 3),
    "wide": (40, 0),
}


@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
@pytest.mark.parametrize("name", ["square", "longer-keys", "mqa"])
def test_window_split_matches_oracle(name, window, diagonal):
  query, key, value = _inputs(8, **SHAPES[name])
  assert _plan(query, key, value, local_window_size=window,
               **BLOCKS).split_diagonal
  batch = query.shape[:-3]
  allowed = oracle.attention_mask(batch, NUM_HEADS, query.shape[-3],
                                  key.shape[-3], is_causal=True,
                                  local_window_size=window)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=True, local_window_size=window,
      return_residual=True, **BLOCKS))(query, key, value)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("window, expected", [((14, 0), False),
                                              ((15, 0), True),
                                              ((14, 5), False)])
def test_window_splits_when_it_covers_the_diagonal(window, expected):
  query, key, value = _inputs(9)

  plan = _plan(query, key, value, local_window_size=window, **BLOCKS)

  assert plan.split_diagonal == expected


@pytest.mark.parametrize(
    "options",
    [dict(), dict(logits_soft_cap=2.0), dict(bias=True),
     dict(dropout_rate=0.3)],
    ids=["plain", "soft-cap", "bias", "dropout"])
def test_window_split_gradients_match_reference(options, diagonal):
  _assert_split_gradients_match(options, seed=10, local_window_size=(20, 0))


@pytest.mark.parametrize(
    "extra",
    [dict(), dict(local_window_size=(15, 0)),
     dict(dropout_rate=0.3, dropout_rng=jax.random.key(14))],
    ids=["causal", "window", "dropout"])
def test_padded_split_gradients_match_reference(extra, diagonal):
  query, key, value = _inputs(11, query_len=45, key_len=53)
  options = dict(is_causal=True, **extra)
  assert _plan(query, key, value, **BLOCKS,
               local_window_size=extra.get("local_window_size")
               ).split_diagonal

  def attend(implementation, query, key, value):
    if implementation == "chunked":
      return aj.chunked_attention(query, key, value, **options, **BLOCKS)
    return aj.dot_product_attention(query, key, value, **options,
                                    implementation="reference")

  _, grads = path_parity.assert_paths_agree(
      attend, (query, key, value), ("query", "key", "value"))
  assert grads[1].shape == key.shape


def test_padding_limited_to_an_eighth():
  # Padding 45 rows to 48 adds 3, within an eighth of T. Padding 33 to 48
  # would add 15, so that call keeps its masked tiles.
  query, key, value = _inputs(13, query_len=45, key_len=45)
  prepared = prepare(query, key, value, is_causal=True, **BLOCKS)
  assert prepared.plan.split_diagonal
  assert prepared.key.shape[1] == 48
  assert prepared.query_length == 45

  query, key, value = _inputs(13, query_len=33, key_len=33)
  prepared = prepare(query, key, value, is_causal=True, **BLOCKS)
  assert not prepared.plan.split_diagonal
  assert prepared.key.shape[1] == 33
