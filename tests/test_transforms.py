"""Attention under `jax.jit`, `jax.vmap` and `jax.grad`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from inputs import BATCH
from inputs import KEY_LENGTH as S
from inputs import NUM_HEADS as N
from inputs import QUERY_LENGTH as T
from inputs import VALUE_DIM as H_V
from inputs import attention_inputs
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

F32 = tolerance(np.float32)


def full_options(seed):
  """Return array options that exercise every masking path."""
  rng = np.random.default_rng(seed)
  return dict(
      bias=random_normal(seed, (*BATCH, N, T, S)),
      mask=random_mask(seed + 1, (*BATCH, N, T, S), 0.8),
      query_seq_lengths=np.array([6, 7], np.int32),
      key_value_seq_lengths=np.array([11, 0], np.int32),
      query_offset=np.array([4, 2], np.int32),
      query_segment_ids=np.sort(rng.integers(0, 2, (*BATCH, T))).astype(
          np.int32),
      key_segment_ids=np.sort(rng.integers(0, 2, (*BATCH, S))).astype(
          np.int32),
  )


STATIC = dict(is_causal=True, local_window_size=(5, 1), scale=0.4)


def attend(query, key, value, options):
  return aj.dot_product_attention(query, key, value, return_residual=True,
                                  return_weights=True, **options, **STATIC)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["output", "residual",
                                                   "weights"])
def test_jit_matches_eager(index):
  query, key, value = attention_inputs(0)
  options = full_options(1)
  eager = attend(query, key, value, options)[index]
  jitted = jax.jit(attend)(query, key, value, options)[index]
  np.testing.assert_allclose(jitted, eager, **F32)


def test_jit_matches_eager_additive():
  query, key, value = (random_normal(2, (*BATCH, T, 3, 5)),
                       random_normal(3, (*BATCH, S, 3, 4)),
                       random_normal(4, (*BATCH, S, 3, H_V)))
  params = (random_normal(5, (3, 5, 17)), random_normal(6, (3, 4, 17)),
            random_normal(7, (3, 17)))
  lengths = np.array([5, 9], np.int32)

  def run(query, key, value, params, lengths):
    return aj.additive_attention(query, key, value, *params, is_causal=True,
                                 key_value_seq_lengths=lengths)

  np.testing.assert_allclose(
      jax.jit(run)(query, key, value, params, lengths),
      run(query, key, value, params, lengths), **F32)


def test_jit_matches_eager_basic():
  inputs = random_normal(8, (*BATCH, S, 5))
  params = (random_normal(9, (5, 7)), random_normal(10, (7,)),
            random_normal(11, (7,)))
  mask = random_mask(12, (*BATCH, S))

  def run(inputs, params, mask):
    return aj.basic_attention(inputs, *params, mask=mask)

  np.testing.assert_allclose(jax.jit(run)(inputs, params, mask),
                             run(inputs, params, mask), **F32)


def test_vmap_matches_loop():
  # Each call sees unbatched [T, N, H] inputs, and vmap adds the batch axis.
  query, key, value = attention_inputs(13)
  options = full_options(14)

  def single(query, key, value, options):
    return aj.dot_product_attention(query, key, value, **options, **STATIC)

  # Both sides are compiled: eager vmap compiles every operation separately,
  # which is much slower, and jit is tested against eager above.
  batched = jax.jit(jax.vmap(single))(query, key, value, options)
  looped = np.stack([
      jax.jit(single)(query[b], key[b], value[b],
                      {name: option[b] for name, option in options.items()})
      for b in range(BATCH[0])])
  np.testing.assert_allclose(batched, looped, **F32)


def test_vmap_over_extra_batch_axis():
  # vmap over a new leading axis of inputs that already have a batch axis.
  extra = 3
  query, key, value = attention_inputs(15, batch=(extra, *BATCH))
  mask = random_mask(16, (extra, *BATCH, 1, T, S), 0.7)

  def batched_call(query, key, value, mask):
    return aj.dot_product_attention(query, key, value, mask=mask,
                                    is_causal=True)

  batched = jax.jit(jax.vmap(batched_call))(query, key, value, mask)
  looped = np.stack([jax.jit(batched_call)(query[i], key[i], value[i], mask[i])
                     for i in range(extra)])
  np.testing.assert_allclose(batched, looped, **F32)


def test_vmap_weights_match_loop():
  query, key, _ = attention_inputs(17)
  lengths = np.array([3, 9], np.int32)

  def single(query, key, length):
    return aj.dot_product_attention_weights(
        query, key, key_value_seq_lengths=length, is_causal=True)

  batched = jax.jit(jax.vmap(single))(query, key, lengths)
  looped = np.stack([jax.jit(single)(query[b], key[b], lengths[b])
                     for b in range(2)])
  np.testing.assert_allclose(batched, looped, **F32)


def test_grad_finite_with_empty_rows():
  query, key, value = attention_inputs(18)
  options = full_options(19)  # Batch 1 has no keys at all.
  cotangent = random_normal(20, (*BATCH, T, N, H_V))

  def loss(query, key, value, bias):
    output = aj.dot_product_attention(
        query, key, value, bias,
        **{name: option for name, option in options.items()
           if name != "bias"}, **STATIC)
    return jnp.sum(output * cotangent)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
      query, key, value, options["bias"])
  for name, grad in zip(("query", "key", "value", "bias"), grads):
    assert np.all(np.isfinite(grad)), name


def test_grad_matches_finite_difference():
  query, key, value = attention_inputs(21, batch=(), num_kv_heads=2)
  mask = random_mask(22, (N, T, S), 0.7)
  direction = random_normal(23, query.shape)

  def loss(query):
    output = aj.dot_product_attention(query, key, value, mask=mask,
                                      is_causal=True)
    return jnp.sum(output ** 2)

  epsilon = 1e-2
  compiled_loss = jax.jit(loss)
  numeric = (compiled_loss(query + epsilon * direction)
             - compiled_loss(query - epsilon * direction)) / (2 * epsilon)
  analytic = jnp.sum(jax.jit(jax.grad(loss))(query) * direction)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=2e-3)


def test_no_retrace_same_shapes():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(query, key, value, options):
    return aj.dot_product_attention(query, key, value, **options, **STATIC)

  first = attention_inputs(24)
  second = attention_inputs(25)
  run(*first, full_options(26)).block_until_ready()
  # New values, including new lengths, offsets and segment ids, reuse the
  # trace; a retrace would raise inside chex.
  run(*second, full_options(27)).block_until_ready()

