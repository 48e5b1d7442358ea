"""Decoding through `MultiHeadAttention` with a key/value cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax import nn as ajnn

BATCH, LENGTH, FEATURES, NUM_HEADS, PROMPT = 2, 19, 24, 6, 5
TOLERANCE = dict(rtol=2e-5, atol=2e-5)

POSITIONS = {
    "none": lambda: None,
    "rope-half": lambda: ajnn.RotaryEmbedding(pairing="half"),
    "rope-interleaved": lambda: ajnn.RotaryEmbedding(pairing="interleaved"),
    "alibi": lambda: ajnn.ALiBi(NUM_HEADS),
    "t5": lambda: ajnn.T5RelativeBias(NUM_HEADS, bidirectional=False,
                                      rngs=nnx.Rngs(3)),
    "sinks": lambda: ajnn.AttentionSinks(NUM_HEADS, rngs=nnx.Rngs(4)),
    "shaw": lambda: ajnn.ShawRelativePositions(
        FEATURES // NUM_HEADS, 3, rngs=nnx.Rngs(5)),
}


def _layer(position, num_kv_heads=3):
  return ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, num_kv_heads=num_kv_heads, position=position,
      rngs=nnx.Rngs(0))


def _inputs():
  return jax.random.normal(jax.random.key(1), (BATCH, LENGTH, FEATURES))


@pytest.mark.parametrize("name", list(POSITIONS))
def test_cached_decode_equals_full_pass(name):
  layer = _layer(POSITIONS[name]())
  inputs = _inputs()
  expected = layer(inputs, is_causal=True)

  cache = layer.init_cache((BATCH,), 32)
  prompt_out, cache = layer(inputs[:, :PROMPT], cache=cache)
  outs = [prompt_out]
  for t in range(PROMPT, LENGTH):
    out, cache = layer(inputs[:, t:t + 1], cache=cache)
    outs.append(out)
  decoded = jnp.concatenate(outs, axis=1)

  np.testing.assert_array_equal(cache.length, [LENGTH, LENGTH])
  np.testing.assert_allclose(decoded, expected, **TOLERANCE)


def test_cached_decode_in_scan_under_jit():
  layer = _layer(ajnn.RotaryEmbedding(), num_kv_heads=1)
  inputs = _inputs()
  expected = layer(inputs, is_causal=True)
  graph, state = nnx.split(layer)

  @jax.jit
  def decode(state, inputs):
    layer = nnx.merge(graph, state)
    cache = layer.init_cache((BATCH,), LENGTH)

    def step(cache, token):
      out, cache = layer(token[:, None], cache=cache)
      return cache, out[:, 0]

    _, outs = jax.lax.scan(step, cache, jnp.swapaxes(inputs, 0, 1))
    return jnp.swapaxes(outs, 0, 1)

  np.testing.assert_allclose(decode(state, inputs), expected, **TOLERANCE)


def test_sliding_window_cache_in_module():
  layer = _layer(ajnn.RotaryEmbedding())
  inputs = _inputs()
  window = (3, 0)
  expected = layer(inputs, is_causal=True, local_window_size=window)

  cache = layer.init_cache((BATCH,), 4, sliding_window=True)
  outs = []
  for t in range(LENGTH):
    out, cache = layer(inputs[:, t:t + 1], cache=cache,
                       local_window_size=window)
    outs.append(out)

  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected,
                             **TOLERANCE)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(inputs_k=jnp.ones((BATCH, 1, FEATURES))),
         r"a cache serves self-attention"),
        (dict(key_value_seq_lengths=jnp.array([1, 1])),
         r"key_value_seq_lengths cannot be combined with `cache`"),
    ],
    ids=["cross-attention", "lengths"])
def test_module_cache_errors(options, message):
  layer = _layer(None)
  cache = layer.init_cache((BATCH,), 8)
  inputs_k = options.pop("inputs_k", None)
  with pytest.raises(ValueError, match=message):
    layer(jnp.ones((BATCH, 1, FEATURES)), inputs_k, cache=cache, **options)
