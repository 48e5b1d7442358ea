"""Tests for the chunked forward pass that keeps one softmax shift per row.

Logits here are exact in float32 (small dyadic values), so that large
logits compare with the float64 oracle at the usual tolerance. A ramp along
the keys makes some logits rise above each row's shift by a chosen amount.
At about 40 the weights reach about exp(40) and the fixed-shift pass stays
in bounds. Above 88 they overflow and the exact pass must take over.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
from attention_jax import _chunked_forward
from test_chunked_defaults import prepare
from tolerances import tolerance

BATCH, LENGTH, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 2, 48, 4, 2, 4
# Query blocks of 16 rows and key blocks of 8: a causal diagonal splits.
BLOCKS = dict(block_q=16, block_k=8)


def _inputs(seed, *, rise=0.0, causal=False, value_scale=1.0,
            dtype=np.float32):
  """Return inputs whose logits rise by up to about `rise` above the shift.

  The first feature of every query is sqrt(H), so with the default scale
  1/sqrt(H) each logit is the key's first feature (a ramp) plus a sum of
  small dyadic products. Without a mask the shift comes from the first key
  block, so the ramp rises along the keys. A causal row's shift is its own
  logit and the keys it attends to come before it, so its ramp falls.
  """
  rng = np.random.default_rng(seed)
  query = rng.integers(-2, 3, (BATCH, LENGTH, NUM_HEADS, HEAD_DIM)) / 4
  key = rng.integers(-2, 3, (BATCH, LENGTH, NUM_KV_HEADS, HEAD_DIM)) / 4
  value = rng.standard_normal((BATCH, LENGTH, NUM_KV_HEADS, HEAD_DIM))
  query[..., 0] = np.sqrt(HEAD_DIM)
  ramp = np.round(rise * np.arange(LENGTH) / (LENGTH - 1))
  key[..., 0] = (ramp[::-1] if causal else ramp)[:, None]
  return (jnp.asarray(query, dtype), jnp.asarray(key, dtype),
          jnp.asarray(value * value_scale, dtype))


def _bounded(query, key, value, **options):
  """Return whether the fixed-shift pass kept every accumulator in bounds."""
  prepared = prepare(query, key, value, **options)
  assert _chunked_forward.fixed_shift_applies(prepared.plan, value.dtype)
  *_, bounded = _chunked_forward._pass(
      prepared.plan, True, prepared.query, prepared.key, prepared.value,
      prepared.bias, prepared.aux, prepared.params)
  return bool(bounded)


def _expected(query, key, value, causal):
  allowed = oracle.attention_mask((BATCH,), NUM_HEADS, LENGTH, LENGTH,
                                  is_causal=causal)
  out, _, lse = oracle.dot_product_attention(query, key, value,
                                             allowed=allowed)
  return out, lse


def _chunked(query, key, value, causal, **options):
  return jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=causal, return_residual=True, **BLOCKS,
      **options))(query, key, value)


@pytest.mark.parametrize("options, dtype, expected", [
    (dict(), np.float32, True),
    (dict(is_causal=True), np.float32, True),
    (dict(logits_soft_cap=5.0), np.float32, True),
    (dict(dropout_rate=0.2, dropout_rng=jax.random.key(0),
          deterministic=False), np.float32, True),
    (dict(), jnp.bfloat16, True),
    (dict(), jnp.float16, False),
    (dict(is_causal=True, block_q=8, block_k=16), np.float32, True),
    (dict(is_causal=True, block_q=10, block_k=16), np.float32, False),
    (dict(local_window_size=(8, 0)), np.float32, True),
    (dict(local_window_size=(6, 6)), np.float32, True),
    (dict(is_causal=True, local_window_size=(20, 0)), np.float32, True),
    (dict(is_causal=True, local_window_size=(8, 0)), np.float32, True),
    (dict(local_window_size=(6, 6), block_q=32), np.float32, False),
    (dict(local_window_size=(6, 6),
          key_value_seq_lengths=jnp.array([40, 48])), np.float32, False),
    (dict(key_value_seq_lengths=jnp.array([40, 48])), np.float32, False),
    (dict(score_mod=lambda score, *indices: score), np.float32, False),
    (dict(block_k=10), np.float32, True),
], ids=["plain", "causal", "soft-cap", "dropout", "bfloat16", "float16",
        "causal-unsplit", "causal-padded-queries", "window", "symmetric-window", "causal-window",
        "narrow-causal-window", "window-padded-queries", "window-key-lengths",
        "key-lengths", "score-mod", "ragged-key-blocks"])
def test_fixed_shift_applies(options, dtype, expected):
  query, key, value = _inputs(0, dtype=dtype)
  options = {**BLOCKS, **options}
  plan = prepare(query, key, value, **options).plan

  assert _chunked_forward.fixed_shift_applies(plan, value.dtype) == expected


def test_fixed_shift_skips_bias():
  # A bias of -inf could hide a row's whole first tile.
  query, key, value = _inputs(0)
  bias = jnp.zeros((BATCH, NUM_HEADS, LENGTH, LENGTH))
  plan = prepare(query, key, value, bias=bias, **BLOCKS).plan

  assert not _chunked_forward.fixed_shift_applies(plan, value.dtype)


CASES = {
    # name: (input options, whether the fixed-shift pass stays in bounds)
    "flat": (dict(), True),
    "rising": (dict(rise=40.0), True),
    "overflowing": (dict(rise=200.0), False),
    # Weights up to exp(34) times values of 1e30 overflow the accumulator.
    "large-values": (dict(rise=40.0, value_scale=1e30), False),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_oracle(name, causal):
  options, bounded = CASES[name]
  query, key, value = _inputs(1, causal=causal, **options)
  assert _bounded(query, key, value, is_causal=causal, **BLOCKS) == bounded
  expected, expected_lse = _expected(query, key, value, causal)

  out, lse = _chunked(query, key, value, causal)

  scale = options.get("value_scale", 1.0)
  np.testing.assert_allclose(np.asarray(out) / scale, expected / scale,
                             **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_ragged_key_blocks_match_oracle(name):
  # Key blocks of 10 over 48 keys: the last block starts at key 38 and
  # masks the 2 keys that the block before it counted.
  options, bounded = CASES[name]
  query, key, value = _inputs(4, **options)
  blocks = dict(block_q=16, block_k=10)
  assert prepare(query, key, value, **blocks).plan.needs_bounds
  assert _bounded(query, key, value, **blocks) == bounded
  expected, expected_lse = _expected(query, key, value, False)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, return_residual=True, **blocks))(query, key, value)

  scale = options.get("value_scale", 1.0)
  np.testing.assert_allclose(np.asarray(out) / scale, expected / scale,
                             **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_window_forward_matches_oracle(name):
  # Causal rows see the 20 keys before them, so the falling ramp rises
  # above each row's own logit by up to 20 / 47 of `rise`.
  options, bounded = CASES[name]
  window = (20, 0)
  query, key, value = _inputs(2, causal=True, **options)
  assert _bounded(query, key, value, is_causal=True, local_window_size=window,
                  **BLOCKS) == bounded
  allowed = oracle.attention_mask((BATCH,), NUM_HEADS, LENGTH, LENGTH,
                                  is_causal=True, local_window_size=window)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = _chunked(query, key, value, True, local_window_size=window)

  scale = options.get("value_scale", 1.0)
  np.testing.assert_allclose(np.asarray(out) / scale, expected / scale,
                             **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("window, causal, rise, bounded", [
    ((6, 6), False, 0.0, True),
    ((6, 6), False, 40.0, True),
    ((6, 6), False, 2000.0, False),
    ((5, 0), True, 40.0, True),
    ((5, 0), True, 2000.0, False),
], ids=["symmetric-flat", "symmetric-rising", "symmetric-overflowing",
        "narrow-causal-rising", "narrow-causal-overflowing"])
def test_own_logit_window_matches_oracle(window, causal, rise, bounded):
  # Without the causal split, a window still shows each row its own key,
  # whose logit is the row's shift. Within 6 keys the ramp rises by about
  # 6 / 47 of `rise`, so only a rise of 2000 overflows.
  query, key, value = _inputs(3, rise=rise, causal=causal)
  options = dict(is_causal=causal, local_window_size=window)
  plan = prepare(query, key, value, **options, **BLOCKS).plan
  assert not plan.split_diagonal
  assert _bounded(query, key, value, **options, **BLOCKS) == bounded
  allowed = oracle.attention_mask((BATCH,), NUM_HEADS, LENGTH, LENGTH,
                                  is_causal=causal, local_window_size=window)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  out, lse = _chunked(query, key, value, causal, local_window_size=window)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_causal_unsplit_matches_oracle(name):
  # Query blocks of 8 and key blocks of 16 cannot split the diagonal, so
  # masked tiles shift each row by its own logit.
  options, bounded = CASES[name]
  blocks = dict(block_q=8, block_k=16)
  query, key, value = _inputs(5, causal=True, **options)
  plan = prepare(query, key, value, is_causal=True, **blocks).plan
  assert not plan.split_diagonal
  assert _bounded(query, key, value, is_causal=True, **blocks) == bounded
  expected, expected_lse = _expected(query, key, value, True)

  out, lse = jax.jit(lambda q, k, v: aj.chunked_attention(
      q, k, v, is_causal=True, return_residual=True, **blocks))(
          query, key, value)

  scale = options.get("value_scale", 1.0)
  np.testing.assert_allclose(np.asarray(out) / scale, expected / scale,
                             **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rising_logits_in_bfloat16(causal):
  query, key, value = _inputs(2, rise=40.0, causal=causal,
                              dtype=jnp.bfloat16)
  assert _bounded(query, key, value, is_causal=causal, **BLOCKS)
  expected, _ = _expected(query, key, value, causal)

  out, _ = _chunked(query, key, value, causal)

  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             **tolerance(jnp.bfloat16))


def test_causal_soft_cap_matches_reference():
  # The causal shift is each row's own logit, soft-capped as the tiles are.
  query, key, value = _inputs(8, rise=40.0, causal=True)
  options = dict(is_causal=True, logits_soft_cap=30.0)
  assert _bounded(query, key, value, **options, **BLOCKS)
  expected = aj.dot_product_attention(query, key, value,
                                      implementation="reference", **options)

  out = aj.chunked_attention(query, key, value, **options, **BLOCKS)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize("rise", [40.0, 200.0], ids=["rising", "overflowing"])
def test_gradients_match_reference(rise):
  query, key, value = _inputs(3, rise=rise)
  cotangent = jax.random.normal(jax.random.key(4), query.shape)

  def gradients(attention):
    loss = lambda *inputs: jnp.sum(attention(*inputs) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(query, key, value)

  grads = gradients(lambda q, k, v: aj.chunked_attention(q, k, v, **BLOCKS))
  expected = gradients(lambda q, k, v: aj.dot_product_attention(
      q, k, v, implementation="reference"))

  # A logit of size L carries a float32 rounding error of about L * 6e-8,
  # on both paths, so the tolerance grows with the rise.
  limits = {name: value * rise / 8
            for name, value in tolerance(np.float32).items()}
  for grad, want in zip(grads, expected):
    np.testing.assert_allclose(grad, want, **limits)


def test_vmap_with_one_overflowing_sequence():
  # Under vmap the exact pass runs for the whole batch once any sequence
  # needs it. The other sequences must keep their results.
  _, flat, _ = _inputs(5)
  _, steep, _ = _inputs(5, rise=200.0)
  query, value = _inputs(6)[0], _inputs(6)[2]
  key = jnp.stack([flat[0], steep[1]])
  expected, expected_lse = _expected(query, key, value, False)

  out, lse = jax.jit(jax.vmap(lambda q, k, v: aj.chunked_attention(
      q, k, v, return_residual=True, **BLOCKS)))(query, key, value)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_nan_query_row_stays_in_its_row(causal):
  query, key, value = _inputs(7, rise=40.0, causal=causal)
  query = query.at[1, 20, 3].set(jnp.nan)
  expected, _ = _expected(query, key, value, causal)

  out, _ = _chunked(query, key, value, causal)

  out = np.array(out)
  assert np.isnan(out[1, 20, 3]).all()
  # The oracle counts NaN logits as masked, so it has no NaN to compare.
  out[1, 20, 3] = expected[1, 20, 3]
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
