"""Tests for the Flax modules (NNX and their Linen twins)."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax import nn as ajnn
from attention_jax.nn import linen as ajlinen

BATCH, QUERY_LEN, KEY_LEN = 2, 7, 11
FEATURES, KV_FEATURES, NUM_HEADS = 12, 10, 6
TOLERANCE = dict(rtol=2e-5, atol=2e-6)


def _inputs(seed=0, query_len=QUERY_LEN, key_len=KEY_LEN):
  keys = jax.random.split(jax.random.key(seed), 2)
  inputs_q = jax.random.normal(keys[0], (BATCH, query_len, FEATURES))
  inputs_kv = jax.random.normal(keys[1], (BATCH, key_len, KV_FEATURES))
  return inputs_q, inputs_kv


def _copy_params(source: nnx.Module, target: nnx.Module) -> None:
  nnx.update(target, nnx.state(source, nnx.Param))


@pytest.mark.parametrize("num_kv_heads", [None, 3, 1], ids=["mha", "gqa", "mqa"])
def test_mha_matches_flax_nnx(num_kv_heads):
  inputs_q, inputs_kv = _inputs()
  ours = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, 18, 5, num_kv_heads=num_kv_heads,
      in_kv_features=KV_FEATURES, rngs=nnx.Rngs(1))
  theirs = nnx.MultiHeadAttention(
      NUM_HEADS, FEATURES, 18, 5, num_kv_heads=num_kv_heads,
      in_kv_features=KV_FEATURES, decode=False, rngs=nnx.Rngs(2))
  _copy_params(ours, theirs)
  mask = jax.random.bernoulli(
      jax.random.key(3), 0.7, (BATCH, 1, QUERY_LEN, KEY_LEN))
  mask = mask.at[..., 0].set(True)  # flax averages fully masked rows

  np.testing.assert_allclose(
      ours(inputs_q, inputs_kv, mask=mask),
      theirs(inputs_q, inputs_kv, mask=mask), **TOLERANCE)


def test_mha_causal_matches_flax_nnx():
  inputs_q, _ = _inputs()
  ours = ajnn.MultiHeadAttention(NUM_HEADS, FEATURES, rngs=nnx.Rngs(1))
  theirs = nnx.MultiHeadAttention(
      NUM_HEADS, FEATURES, decode=False, rngs=nnx.Rngs(2))
  _copy_params(ours, theirs)
  causal = nnx.make_causal_mask(jnp.ones((BATCH, QUERY_LEN)))

  np.testing.assert_allclose(
      ours(inputs_q, is_causal=True), theirs(inputs_q, mask=causal),
      **TOLERANCE)


def test_linen_mha_matches_flax_linen():
  inputs_q, inputs_kv = _inputs()
  ours = ajlinen.MultiHeadAttention(num_heads=NUM_HEADS, qkv_features=18)
  theirs = linen.MultiHeadDotProductAttention(
      num_heads=NUM_HEADS, qkv_features=18)
  params = ours.init(jax.random.key(0), inputs_q, inputs_kv)

  np.testing.assert_allclose(
      ours.apply(params, inputs_q, inputs_kv),
      theirs.apply(params, inputs_q, inputs_kv), **TOLERANCE)


def test_linen_mha_matches_nnx_twin():
  inputs_q, inputs_kv = _inputs()
  nnx_module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, 18, num_kv_heads=2, in_kv_features=KV_FEATURES,
      rngs=nnx.Rngs(0))
  linen_module = ajlinen.MultiHeadAttention(
      num_heads=NUM_HEADS, qkv_features=18, out_features=FEATURES,
      num_kv_heads=2)
  params = nnx.to_pure_dict(nnx.state(nnx_module, nnx.Param))

  np.testing.assert_allclose(
      linen_module.apply({"params": params}, inputs_q, inputs_kv,
                         is_causal=True),
      nnx_module(inputs_q, inputs_kv, is_causal=True), **TOLERANCE)


def test_mha_heads_equal_core_function():
  inputs_q, inputs_kv = _inputs()
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, num_kv_heads=3, in_kv_features=KV_FEATURES,
      rngs=nnx.Rngs(0))
  lengths = jnp.array([4, 11])
  query = module.query(inputs_q)
  key = module.key(inputs_kv)
  value = module.value(inputs_kv)
  heads = aj.dot_product_attention(
      query, key, value, key_value_seq_lengths=lengths,
      local_window_size=(3, 1))

  np.testing.assert_allclose(
      module(inputs_q, inputs_kv, key_value_seq_lengths=lengths,
             local_window_size=(3, 1)),
      module.out(heads), **TOLERANCE)


@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_mha_scale_reaches_core_function(scale):
  inputs_q, inputs_kv = _inputs()
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, num_kv_heads=3, in_kv_features=KV_FEATURES,
      scale=scale, rngs=nnx.Rngs(0))
  heads = jax.nn.dot_product_attention(
      module.query(inputs_q), module.key(inputs_kv), module.value(inputs_kv),
      scale=scale)
  expected = module.out(heads)

  np.testing.assert_allclose(module(inputs_q, inputs_kv), expected,
                             **TOLERANCE)
  linen_module = ajlinen.MultiHeadAttention(
      num_heads=NUM_HEADS, num_kv_heads=3, scale=scale)
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  np.testing.assert_allclose(
      linen_module.apply({"params": params}, inputs_q, inputs_kv),
      expected, **TOLERANCE)


def test_mha_scale_applies_to_cached_decoding():
  inputs_q, _ = _inputs()
  module = ajnn.MultiHeadAttention(NUM_HEADS, FEATURES, scale=1.0,
                                   rngs=nnx.Rngs(0))
  full = module(inputs_q, is_causal=True)
  cache = module.init_cache((BATCH,), QUERY_LEN)
  steps = []
  for t in range(QUERY_LEN):
    out, cache = module(inputs_q[:, t:t + 1], cache=cache)
    steps.append(out)

  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full,
                             **TOLERANCE)


def test_mha_returns_and_sows_weights():
  inputs_q, inputs_kv = _inputs()
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, in_kv_features=KV_FEATURES, rngs=nnx.Rngs(0))
  out, weights = module(inputs_q, inputs_kv, return_weights=True)
  forward = nnx.capture(module, nnx.Intermediate)
  sown_out, intermediates = forward(inputs_q, inputs_kv, sow_weights=True)
  sown = intermediates["attention_weights"]

  assert weights.shape == (BATCH, NUM_HEADS, QUERY_LEN, KEY_LEN)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(sown_out, out, **TOLERANCE)
  np.testing.assert_allclose(sown[0], weights, **TOLERANCE)


def test_self_attention_equals_mha_on_one_input():
  inputs_q, _ = _inputs()
  self_attention = ajnn.SelfAttention(NUM_HEADS, FEATURES, rngs=nnx.Rngs(0))
  multi_head = ajnn.MultiHeadAttention(NUM_HEADS, FEATURES, rngs=nnx.Rngs(5))
  _copy_params(self_attention, multi_head)

  np.testing.assert_allclose(
      self_attention(inputs_q, is_causal=True),
      multi_head(inputs_q, inputs_q, inputs_q, is_causal=True), **TOLERANCE)


def test_dropout_needs_deterministic_flag():
  inputs_q, _ = _inputs()
  module = ajnn.SelfAttention(
      NUM_HEADS, FEATURES, dropout_rate=0.3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="deterministic"):
    module(inputs_q)


def test_dropout_off_when_deterministic():
  inputs_q, _ = _inputs()
  module = ajnn.SelfAttention(
      NUM_HEADS, FEATURES, dropout_rate=0.3, rngs=nnx.Rngs(0))
  plain = ajnn.SelfAttention(NUM_HEADS, FEATURES, rngs=nnx.Rngs(7))
  _copy_params(module, plain)

  np.testing.assert_allclose(
      module(inputs_q, deterministic=True), plain(inputs_q), **TOLERANCE)


def test_dropout_changes_output_in_training():
  inputs_q, _ = _inputs()
  module = ajnn.SelfAttention(
      NUM_HEADS, FEATURES, dropout_rate=0.3, deterministic=False,
      rngs=nnx.Rngs(0))
  first = module(inputs_q)
  second = module(inputs_q)
  reference = module(inputs_q, deterministic=True)

  assert not np.allclose(first, reference)
  assert not np.allclose(first, second)


def test_linen_dropout_uses_dropout_stream():
  inputs_q, _ = _inputs()
  module = ajlinen.SelfAttention(num_heads=NUM_HEADS, dropout_rate=0.3)
  params = module.init(jax.random.key(0), inputs_q, deterministic=True)
  train = module.apply(params, inputs_q, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  again = module.apply(params, inputs_q, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  inference = module.apply(params, inputs_q, deterministic=True)

  np.testing.assert_array_equal(train, again)
  assert not np.allclose(train, inference)


def test_additive_module_equals_function():
  inputs_q, inputs_kv = _inputs()
  module = ajnn.AdditiveAttention(FEATURES, KV_FEATURES, 9, rngs=nnx.Rngs(0))
  mask = jnp.tril(jnp.ones((QUERY_LEN, KEY_LEN), bool))
  out, weights = module(inputs_q, inputs_kv, mask=mask, return_weights=True)
  expected = aj.additive_attention(
      inputs_q[..., None, :], inputs_kv[..., None, :], inputs_kv[..., None, :],
      module.query_kernel[...], module.key_kernel[...],
      module.score_vector[...], mask=mask)

  assert weights.shape == (BATCH, QUERY_LEN, KEY_LEN)
  np.testing.assert_allclose(out, expected[..., 0, :], **TOLERANCE)
  np.testing.assert_array_equal(np.asarray(weights)[..., ~np.asarray(mask)], 0)


def test_additive_linen_matches_nnx():
  inputs_q, inputs_kv = _inputs()
  nnx_module = ajnn.AdditiveAttention(
      FEATURES, KV_FEATURES, 9, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(nnx_module, nnx.Param))
  linen_module = ajlinen.AdditiveAttention(hidden_features=9)

  np.testing.assert_allclose(
      linen_module.apply({"params": params}, inputs_q, inputs_kv),
      nnx_module(inputs_q, inputs_kv), **TOLERANCE)


def test_basic_module_pools_with_mask():
  inputs_q, _ = _inputs()
  module = ajnn.BasicAttention(FEATURES, 8, rngs=nnx.Rngs(0))
  mask = jnp.arange(QUERY_LEN) < jnp.array([[3], [0]])
  pooled, weights = module(inputs_q, mask=mask, return_weights=True)

  assert pooled.shape == (BATCH, FEATURES)
  np.testing.assert_allclose(weights[0].sum(), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(weights[0, 3:], 0)
  np.testing.assert_array_equal(pooled[1], 0)


def test_basic_linen_matches_nnx():
  inputs_q, _ = _inputs()
  nnx_module = ajnn.BasicAttention(FEATURES, 8, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(nnx_module, nnx.Param))
  linen_module = ajlinen.BasicAttention(hidden_features=8)

  np.testing.assert_allclose(
      linen_module.apply({"params": params}, inputs_q), nnx_module(inputs_q),
      **TOLERANCE)


def test_mha_jit_and_grad_with_masked_rows():
  inputs_q, inputs_kv = _inputs()
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, in_kv_features=KV_FEATURES, rngs=nnx.Rngs(0))
  lengths = jnp.array([0, 5])  # the first example has no visible key

  @nnx.jit
  def loss_and_grad(module):
    def loss(module):
      out = module(inputs_q, inputs_kv, key_value_seq_lengths=lengths)
      return jnp.sum(out ** 2)
    return nnx.value_and_grad(loss)(module)

  loss, grads = loss_and_grad(module)
  leaves = jax.tree.leaves(grads)

  assert np.isfinite(loss)
  assert all(np.isfinite(leaf).all() for leaf in leaves)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ajnn.MultiHeadAttention(5, 12, rngs=nnx.Rngs(0)),
         r"`qkv_features` \(12\) should be divisible by `num_heads` \(5\)"),
        (lambda: ajnn.MultiHeadAttention(
            6, 12, num_kv_heads=4, rngs=nnx.Rngs(0)),
         r"`num_kv_heads` should divide `num_heads` \(6\), but got 4"),
        (lambda: ajnn.MultiHeadAttention(
            6, 12, dropout_rate=1.5, rngs=nnx.Rngs(0)),
         r"`dropout_rate` should be in \[0, 1\), but got 1.5"),
    ],
    ids=["heads-not-dividing", "kv-heads-not-dividing", "dropout-rate"],
)
def test_mha_constructor_errors(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_mha_wrong_feature_size_error():
  module = ajnn.MultiHeadAttention(NUM_HEADS, FEATURES, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"`inputs_q` should have shape "
                     r"\[B..., L, 12\] \(features last\), but got \(2, 7, 5\)"):
    module(jnp.ones((BATCH, QUERY_LEN, 5)))
