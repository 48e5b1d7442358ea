"""Tests for the chunked path's default tile sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _cpu_cache, chunked

# The default tiles below are those of a host with 2 MB of L2 cache per
# core. `test_narrow_l2_keeps_square_backward_tiles` covers smaller caches.
pytestmark = pytest.mark.usefixtures("wide_l2_cache")


def prepare(query, key, value, bias=None, **options):
  """Return what `chunked._prepare` returns for these arguments."""
  arguments = dict(
      scale=None, is_causal=False, query_seq_lengths=None,
      key_value_seq_lengths=None, local_window_size=None, query_offset=None,
      query_segment_ids=None, key_segment_ids=None, logits_soft_cap=None,
      score_mod=None, score_mod_params=None, mask_mod=None, dropout_rate=0.0,
      dropout_rng=None, deterministic=True, block_q=None, block_k=None)
  arguments.update(options)
  return chunked._prepare(query, key, value, bias, None, **arguments)


def _inputs(query_len, key_len, seed=0):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((1, query_len, 2, 8))
  key = rng.standard_normal((1, key_len, 2, 8))
  value = rng.standard_normal((1, key_len, 2, 8))
  return (jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32),
          jnp.asarray(value, jnp.float32))


@pytest.mark.parametrize(
    "query_len, key_len, options, expected",
    [(1100, 700, {}, (550, 350)),
     (2048, 2048, {}, (256, 1024)),
     (2048, 2048, dict(key_value_seq_lengths=jnp.array([1500])), (512, 512)),
     (1000, 2048, {}, None),
     (2048, 2048, dict(is_causal=True), (512, 512)),
     (1000, 1000, dict(is_causal=True), None),
     (2048, 2048, dict(block_q=1024), None)],
    ids=["odd-lengths", "square", "key-lengths", "short-queries", "causal",
         "causal-odd-length", "explicit"])
def test_backward_blocks_default(query_len, key_len, options, expected):
  prepared = prepare(*_inputs(query_len, key_len), **options)

  assert prepared.plan.backward_blocks == expected


@pytest.mark.parametrize("l2_bytes", [1 << 20, None])
def test_narrow_l2_keeps_square_backward_tiles(monkeypatch, l2_bytes):
  # With 1 MB of L2 cache per core, where the wide tiles were slower, or
  # an unknown size, the backward pass keeps `BACKWARD_BLOCKS`.
  monkeypatch.setattr(_cpu_cache, "l2_bytes_per_core", lambda: l2_bytes)

  prepared = prepare(*_inputs(2048, 2048))

  assert prepared.plan.backward_blocks == (512, 512)


def assert_gradients_match_reference(query, key, value, cotangent,
                                     **options):
  """Check chunked gradients of `sum(out * cotangent)` against the reference.

  `options` are keyword arguments of `dot_product_attention` for both
  paths, which run with their default tiles.
  """

  def loss(implementation, query, key, value):
    out = aj.dot_product_attention(query, key, value,
                                   implementation=implementation, **options)
    return jnp.sum(out * cotangent)

  expected = jax.grad(loss, (1, 2, 3))("reference", query, key, value)
  actual = jax.jit(jax.grad(loss, (1, 2, 3)), static_argnums=0)(
      "chunked", query, key, value)

  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


def test_backward_blocks_gradients_match_reference():
  # Forward tiles of (768, 350), backward tiles of (512, 350).
  query, key, value = _inputs(1536, 700, seed=1)
  assert prepare(query, key, value).plan.backward_blocks == (512, 350)
  cotangent = jax.random.normal(jax.random.key(2), query.shape)

  assert_gradients_match_reference(query, key, value, cotangent)


@pytest.mark.parametrize(
    "shape, options, expected",
    [((4096, 4096), {}, (1024, 512, True)),
     ((1536, 1536), {}, (512, 512, True)),
     ((512, 1536), {}, (512, 512, True)),
     ((1000, 1000), {}, (500, 500, True)),
     ((1100, 1100), {}, (368, 368, True)),
     ((4096, 4096), dict(query_segment_ids=np.zeros((1, 4096), np.int32),
                         key_segment_ids=np.zeros((1, 4096), np.int32)),
      (512, 512, False)),
     ((4096, 4096), dict(local_window_size=(4095, 0)), (512, 512, True)),
     ((4096, 4096), dict(local_window_size=(255, 0)), (512, 256, False)),
     ((64, 64), dict(block_q=16, block_k=16), (16, 16, True)),
     ((64, 64), dict(block_q=16, block_k=32), (16, 32, False))],
    ids=["long", "fallback-blocks", "offset", "odd-length",
         "odd-length-far-from-blocks", "segments",
         "window", "narrow-window", "explicit", "explicit-wide-keys"])
def test_causal_tiles(shape, options, expected):
  query_len, key_len = shape
  query = jnp.zeros((1, query_len, 2, 8))
  key = value = jnp.zeros((1, key_len, 2, 8))

  plan = prepare(query, key, value, is_causal=True, **options).plan

  assert (plan.block_q, plan.block_k, plan.split_diagonal) == expected


@pytest.mark.parametrize(
    "window, num_heads, expected",
    [((1023, 0), 2, (512, 512)),
     ((511, 511), 2, (512, 512)),
     ((255, 0), 2, (512, 256)),
     ((255, 255), 2, (512, 256)),
     ((255, 0), 64, (256, 256)),
     (None, 2, (1024, 512))],
    ids=["wide", "wide-symmetric", "narrow", "narrow-symmetric",
         "narrow-many-heads", "no-window"])
def test_window_tiles(window, num_heads, expected):
  query = jnp.zeros((1, 4096, num_heads, 8))
  key = value = jnp.zeros((1, 4096, num_heads, 8))

  plan = prepare(query, key, value, local_window_size=window).plan

  assert (plan.block_q, plan.block_k) == expected
  # Window tiles serve both passes.
  assert plan.backward_blocks == (None if window else (256, 1024))


@pytest.mark.parametrize(
    "window, query_len, expected_block_k",
    [((1023, 0), 1, 128), ((1023, 0), 128, 1024), ((255, 0), 1, 64),
     ((4000, 100), 1, 1024), (None, 1, 32768)],
    ids=["decode", "short-queries", "decode-narrow", "decode-wide",
         "decode-no-window"])
def test_window_caps_key_blocks(window, query_len, expected_block_k):
  # Few queries grow the key blocks to keep the tile area, but not past the
  # window's width (rounded up to a power of two), so blocks outside the
  # window are still skipped. Tiles of at most 32 rows (all heads) take an
  # eighth of that width, and at least 64 keys.
  query = jnp.zeros((1, query_len, 2, 8))
  key = value = jnp.zeros((1, 32768, 2, 8))

  plan = prepare(query, key, value, local_window_size=window).plan

  assert plan.block_k == expected_block_k
