"""Tests for running the chunked kernel over the batch in chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _batch_chunks
from attention_jax import _tile_sizes
from attention_jax import chunked
from attention_jax._chunked_kernel import chunked_core

BATCH, QUERY_LEN, KEY_LEN, NUM_HEADS, HEAD_DIM = 6, 21, 29, 4, 8


@pytest.mark.parametrize(
    "batch_size, num_heads, expected",
    [(8, 8, 1), (6, 4, 2), (6, 2, 3), (5, 2, 1), (3, 1, 3), (1, 64, 1)])
def test_batch_chunk_divides_batch(batch_size, num_heads, expected):
  chunk = _batch_chunks.batch_chunk(batch_size, num_heads, 1024 * 512,
                                    _tile_sizes.TILE_LOGITS)
  assert chunk == expected
  assert batch_size % chunk == 0


def _inputs(seed):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((BATCH, QUERY_LEN, NUM_HEADS, HEAD_DIM))
  key = rng.standard_normal((BATCH, KEY_LEN, 2, HEAD_DIM))
  value = rng.standard_normal((BATCH, KEY_LEN, 2, HEAD_DIM))
  return (jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32),
          jnp.asarray(value, jnp.float32))


def _per_batch_options(seed):
  rng = np.random.default_rng(seed)
  segments = np.cumsum(rng.random((BATCH, QUERY_LEN)) < 0.2, -1)
  key_segments = np.cumsum(rng.random((BATCH, KEY_LEN)) < 0.2, -1)
  return dict(
      bias=rng.standard_normal((BATCH, 1, QUERY_LEN, KEY_LEN)).astype(
          np.float32),
      mask=rng.random((BATCH, 1, QUERY_LEN, KEY_LEN)) < 0.8,
      key_value_seq_lengths=np.array([29, 3, 17, 0, 25, 29], np.int32),
      query_segment_ids=segments.astype(np.int32),
      key_segment_ids=key_segments.astype(np.int32),
      dropout_rate=0.25, dropout_rng=jax.random.key(seed))


@pytest.mark.parametrize("chunk, vectorize",
                         [(1, False), (2, False), (3, False), (1, True)],
                         ids=["1", "2", "3", "vmap"])
def test_chunks_equal_one_call(chunk, vectorize):
  query, key, value = _inputs(0)
  options = _per_batch_options(1)
  bias, mask = options.pop("bias"), options.pop("mask")
  prepared = chunked._prepare(
      query, key, value, bias, mask, scale=None, is_causal=False,
      query_seq_lengths=None, local_window_size=None, query_offset=None,
      logits_soft_cap=None, score_mod=None, score_mod_params=None,
      mask_mod=None, deterministic=False, block_q=8, block_k=8, **options)
  arrays = (prepared.query, prepared.key, prepared.value, prepared.bias)

  def loss(split, query, key, value, bias):
    if split:
      out, lse = _batch_chunks.core_in_chunks(
          prepared.plan, chunk, query, key, value, bias, prepared.aux, None,
          vectorize=vectorize)
    else:
      out, lse = chunked_core(prepared.plan, query, key, value, bias,
                              prepared.aux, None)
    return jnp.sum(out * jnp.cos(out)) + jnp.sum(jnp.where(
        jnp.isfinite(lse), lse, 0.0)), (out, lse)

  grad = jax.grad(loss, (1, 2, 3, 4), has_aux=True)
  whole_grads, (whole_out, whole_lse) = grad(False, *arrays)
  split_grads, (split_out, split_lse) = grad(True, *arrays)

  np.testing.assert_allclose(split_out, whole_out, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.isfinite(split_lse),
                                np.isfinite(whole_lse))
  np.testing.assert_allclose(split_lse, whole_lse, rtol=1e-6, atol=1e-6)
  for index, (got, want) in enumerate(zip(split_grads, whole_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=f"gradient of argument {index}")


def test_chunked_batch_matches_reference():
  query, key, value = _inputs(2)
  options = _per_batch_options(3)
  query = jnp.tile(query, (1, 1, 2, 1))  # 8 heads: one sequence per chunk

  def attend(implementation, query, key, value):
    return aj.dot_product_attention(query, key, value, **options,
                                    implementation=implementation)

  expected = attend("reference", query, key, value)
  actual = jax.jit(attend, static_argnums=0)("chunked", query, key, value)

  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
