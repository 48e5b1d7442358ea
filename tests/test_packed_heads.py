"""Tests for forward tiles that multiply all key/value heads at once.

With few query rows per tile (decoding), `Plan.packs_heads` makes the
forward pass read key and value blocks without transposing them
(`attention_jax/_packed_heads.py`). These calls go through that path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _packed_heads
from attention_jax._blocks import Plan
from attention_jax._tile_sizes import PACKED_HEADS_MAX_ROWS
import hooks
import oracle
import path_parity
from tolerances import tolerance

BATCH, QUERY_LEN, KEY_LEN, NUM_HEADS, HEAD_DIM, VALUE_DIM = 2, 3, 53, 6, 5, 7
# One query row per tile and head, several key blocks (the last one overlaps).
BLOCKS = dict(block_q=1, block_k=16)


def _inputs(seed=0, *, query_len=QUERY_LEN, num_kv_heads=3,
            dtype=np.float32):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((BATCH, query_len, NUM_HEADS, HEAD_DIM))
  key = rng.standard_normal((BATCH, KEY_LEN, num_kv_heads, HEAD_DIM))
  value = rng.standard_normal((BATCH, KEY_LEN, num_kv_heads, VALUE_DIM))
  return (jnp.asarray(query, dtype), jnp.asarray(key, dtype),
          jnp.asarray(value, dtype))


CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "decode-offsets": dict(is_causal=True,
                           query_offset=np.array([20, 50], np.int32),
                           key_value_seq_lengths=np.array([23, 53], np.int32)),
    "window": dict(local_window_size=(9, 0), is_causal=True),
    "lengths": dict(key_value_seq_lengths=np.array([0, 40], np.int32)),
    "mask": dict(mask=np.random.default_rng(2).random(
        (BATCH, 1, QUERY_LEN, KEY_LEN)) < 0.5),
    "bias": dict(bias=np.random.default_rng(3).standard_normal(
        (1, NUM_HEADS, QUERY_LEN, KEY_LEN)).astype(np.float32)),
    "mha": dict(num_kv_heads=NUM_HEADS, is_causal=True),
}


def _split(case):
  options = dict(case)
  shape = {name: options.pop(name) for name in ("num_kv_heads",)
           if name in options}
  return shape, options


def _both_paths(options):
  """Return `attend(implementation, query, key, value)` for path_parity."""

  def attend(implementation, query, key, value):
    if implementation == "chunked":
      return aj.chunked_attention(query, key, value, **options, **BLOCKS)
    return aj.dot_product_attention(query, key, value, **options,
                                    implementation="reference")

  return attend


def test_cases_use_packed_path():
  assert NUM_HEADS * BLOCKS["block_q"] <= PACKED_HEADS_MAX_ROWS
  plan = Plan(
      query_length=QUERY_LEN, key_length=KEY_LEN, num_kv_heads=3,
      group_size=2, scale=1.0, is_causal=False, window=None,
      logits_soft_cap=None, score_mod=None, mask_mod=None, has_bias=False,
      has_mask=False, has_query_lengths=False, has_key_lengths=False,
      has_segments=False, has_offset=False, **BLOCKS)
  assert plan.packs_heads
  # One key/value head has nothing to transpose. Many rows would make the
  # packed products do more arithmetic than the copies cost.
  assert not Plan(**{**plan.__dict__, "num_kv_heads": 1,
                     "group_size": NUM_HEADS}).packs_heads
  assert not Plan(**{**plan.__dict__, "block_q": 64}).packs_heads


@pytest.mark.parametrize("name", list(CASES))
def test_packed_forward_matches_oracle(name):
  shape, options = _split(CASES[name])
  query, key, value = _inputs(**shape)
  bias = options.pop("bias", None)
  allowed = oracle.attention_mask(
      query.shape[:-3], NUM_HEADS, QUERY_LEN, KEY_LEN, **options)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, bias=bias, allowed=allowed)

  out, lse = aj.chunked_attention(query, key, value, bias,
                                  return_residual=True, **options, **BLOCKS)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize(
    "hook_options",
    [dict(logits_soft_cap=2.0, score_mod=hooks.distance_penalty),
     dict(mask_mod=hooks.stripes, is_causal=True)],
    ids=["score-mod", "mask-mod"])
def test_packed_hooks_match_reference(hook_options):
  query, key, value = _inputs(5)
  expected = aj.dot_product_attention(query, key, value, **hook_options,
                                      implementation="reference")
  out = aj.chunked_attention(query, key, value, **hook_options, **BLOCKS)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


def test_packed_bfloat16_matches_oracle():
  query, key, value = _inputs(6, dtype=jnp.bfloat16)
  expected, _, _ = oracle.dot_product_attention(query, key, value)
  out = aj.chunked_attention(query, key, value, **BLOCKS)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), expected,
                             **tolerance(jnp.bfloat16))


def test_packed_gradients_match_reference():
  query, key, value = _inputs(7)
  options = dict(is_causal=True,
                 key_value_seq_lengths=np.array([30, 53], np.int32))

  path_parity.assert_paths_agree(_both_paths(options), (query, key, value),
                                 ("query", "key", "value"))


def test_packed_dropout_matches_reference():
  query, key, value = _inputs(15)
  options = dict(is_causal=True, dropout_rate=0.3,
                 dropout_rng=jax.random.key(16))

  out, _ = path_parity.assert_paths_agree(
      _both_paths(options), (query, key, value), ("query", "key", "value"))
  plain = aj.chunked_attention(query, key, value, is_causal=True, **BLOCKS)
  assert not np.allclose(out, plain)


@pytest.mark.parametrize("blocks", [BLOCKS, {}], ids=["key-blocks", "default"])
def test_hidden_non_finite_entries_inert(blocks):
  """A decoding step over a cache whose unused slots contain NaN and inf."""
  query, key, value = _inputs(8, query_len=1)
  lengths = np.array([30, 41], np.int32)
  options = dict(is_causal=True, query_offset=lengths - 1,
                 key_value_seq_lengths=lengths)
  poisoned_key = key.at[:, 45:].set(jnp.nan)
  poisoned_value = value.at[:, 45:].set(jnp.inf)

  clean = aj.chunked_attention(query, key, value, **options, **blocks)
  poisoned = aj.chunked_attention(query, poisoned_key, poisoned_value,
                                  **options, **blocks)

  assert np.isfinite(poisoned).all()
  np.testing.assert_allclose(poisoned, clean, rtol=1e-6)


def test_unreachable_values_are_inert():
  """Values of keys in an all-False column of a dense mask."""
  query, key, value = _inputs(9)
  mask = np.ones((BATCH, 1, QUERY_LEN, KEY_LEN), bool)
  mask[..., 10:20] = False
  poisoned_value = value.at[:, 10:20].set(jnp.nan)

  clean = aj.chunked_attention(query, key, value, mask=mask, **BLOCKS)
  poisoned = aj.chunked_attention(query, key, poisoned_value, mask=mask,
                                  **BLOCKS)

  assert np.isfinite(poisoned).all()
  np.testing.assert_allclose(poisoned, clean, rtol=1e-6)


def test_infinite_value_stays_in_head():
  """Only the head whose own value is infinite gets a non-finite output."""
  query, key, value = _inputs(10, query_len=1)
  value = value.at[:, 5, 0].set(jnp.inf)
  expected = aj.dot_product_attention(query, key, value,
                                      implementation="reference")
  out = aj.chunked_attention(query, key, value, **BLOCKS)

  # Query heads 0 and 1 share key/value head 0.
  assert not np.isfinite(out[..., :2, :]).all()
  assert np.isfinite(out[..., 2:, :]).all()
  np.testing.assert_allclose(out[..., 2:, :], expected[..., 2:, :],
                             **tolerance(np.float32))


def test_products_match_per_head_products():
  rng = np.random.default_rng(11)
  batch, heads, group, rows, keys = 2, 3, 2, 4, 9
  plan = Plan(
      query_length=rows, key_length=keys, num_kv_heads=heads,
      group_size=group, block_q=rows, block_k=keys, scale=1.0,
      is_causal=False, window=None, logits_soft_cap=None, score_mod=None,
      mask_mod=None, has_bias=False, has_mask=False, has_query_lengths=False,
      has_key_lengths=False, has_segments=False, has_offset=False)
  q_rows = jnp.asarray(rng.standard_normal((batch * heads, group * rows, 5)),
                       jnp.float32)
  k_block = jnp.asarray(rng.standard_normal((batch, keys, heads, 5)),
                        jnp.float32)
  weights = jnp.asarray(rng.random((batch * heads, group * rows, keys)),
                        jnp.float32)
  v_block = jnp.asarray(rng.standard_normal((batch, keys, heads, 7)),
                        jnp.float32)

  def per_head(x):
    return jnp.swapaxes(x, 1, 2).reshape(batch * heads, keys, -1)

  logits = _packed_heads.logits(plan, q_rows, k_block.reshape(batch, keys, -1))
  np.testing.assert_allclose(
      logits, jnp.einsum("xrh,xsh->xrs", q_rows, per_head(k_block)),
      rtol=1e-6, atol=1e-6)
  values = _packed_heads.weighted_values(plan, weights,
                                         v_block.reshape(batch, keys, -1))
  np.testing.assert_allclose(
      values, jnp.einsum("xrs,xsv->xrv", weights, per_head(v_block)),
      rtol=1e-6, atol=1e-6)
