"""Tests for default tiles at lengths that whole blocks do not fill."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import hooks
import inputs
import oracle
from attention_jax import _tile_sizes
from test_chunked_defaults import assert_gradients_match_reference, prepare
from tolerances import tolerance

NUM_HEADS, HEAD_DIM, VALUE_DIM = 6, 5, 7

# Default tiles as on a host with 2 MB of L2 cache per core, where the
# backward pass without a causal mask takes wide tiles.
pytestmark = pytest.mark.usefixtures("wide_l2_cache")


@pytest.mark.parametrize("size, length, expected",
                         [(1024, 1100, 550), (512, 1100, 367),
                          (512, 2100, 420), (512, 4096, 512),
                          (1024, 700, 1024), (8, 35, 7)])
def test_balanced_block_sizes(size, length, expected):
  assert _tile_sizes._balanced(size, length) == expected


@pytest.mark.parametrize("block_q, length, size, expected",
                         [(1024, 2048, 256, 256), (1024, 1024, 512, 512),
                          (550, 1100, 256, 220), (700, 2100, 256, 350),
                          (22, 66, 8, 11), (13, 13, 4, 13)])
def test_backward_rows(block_q, length, size, expected):
  # Spread blocks where they pad T no further than the forward's blocks,
  # otherwise the divisor of the forward's block nearest to `size`.
  assert _tile_sizes._backward_rows(block_q, length, size) == expected


@pytest.mark.parametrize("length, expected",
                         [(1100, 368), (1300, 434), (2000, 500), (1536, 512),
                          (1, 2)])
def test_even_split_block_sizes(length, expected):
  blocks = _tile_sizes._even_split_blocks((512, 512), length)

  assert blocks == (expected, expected)


def _zeros(query_len, key_len, num_heads=8):
  query = jnp.zeros((1, query_len, num_heads, 8))
  key = value = jnp.zeros((1, key_len, num_heads, 8))
  return query, key, value


@pytest.mark.parametrize(
    "shape, options, expected",
    [((1100, 1100), {}, (550, 367, (220, 550), 1100)),
     ((2100, 2100), {}, (700, 420, (350, 700), 2100)),
     ((4096, 4096), {}, (1024, 512, (256, 1024), 4096)),
     ((4096, 4096), dict(key_value_seq_lengths=jnp.array([3000])),
      (1024, 512, (512, 512), 4096)),
     ((2048, 1024), {}, (1024, 512, (512, 512), 2048)),
     ((768, 768), {}, (768, 384, None, 768)),
     ((1, 5000), {}, (1, 5000, None, 1)),
     ((3000, 3000), dict(local_window_size=(255, 255)),
      (500, 250, None, 3000)),
     ((1100, 1100), dict(is_causal=True), (368, 368, None, 1104)),
     ((4096, 4096), dict(is_causal=True), (1024, 512, (512, 512), 4096)),
     ((4000, 4000), dict(is_causal=True, local_window_size=(1023, 0)),
      (500, 500, None, 4000)),
     ((1100, 1100), dict(block_q=1024), (1024, 367, None, 2048))],
    ids=["odd", "odd-exact", "whole-blocks", "key-lengths", "short-keys",
         "short", "decode",
         "narrow-window", "causal-odd", "causal-whole-blocks",
         "causal-window-odd", "explicit-queries"])
def test_default_tiles(shape, options, expected):
  plan = prepare(*_zeros(*shape), **options).plan

  assert (plan.block_q, plan.block_k, plan.backward_blocks,
          plan.padded_query_length) == expected


def test_causal_odd_length_splits():
  plan = prepare(*_zeros(1100, 1100), is_causal=True).plan

  assert plan.split_diagonal


def test_many_heads_causal_split():
  # With 64 heads the default query block shrinks to 256 while key blocks
  # stay 512, which cannot split, so square blocks of 256 do.
  plan = prepare(*_zeros(4096, 4096, num_heads=64), is_causal=True).plan

  assert (plan.block_q, plan.block_k) == (256, 256)
  assert plan.split_diagonal


@pytest.fixture
def small_defaults(monkeypatch):
  """Scale the default tiles down so that small inputs cover several."""
  for name, blocks in [("DEFAULT_BLOCKS", (32, 16)),
                       ("CAUSAL_FALLBACK_BLOCKS", (16, 16)),
                       ("WINDOW_BLOCKS", (16, 16)),
                       ("NARROW_WINDOW_BLOCKS", (16, 8)),
                       ("BACKWARD_BLOCKS", (16, 16)),
                       ("NON_CAUSAL_BACKWARD_BLOCKS", (8, 32))]:
    monkeypatch.setattr(_tile_sizes, name, blocks)


def _inputs(seed, *, batch=(2,), query_len=40, key_len=40, num_kv_heads=3):
  arrays = inputs.attention_inputs(
      seed, batch=batch, query_length=query_len, key_length=key_len,
      num_heads=NUM_HEADS, num_kv_heads=num_kv_heads, head_dim=HEAD_DIM,
      value_dim=VALUE_DIM)
  return tuple(jnp.asarray(array, np.float32) for array in arrays)


@pytest.mark.parametrize("query_len, expected_rows",
                         [(40, (20, 20)), (48, (24, 16))])
def test_small_defaults_cover_both_passes(small_defaults, query_len,
                                          expected_rows):
  # Over 31 keys the backward pass keeps square tiles. With 40 queries,
  # blocks of 14 would pad 2 rows, so it takes the forward's 20. With 48,
  # blocks of 16 pad nothing.
  plan = prepare(*_inputs(0, query_len=query_len, key_len=31)).plan

  assert (plan.block_q, plan.backward_blocks[0]) == expected_rows
  assert (plan.block_k, plan.backward_blocks[1]) == (16, 16)
  assert plan.padded_query_length == query_len
  assert plan.needs_bounds


@pytest.mark.parametrize("query_len, key_len, expected",
                         [(40, 40, (8, 20)), (40, 53, (8, 27)),
                          (66, 66, (11, 22))])
def test_small_defaults_wide_backward_tiles(small_defaults, query_len,
                                            key_len, expected):
  # Over more keys than one scaled-down wide block (32), without a mask:
  # spread rows where they add no padding, else a divisor of the forward's.
  plan = prepare(*_inputs(0, query_len=query_len, key_len=key_len)).plan

  assert plan.backward_blocks == expected
  assert plan.padded_query_length == plan.num_q_blocks * plan.block_q


CASES = {
    "full": dict(),
    "longer-keys": dict(key_len=53),
    "mqa": dict(num_kv_heads=1),
    "divisor-rows": dict(query_len=66, key_len=66),
    "short-keys": dict(query_len=48, key_len=31),
    "causal": dict(is_causal=True),
    "causal-longer-keys": dict(is_causal=True, key_len=52),
    "causal-window": dict(is_causal=True, local_window_size=(15, 0)),
}


def _split_options(options):
  shape = {name: options[name]
           for name in ("query_len", "key_len", "num_kv_heads")
           if name in options}
  return shape, {name: value for name, value in options.items()
                 if name not in shape}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_oracle(name, small_defaults):
  shape, options = _split_options(CASES[name])
  query, key, value = _inputs(1, **shape)
  allowed = oracle.attention_mask(
      (2,), NUM_HEADS, query.shape[-3], key.shape[-3],
      is_causal=options.get("is_causal", False),
      local_window_size=options.get("local_window_size"))
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, return_residual=True, **options))(query, key, value)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("name", ["full", "longer-keys", "mqa",
                                  "divisor-rows", "short-keys", "causal",
                                  "causal-longer-keys"])
def test_gradients_match_reference(name, small_defaults):
  shape, options = _split_options(CASES[name])
  query, key, value = _inputs(2, **shape)
  cotangent = jax.random.normal(jax.random.key(3),
                                query.shape[:-1] + (VALUE_DIM,))

  assert_gradients_match_reference(query, key, value, cotangent, **options)


FEATURES = {
    "bias": lambda: dict(bias=jax.random.normal(
        jax.random.key(5), (2, NUM_HEADS, 40, 40))),
    "hooks": lambda: dict(logits_soft_cap=2.0,
                          score_mod=hooks.distance_penalty),
    "dropout": lambda: dict(dropout_rate=0.25,
                            dropout_rng=jax.random.key(6)),
}


@pytest.mark.parametrize("name", list(FEATURES))
def test_wide_backward_tiles_with_features(name, small_defaults):
  # A bias, hooks or dropout hide no keys, so they keep the wide tiles.
  query, key, value = _inputs(4)
  options = FEATURES[name]()
  bias = options.pop("bias", None)
  cotangent = jax.random.normal(jax.random.key(7),
                                query.shape[:-1] + (VALUE_DIM,))

  plan = prepare(query, key, value, bias, deterministic=False,
                 **options).plan

  assert plan.backward_blocks == (8, 20)
  assert_gradients_match_reference(query, key, value, cotangent, bias=bias,
                                   **options)
