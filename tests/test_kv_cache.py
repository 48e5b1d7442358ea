"""Tests for key/value caches and cached decoding."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import kv_cache

BATCH, LENGTH, NUM_HEADS, HEAD_DIM, VALUE_DIM = 2, 23, 6, 8, 5
PROMPT = 7
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _sequence(seed=0, num_kv_heads=3):
  keys = jax.random.split(jax.random.key(seed), 3)
  query = jax.random.normal(keys[0], (BATCH, LENGTH, NUM_HEADS, HEAD_DIM))
  key = jax.random.normal(keys[1], (BATCH, LENGTH, num_kv_heads, HEAD_DIM))
  value = jax.random.normal(keys[2], (BATCH, LENGTH, num_kv_heads, VALUE_DIM))
  return query, key, value


def _decode_one_by_one(cache, query, key, value, **options):
  """Append and attend one token at a time with `lax.scan`."""
  def step(cache, token):
    query_t, key_t, value_t = token
    cache = kv_cache.append(cache, key_t[:, None], value_t[:, None])
    out = kv_cache.cached_attention(query_t[:, None], cache, **options)
    return cache, out[:, 0]

  tokens = tuple(jnp.swapaxes(x, 0, 1) for x in (query, key, value))
  cache, outs = jax.lax.scan(step, cache, tokens)
  return cache, jnp.swapaxes(outs, 0, 1)


@pytest.mark.parametrize("num_kv_heads", [3, 1, 6], ids=["gqa", "mqa", "mha"])
@pytest.mark.parametrize("implementation", ["reference", "chunked"])
def test_decode_equals_full_causal_pass(num_kv_heads, implementation):
  query, key, value = _sequence(num_kv_heads=num_kv_heads)
  expected = aj.dot_product_attention(query, key, value, is_causal=True)
  cache = kv_cache.init_cache((BATCH,), 32, num_kv_heads, HEAD_DIM,
                              value_dim=VALUE_DIM)

  @jax.jit
  def run(cache):
    cache = kv_cache.prefill(cache, key[:, :PROMPT], value[:, :PROMPT])
    prompt_out = kv_cache.cached_attention(
        query[:, :PROMPT], cache, implementation=implementation)
    cache, decoded = _decode_one_by_one(
        cache, query[:, PROMPT:], key[:, PROMPT:], value[:, PROMPT:],
        implementation=implementation)
    return cache, jnp.concatenate([prompt_out, decoded], axis=1)

  cache, out = run(cache)

  np.testing.assert_array_equal(cache.length, [LENGTH, LENGTH])
  np.testing.assert_allclose(out, expected, **TOLERANCE)


def test_cache_stores_only_kv_heads():
  cache = kv_cache.init_cache((BATCH,), 16, 2, HEAD_DIM, value_dim=VALUE_DIM)

  assert cache.key.shape == (BATCH, 16, 2, HEAD_DIM)
  assert cache.value.shape == (BATCH, 16, 2, VALUE_DIM)


@pytest.mark.parametrize("step_tokens", [1, 3])
def test_sliding_window_cache_equals_windowed_pass(step_tokens):
  query, key, value = _sequence(1)
  left = 4
  window = (left, 0)
  expected = aj.dot_product_attention(query, key, value, is_causal=True,
                                      local_window_size=window)
  cache = kv_cache.init_cache((BATCH,), left + step_tokens, 3, HEAD_DIM,
                              value_dim=VALUE_DIM, sliding_window=True)
  outs = []
  for start in range(0, LENGTH - LENGTH % step_tokens, step_tokens):
    stop = start + step_tokens
    cache = kv_cache.append(cache, key[:, start:stop], value[:, start:stop])
    outs.append(kv_cache.cached_attention(
        query[:, start:stop], cache, local_window_size=window))
  out = jnp.concatenate(outs, axis=1)

  np.testing.assert_allclose(out, expected[:, :out.shape[1]], **TOLERANCE)


def test_ring_slot_positions_wrap():
  cache = kv_cache.init_cache((1,), 4, 1, 2, sliding_window=True)
  cache = kv_cache.append(cache, jnp.ones((1, 6, 1, 2)), jnp.ones((1, 6, 1, 2)))

  np.testing.assert_array_equal(kv_cache.slot_positions(cache), [[4, 5, 2, 3]])


def test_prompts_of_different_lengths():
  query, key, value = _sequence(2)
  prompt_lengths = np.array([4, PROMPT], np.int32)
  steps = 5
  cache = kv_cache.init_cache((BATCH,), 16, 3, HEAD_DIM, value_dim=VALUE_DIM)
  cache = kv_cache.prefill(cache, key[:, :PROMPT], value[:, :PROMPT],
                           lengths=prompt_lengths)
  prompt_out = kv_cache.cached_attention(
      query[:, :PROMPT], cache, query_lengths=prompt_lengths)

  # Each element continues right after its own prompt.
  def continuation(x):
    rows = [x[b, length:length + steps] for b, length in
            enumerate(prompt_lengths)]
    return jnp.stack(rows)

  _, decoded = _decode_one_by_one(
      cache, continuation(query), continuation(key), continuation(value))

  for b, length in enumerate(prompt_lengths):
    total = length + steps
    expected = aj.dot_product_attention(
        query[b:b + 1, :total], key[b:b + 1, :total],
        value[b:b + 1, :total], is_causal=True)[0]
    np.testing.assert_allclose(prompt_out[b, :length], expected[:length],
                               **TOLERANCE)
    np.testing.assert_array_equal(prompt_out[b, length:], 0.0)
    np.testing.assert_allclose(decoded[b], expected[length:], **TOLERANCE)


def test_decode_no_retrace_per_step():
  query, key, value = _sequence(3)
  cache = kv_cache.init_cache((BATCH,), 32, 3, HEAD_DIM, value_dim=VALUE_DIM)
  traces = []

  @jax.jit
  def step(cache, query_t, key_t, value_t):
    traces.append(1)
    cache = kv_cache.append(cache, key_t, value_t)
    return cache, kv_cache.cached_attention(query_t, cache)

  for t in range(3):
    cache, _ = step(cache, query[:, t:t + 1], key[:, t:t + 1],
                    value[:, t:t + 1])

  assert len(traces) == 1


def _empty(capacity=8, sliding_window=False):
  return kv_cache.init_cache((BATCH,), capacity, 3, HEAD_DIM,
                             value_dim=VALUE_DIM,
                             sliding_window=sliding_window)


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda: kv_cache.append(
            kv_cache.append(_empty(), jnp.ones((BATCH, 6, 3, HEAD_DIM)),
                            jnp.ones((BATCH, 6, 3, VALUE_DIM))),
            jnp.ones((BATCH, 3, 3, HEAD_DIM)),
            jnp.ones((BATCH, 3, 3, VALUE_DIM))),
         r"the cache overflows: a batch element would hold 9 tokens but the "
         r"capacity is 8"),
        (lambda: kv_cache.append(_empty(), jnp.ones((BATCH, 9, 3, HEAD_DIM)),
                                 jnp.ones((BATCH, 9, 3, VALUE_DIM))),
         r"cannot append 9 tokens to a cache of capacity 8"),
        (lambda: kv_cache.append(_empty(), jnp.ones((BATCH, 1, 2, HEAD_DIM)),
                                 jnp.ones((BATCH, 1, 2, VALUE_DIM))),
         r"`key` should have shape \[B..., T, K, H\] = \(2, None, 3, 8\) to "
         r"match the cache, but got \(2, 1, 2, 8\)"),
        (lambda: kv_cache.append(_empty(), jnp.ones((BATCH, 1, 3, HEAD_DIM)),
                                 jnp.ones((BATCH, 1, 3, 4))),
         r"`value` should have shape \[B..., T, K, H_v\] = \(2, 1, 3, 5\)"),
        (lambda: kv_cache.cached_attention(
            jnp.ones((3, 1, NUM_HEADS, HEAD_DIM)), _empty()),
         r"`query` should have shape \[B..., T, N, H\] with B... = \(2,\)"),
        (lambda: kv_cache.cached_attention(
            jnp.ones((BATCH, 1, NUM_HEADS, HEAD_DIM)),
            _empty(sliding_window=True)),
         r"a sliding-window cache needs `local_window_size`"),
        (lambda: kv_cache.cached_attention(
            jnp.ones((BATCH, 2, NUM_HEADS, HEAD_DIM)),
            _empty(4, sliding_window=True), local_window_size=(3, 0)),
         r"the first of 2 queries looks 3 positions back, but the "
         r"sliding-window cache keeps only 4"),
        (lambda: kv_cache.prefill(
            _empty(4, sliding_window=True), jnp.ones((BATCH, 6, 3, HEAD_DIM)),
            jnp.ones((BATCH, 6, 3, VALUE_DIM)), lengths=jnp.array([2, 3])),
         r"cannot prefill 6 padded tokens into a sliding-window cache"),
        (lambda: kv_cache.init_cache((BATCH,), 0, 3, HEAD_DIM),
         r"`capacity` should be a positive integer, but got 0"),
    ],
    ids=["overflow", "too-many-tokens", "key-heads", "value-dim",
         "query-batch", "ring-needs-window", "ring-too-small",
         "ring-prefill-padding", "zero-capacity"])
def test_cache_errors(action, message):
  with pytest.raises(ValueError, match=message):
    action()
