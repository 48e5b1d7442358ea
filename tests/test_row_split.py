"""Tests for causal chunked attention computed as two calls (`_row_split`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import hooks
import inputs
import oracle
from attention_jax import _row_split
from attention_jax import _tile_sizes
from test_chunked_defaults import prepare
from tolerances import tolerance

NUM_HEADS, HEAD_DIM, VALUE_DIM = 6, 5, 7


@pytest.fixture(autouse=True)
def small_defaults(monkeypatch):
  """Default tiles of (16, 8), a causal fallback of (8, 8), and a spy.

  Returns the list of `rows` that `attend_in_two` was called with.
  """
  for name, blocks in [("DEFAULT_BLOCKS", (16, 8)),
                       ("CAUSAL_FALLBACK_BLOCKS", (8, 8)),
                       ("WINDOW_BLOCKS", (16, 8)),
                       ("NARROW_WINDOW_BLOCKS", (16, 8)),
                       ("BACKWARD_BLOCKS", (8, 8))]:
    monkeypatch.setattr(_tile_sizes, name, blocks)
  calls = []
  attend_in_two = _row_split.attend_in_two

  def spy(attend, rows, *args, **kwargs):
    calls.append(rows)
    return attend_in_two(attend, rows, *args, **kwargs)

  monkeypatch.setattr(_row_split, "attend_in_two", spy)
  return calls


def _inputs(seed, *, batch=(2,), query_len=35, key_len=35, num_kv_heads=3):
  arrays = inputs.attention_inputs(
      seed, batch=batch, query_length=query_len, key_length=key_len,
      num_heads=NUM_HEADS, num_kv_heads=num_kv_heads, head_dim=HEAD_DIM,
      value_dim=VALUE_DIM)
  return tuple(jnp.asarray(array, np.float32) for array in arrays)


def _split_rows(query_len, key_len=None, **options):
  query, key, value = _inputs(0, query_len=query_len,
                              key_len=key_len or query_len)
  options.setdefault("is_causal", True)
  return prepare(query, key, value, split_rows=True, **options).split_rows


@pytest.mark.parametrize(
    "query_len, key_len, expected",
    [(35, 35, 32),  # 3 rows after two query blocks of 16: at most an eighth
     (35, 43, 32),  # keys start 8 earlier, a whole key block
     (42, 42, 40),  # fallback blocks of 8: 2 rows after five of them
     (32, 32, None),  # whole query blocks split as they are
     (45, 45, None),  # padding 3 rows is at most an eighth: one padded call
     (37, 37, None),  # 5 rows is more than an eighth, but blocks of 8 pad only 3
     (21, 21, None),  # 5 rows after one block of 16 or two of 8: too many
     (35, 40, None),  # keys start 5 earlier: the diagonal cannot split
     (12, 12, None)],  # shorter than a query block
    ids=["square", "longer-keys", "fallback-blocks", "whole-blocks",
         "padded", "padded-fallback", "too-many-rows", "unaligned-keys",
         "one-block"])
def test_rows_split_when_few_rows_are_left(query_len, key_len, expected):
  assert _split_rows(query_len, key_len) == expected


@pytest.mark.parametrize(
    "options",
    [dict(is_causal=False), dict(block_q=16), dict(block_k=8),
     dict(score_mod=hooks.distance_penalty),
     dict(dropout_rate=0.1, dropout_rng=jax.random.key(0),
          deterministic=False),
     dict(key_value_seq_lengths=jnp.array([30, 35]))],
    ids=["non-causal", "block-q", "block-k", "score-mod", "dropout",
         "key-lengths"])
def test_rows_stay_in_one_call(options):
  # Hooks and dropout depend on each row's index. Explicit blocks are the
  # caller's choice, and other masks never split.
  assert _split_rows(35, **options) is None


def test_dropout_off_still_splits():
  # Without an rng (or when deterministic) no weight is dropped.
  assert _split_rows(35, dropout_rate=0.1) == 32


SHAPES = {
    "square": dict(),
    "longer-keys": dict(key_len=43),
    "fallback-blocks": dict(query_len=42, key_len=42),
    "mqa": dict(num_kv_heads=1),
    "multi-batch": dict(batch=(2, 3)),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_two_calls_match_oracle(name, small_defaults):
  query, key, value = _inputs(1, **SHAPES[name])
  batch, query_len, key_len = query.shape[:-3], query.shape[-3], key.shape[-3]
  allowed = oracle.attention_mask(batch, NUM_HEADS, query_len, key_len,
                                  is_causal=True)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=True, return_residual=True))(query, key, value)

  assert small_defaults == [query_len - query_len % 8
                            if name == "fallback-blocks"
                            else query_len - query_len % 16]
  assert out.shape == query.shape[:-1] + (VALUE_DIM,)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


BIASES = {
    "full": (2, NUM_HEADS, 35, 35),
    "shared-rows": (1, NUM_HEADS, 1, 35),
    "rows-and-keys": (35, 35),
    "keys-only": (35,),
}


@pytest.mark.parametrize("shape", list(BIASES.values()), ids=list(BIASES))
def test_two_calls_slice_the_bias(shape, small_defaults):
  query, key, value = _inputs(2)
  bias = jax.random.normal(jax.random.key(3), shape)
  allowed = oracle.attention_mask((2,), NUM_HEADS, 35, 35, is_causal=True)
  expected, _, _ = oracle.dot_product_attention(
      query, key, value, bias=np.broadcast_to(bias, (2, NUM_HEADS, 35, 35)),
      allowed=allowed)

  out = aj.chunked_attention(query, key, value, bias, is_causal=True)

  assert small_defaults == [32]
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize("window", [(15, 0), (20, 3)],
                         ids=["edge-on-block", "right-side-hidden"])
def test_two_calls_keep_the_window(window, small_defaults):
  query, key, value = _inputs(4, key_len=43)
  allowed = oracle.attention_mask((2,), NUM_HEADS, 35, 43, is_causal=True,
                                  local_window_size=window)
  expected, _, _ = oracle.dot_product_attention(query, key, value,
                                                allowed=allowed)

  out = aj.chunked_attention(query, key, value, is_causal=True,
                             local_window_size=window)

  assert small_defaults == [32]
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize(
    "options", [dict(), dict(logits_soft_cap=2.0), dict(bias=True)],
    ids=["plain", "soft-cap", "bias"])
def test_two_calls_gradients_match_reference(options, small_defaults):
  query, key, value = _inputs(5, key_len=43)
  options = dict(options)
  bias = None
  if options.pop("bias", False):
    bias = jax.random.normal(jax.random.key(6), (1, NUM_HEADS, 35, 43))
  cotangent = jax.random.normal(jax.random.key(7),
                                (2, 35, NUM_HEADS, VALUE_DIM))

  def loss(implementation, query, key, value, bias):
    out = aj.dot_product_attention(query, key, value, bias, is_causal=True,
                                   implementation=implementation, **options)
    return jnp.sum(out * cotangent)

  argnums = (1, 2, 3) if bias is None else (1, 2, 3, 4)
  expected = jax.grad(loss, argnums)("reference", query, key, value, bias)
  actual = jax.jit(jax.grad(loss, argnums), static_argnums=0)(
      "chunked", query, key, value, bias)

  assert small_defaults == [32]
  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


def test_two_calls_under_vmap(small_defaults):
  query, key, value = _inputs(8, batch=(3,))
  expected = aj.dot_product_attention(query, key, value, is_causal=True,
                                      implementation="reference")

  out = jax.vmap(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=True))(query, key, value)

  assert small_defaults == [32]
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
