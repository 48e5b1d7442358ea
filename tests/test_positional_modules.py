"""Tests for the positional modules and `MultiHeadAttention(position=...)`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax as aj
from attention_jax import nn as ajnn
from attention_jax.nn import linen as ajlinen
from attention_jax.nn import linen_positional

BATCH, QUERY_LEN, KEY_LEN = 2, 7, 11
FEATURES, QKV_FEATURES, NUM_HEADS, NUM_KV_HEADS = 12, 24, 6, 3
HEAD_DIM = QKV_FEATURES // NUM_HEADS
TOLERANCE = dict(rtol=2e-5, atol=2e-6)


def _inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 2)
  return (jax.random.normal(keys[0], (BATCH, QUERY_LEN, FEATURES)),
          jax.random.normal(keys[1], (BATCH, KEY_LEN, FEATURES)))


def _rope(query, key, module):
  del module
  query_positions = jnp.arange(QUERY_LEN) + (KEY_LEN - QUERY_LEN)
  return dict(query=aj.apply_rope(query, query_positions, rotary_dim=2),
              key=aj.apply_rope(key, jnp.arange(KEY_LEN), rotary_dim=2))


def _alibi(query, key, module):
  del module
  return dict(query=query, key=key, bias=aj.alibi_bias(
      aj.alibi_slopes(NUM_HEADS), QUERY_LEN, KEY_LEN))


def _t5(query, key, module):
  bias = aj.t5_relative_bias(module.table[...], QUERY_LEN, KEY_LEN,
                             bidirectional=False, max_distance=6)
  return dict(query=query, key=key, bias=bias)


# name: (NNX module factory, Linen twin, functional composition, params)
OPTIONS = {
    "rope": (lambda: ajnn.RotaryEmbedding(rotary_dim=2, pairing="half"),
             lambda: linen_positional.RotaryEmbedding(rotary_dim=2),
             _rope, ()),
    "alibi": (lambda: ajnn.ALiBi(NUM_HEADS), linen_positional.ALiBi,
              _alibi, ()),
    "t5": (lambda: ajnn.T5RelativeBias(
        NUM_HEADS, num_buckets=8, max_distance=6, bidirectional=False,
        rngs=nnx.Rngs(3)),
           lambda: linen_positional.T5RelativeBias(
               num_buckets=8, max_distance=6, bidirectional=False),
           _t5, ("table",)),
    "shaw": (lambda: ajnn.ShawRelativePositions(
        HEAD_DIM, 3, table_init=nnx.initializers.normal(1.0),
        rngs=nnx.Rngs(4)),
             lambda: linen_positional.ShawRelativePositions(3),
             None, ("relative_keys", "relative_values")),
    "sinks": (lambda: ajnn.AttentionSinks(
        NUM_HEADS, sink_init=nnx.initializers.normal(1.0),
        rngs=nnx.Rngs(5)),
              linen_positional.AttentionSinks, None, ("sinks",)),
}


def _functional_heads(name, module, query, key, value):
  """Compute the attention heads of `module.position` from the core."""
  position = module.position
  if name == "shaw":
    return aj.shaw_attention(
        query, key, value, position.relative_keys[...],
        position.relative_values[...], is_causal=True)
  if name == "sinks":
    return aj.sink_attention(query, key, value, position.sinks[...],
                             is_causal=True)
  terms = OPTIONS[name][2](query, key, position)
  return aj.dot_product_attention(terms["query"], terms["key"], value,
                                  terms.get("bias"), is_causal=True)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_mha_position_matches_functional_and_linen(name):
  inputs_q, inputs_kv = _inputs()
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, QKV_FEATURES, num_kv_heads=NUM_KV_HEADS,
      position=OPTIONS[name][0](), rngs=nnx.Rngs(1))
  linen_module = ajlinen.MultiHeadAttention(
      num_heads=NUM_HEADS, qkv_features=QKV_FEATURES,
      num_kv_heads=NUM_KV_HEADS, position=OPTIONS[name][1]())
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))

  @nnx.jit
  def run(module, params):
    def loss(module):
      out = module(inputs_q, inputs_kv, is_causal=True)
      return jnp.sum(jnp.sin(out)), out

    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(module)
    heads = _functional_heads(
        name, module, module.query(inputs_q), module.key(inputs_kv),
        module.value(inputs_kv))
    linen_out = linen_module.apply({"params": params}, inputs_q, inputs_kv,
                                   is_causal=True)
    return out, grads, module.out(heads), linen_out

  out, grads, functional, linen_out = run(module, params)

  assert out.shape == (BATCH, QUERY_LEN, FEATURES)
  np.testing.assert_allclose(out, functional, **TOLERANCE)
  np.testing.assert_allclose(linen_out, out, **TOLERANCE)
  for param in OPTIONS[name][3]:
    grad = np.asarray(getattr(grads.position, param)[...])
    assert np.all(np.isfinite(grad)), param
    assert np.any(grad != 0.0), f"{param} received no gradient"


def test_linen_position_params_have_nnx_shapes():
  inputs_q, inputs_kv = _inputs(2)
  for name, (nnx_factory, linen_factory, _, param_names) in OPTIONS.items():
    linen_module = ajlinen.MultiHeadAttention(
        num_heads=NUM_HEADS, qkv_features=QKV_FEATURES,
        num_kv_heads=NUM_KV_HEADS, position=linen_factory())
    shapes = jax.eval_shape(linen_module.init, jax.random.key(0), inputs_q,
                            inputs_kv)["params"]
    position = nnx_factory()
    for param in param_names:
      expected = getattr(position, param).shape
      assert shapes["position"][param].shape == expected, (name, param)


def test_mha_default_positions_are_bottom_right():
  inputs_q, inputs_kv = _inputs(3)
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, position=ajnn.T5RelativeBias(
          NUM_HEADS, num_buckets=8, max_distance=6, rngs=nnx.Rngs(6)),
      rngs=nnx.Rngs(7))

  @nnx.jit
  def run(module):
    default = module(inputs_q, inputs_kv)
    explicit = module(
        inputs_q, inputs_kv,
        query_positions=jnp.arange(QUERY_LEN) + (KEY_LEN - QUERY_LEN),
        key_positions=jnp.arange(KEY_LEN))
    shifted = module(inputs_q, inputs_kv,
                     query_positions=jnp.arange(QUERY_LEN),
                     key_positions=jnp.arange(KEY_LEN))
    return default, explicit, shifted

  default, explicit, shifted = run(module)

  np.testing.assert_allclose(explicit, default, **TOLERANCE)
  assert not np.allclose(shifted, default, atol=1e-4)


def test_mha_packed_positions_match_functional():
  inputs_q, _ = _inputs(4)
  module = ajnn.SelfAttention(
      NUM_HEADS, FEATURES,
      position=ajnn.RotaryEmbedding(pairing="interleaved"), rngs=nnx.Rngs(8))
  # Two packed sequences of 4 and 3 tokens.
  positions = jnp.array([[0, 1, 2, 3, 0, 1, 2]] * BATCH)
  segments = jnp.array([[0, 0, 0, 0, 1, 1, 1]] * BATCH)

  @nnx.jit
  def run(module):
    out = module(inputs_q, is_causal=True, query_segment_ids=segments,
                 key_segment_ids=segments, query_positions=positions,
                 key_positions=positions)
    rotate = lambda x: aj.apply_rope(x, positions, pairing="interleaved")
    heads = aj.dot_product_attention(
        rotate(module.query(inputs_q)), rotate(module.key(inputs_q)),
        module.value(inputs_q), is_causal=True, query_segment_ids=segments,
        key_segment_ids=segments)
    return out, module.out(heads)

  out, functional = run(module)

  np.testing.assert_allclose(out, functional, **TOLERANCE)


def test_mha_sinks_return_weights():
  inputs_q, inputs_kv = _inputs(5)
  module = ajnn.MultiHeadAttention(
      NUM_HEADS, FEATURES, position=ajnn.AttentionSinks(
          NUM_HEADS, rngs=nnx.Rngs(9)), rngs=nnx.Rngs(10))

  _, weights = nnx.jit(lambda module: module(
      inputs_q, inputs_kv, return_weights=True))(module)

  # Zero-initialized sinks take exp(0) / (exp(lse) + exp(0)) of each row.
  assert weights.shape == (BATCH, NUM_HEADS, QUERY_LEN, KEY_LEN)
  assert np.all(np.asarray(weights).sum(-1) < 1.0)


@pytest.mark.parametrize(
    "build, call, message",
    [
        (lambda: ajnn.MultiHeadAttention(NUM_HEADS, FEATURES,
                                         rngs=nnx.Rngs(0)),
         dict(query_positions=jnp.arange(QUERY_LEN),
              key_positions=jnp.arange(KEY_LEN)),
         r"`query_positions` and `key_positions` drive a positional "
         r"module; pass `position=` to the constructor"),
        (lambda: ajnn.MultiHeadAttention(
            NUM_HEADS, FEATURES, position=ajnn.RotaryEmbedding(),
            rngs=nnx.Rngs(0)),
         dict(query_positions=jnp.arange(QUERY_LEN)),
         r"`query_positions` and `key_positions` should be given together"),
        (lambda: ajnn.MultiHeadAttention(
            NUM_HEADS, FEATURES, position=ajnn.ALiBi(4), rngs=nnx.Rngs(0)),
         dict(),
         r"ALiBi was built for N=4 query heads, but the query has shape "
         r"\(2, 7, 6, 2\)"),
    ],
    ids=["positions-without-module", "one-position-array", "heads-mismatch"])
def test_mha_position_errors(build, call, message):
  inputs_q, inputs_kv = _inputs(6)
  module = build()
  with pytest.raises(ValueError, match=message):
    module(inputs_q, inputs_kv, **call)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ajnn.RotaryEmbedding(pairing="neox"),
         r"`pairing` should be one of \('half', 'interleaved'\)"),
        (lambda: ajnn.ALiBi(0),
         r"`num_heads` should be a positive integer, but got 0"),
        (lambda: ajnn.T5RelativeBias(6, num_buckets=2, rngs=nnx.Rngs(0)),
         r"`num_buckets` should be at least 4 with bidirectional=True"),
        (lambda: ajnn.ShawRelativePositions(4, 0, rngs=nnx.Rngs(0)),
         r"`max_distance` should be at least 1, but got 0"),
        (lambda: ajnn.ShawRelativePositions(
            4, 2, use_keys=False, use_values=False, rngs=nnx.Rngs(0)),
         r"at least one of `use_keys` and `use_values` should be True"),
    ],
    ids=["rope-pairing", "alibi-heads", "t5-buckets", "shaw-distance",
         "shaw-no-table"])
def test_positional_constructor_errors(build, message):
  with pytest.raises(ValueError, match=message):
    build()
