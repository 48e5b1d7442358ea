"""Sharding rules: batch over "data", heads over "model".

Module sizes: B = 4, T = 9, in_features D = 11, N = 6 query heads of
H = 5, K = 2 key/value heads, out_features 13; the mesh is 4 x 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import attention_jax as aj
from attention_jax import chunked
from attention_jax.distributed import activation_spec
from attention_jax.distributed import parameter_specs
from attention_jax.distributed import shard_activations
from attention_jax.distributed import shard_module
from attention_jax.nn import MultiHeadAttention
from attention_jax.nn import linen as attention_linen
from tolerances import tolerance

BATCH, LENGTH, FEATURES, OUT = 4, 9, 11, 13
NUM_HEADS, KV_HEADS, HEAD_DIM = 6, 2, 5
SHARDED_HEADS = PartitionSpec(None, "model", None)
SHARDED_BIAS = PartitionSpec("model", None)
REPLICATED = PartitionSpec()


def data_model_mesh(axis_types=(AxisType.Auto,) * 2):
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=axis_types)


def attention_module(num_kv_heads: int = KV_HEADS, seed: int = 0):
  return MultiHeadAttention(
      NUM_HEADS, FEATURES, NUM_HEADS * HEAD_DIM, OUT,
      num_kv_heads=num_kv_heads, rngs=nnx.Rngs(seed))


def spec_values(specs) -> dict[str, PartitionSpec]:
  """Flatten an `nnx.State` of specs to {"query/kernel": spec}."""
  flat = {}
  for path, variable in nnx.to_flat_state(specs):
    flat["/".join(map(str, path))] = variable.get_value()
  return flat


def test_parameter_specs_shard_heads():
  specs = spec_values(parameter_specs(attention_module(),
                                      mesh=data_model_mesh()))

  assert specs == {
      "query/kernel": SHARDED_HEADS, "query/bias": SHARDED_BIAS,
      "key/kernel": SHARDED_HEADS, "key/bias": SHARDED_BIAS,
      "value/kernel": SHARDED_HEADS, "value/bias": SHARDED_BIAS,
      "out/kernel": PartitionSpec("model", None, None),
      "out/bias": REPLICATED,
  }


def test_single_kv_head_stays_replicated():
  specs = spec_values(parameter_specs(attention_module(num_kv_heads=1),
                                      mesh=data_model_mesh()))

  assert specs["query/kernel"] == SHARDED_HEADS
  assert specs["key/kernel"] == REPLICATED
  assert specs["value/bias"] == REPLICATED


class Block(nnx.Module):
  """An attention layer next to a projection that only shares its name."""

  def __init__(self, rngs: nnx.Rngs):
    self.attention = MultiHeadAttention(NUM_HEADS, FEATURES,
                                        NUM_HEADS * HEAD_DIM, rngs=rngs)
    self.query = nnx.LinearGeneral(FEATURES, (NUM_HEADS, 3), rngs=rngs)


def test_module_rules_apply_only_to_attention():
  block = Block(nnx.Rngs(1))
  from_module = spec_values(parameter_specs(block))
  from_state = spec_values(parameter_specs(nnx.state(block)))

  assert from_module["attention/query/kernel"] == SHARDED_HEADS
  assert from_module["query/kernel"] == REPLICATED
  # A bare state has no module types, so the name rule matches both.
  assert from_state["query/kernel"] == SHARDED_HEADS


def test_linen_parameters_follow_the_same_rules():
  module = attention_linen.MultiHeadAttention(
      num_heads=NUM_HEADS, qkv_features=NUM_HEADS * HEAD_DIM,
      num_kv_heads=KV_HEADS)
  params = module.init(jax.random.key(0), jnp.zeros((1, 3, FEATURES)))
  specs = parameter_specs(params)

  assert specs["params"]["key"]["kernel"] == SHARDED_HEADS
  assert specs["params"]["query"]["bias"] == SHARDED_BIAS
  assert specs["params"]["out"]["kernel"] == PartitionSpec("model", None,
                                                           None)


def test_sharded_module_matches_unsharded():
  mesh = data_model_mesh()
  sharded, unsharded = attention_module(seed=3), attention_module(seed=3)
  shard_module(sharded, mesh)
  rng = np.random.default_rng(4)
  inputs = rng.standard_normal((BATCH, LENGTH, FEATURES)).astype(np.float32)
  cotangent = rng.standard_normal((BATCH, LENGTH, OUT)).astype(np.float32)
  lengths = np.array([9, 0, 4, 7], np.int32)

  def loss_and_output(module, inputs):
    graphdef, state = nnx.split(module)

    def loss(state, inputs):
      out = nnx.merge(graphdef, state)(
          inputs, is_causal=True, key_value_seq_lengths=lengths)
      return jnp.sum(out * cotangent), out

    function = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    return function(state, inputs)

  (_, out), (d_state, d_inputs) = loss_and_output(
      sharded, shard_activations(inputs, mesh))
  (_, ref_out), (ref_d_state, ref_d_inputs) = loss_and_output(unsharded,
                                                              inputs)

  np.testing.assert_allclose(out, ref_out, **tolerance(np.float32))
  np.testing.assert_allclose(d_inputs, ref_d_inputs, **tolerance(np.float32))
  for (path, grad), (_, ref_grad) in zip(nnx.to_flat_state(d_state),
                                         nnx.to_flat_state(ref_d_state)):
    np.testing.assert_allclose(grad.get_value(), ref_grad.get_value(),
                               **tolerance(np.float32), err_msg=str(path))
  assert out.sharding.is_equivalent_to(
      NamedSharding(mesh, activation_spec(3)), out.ndim), out.sharding


def test_shard_module_places_parameters():
  mesh = data_model_mesh()
  module = shard_module(attention_module(), mesh)

  kernel = module.query.kernel.get_value()
  assert kernel.sharding == NamedSharding(mesh, SHARDED_HEADS)
  # Each device stores 3 of the 6 query heads.
  assert kernel.addressable_shards[0].data.shape == (FEATURES, 3, HEAD_DIM)
  assert module.out.bias.get_value().sharding == NamedSharding(mesh,
                                                               REPLICATED)


def test_reference_attention_keeps_heads_sharded():
  mesh = data_model_mesh()
  module = MultiHeadAttention(
      NUM_HEADS, FEATURES, NUM_HEADS * HEAD_DIM, OUT, num_kv_heads=KV_HEADS,
      implementation="reference", rngs=nnx.Rngs(5))
  shard_module(module, mesh)
  graphdef, state = nnx.split(module)
  inputs = shard_activations(jnp.ones((BATCH, LENGTH, FEATURES)), mesh)

  hlo = jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(
      inputs, is_causal=True)).lower(state, inputs).compile().as_text()
  # Gathering heads would mean that attention ran replicated.
  assert " all-gather(" not in hlo
  assert hlo.count(" all-reduce(") == 1


def test_activation_spec():
  assert activation_spec() == PartitionSpec("data", None, None)
  assert activation_spec(4, sequence_axis="seq") == PartitionSpec(
      "data", "seq", None, None)
  with pytest.raises(ValueError, match="`ndim` should be at least 2"):
    activation_spec(1)


def test_shard_module_rejects_explicit_model_axis():
  mesh = data_model_mesh(axis_types=(AxisType.Explicit,) * 2)
  with pytest.raises(ValueError, match="AxisType.Auto"):
    shard_module(attention_module(), mesh)


def test_shard_module_rejects_missing_axis():
  with pytest.raises(ValueError, match="`model_axis`.*'heads'"):
    shard_module(attention_module(), data_model_mesh(), model_axis="heads")


@pytest.mark.parametrize("mesh_shape, names, batch", [
    ((8,), ("data",), 8),
    ((4, 2), ("data", "model"), 4),
    ((4, 2), ("data", "model"), 8),
])
def test_chunked_attention_keeps_batch_and_heads_sharded(mesh_shape, names,
                                                         batch):
  # 1024 tokens per sequence make more than one batch chunk on a single
  # device. A loop over chunks made XLA gather the whole batch on every
  # device, and with two sequences per device on the 4 x 2 mesh a kernel
  # that merged batch and key/value heads gathered every key/value block.
  mesh = jax.make_mesh(mesh_shape, names,
                       axis_types=(AxisType.Auto,) * len(names))
  module = MultiHeadAttention(
      NUM_HEADS, FEATURES, NUM_HEADS * HEAD_DIM, OUT, num_kv_heads=KV_HEADS,
      implementation="chunked", rngs=nnx.Rngs(9))
  if "model" in names:
    shard_module(module, mesh)
  graphdef, state = nnx.split(module)
  inputs = jax.device_put(jnp.ones((batch, 1024, FEATURES)),
                          NamedSharding(mesh, activation_spec(3)))

  hlo = jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(
      inputs, is_causal=True)).lower(state, inputs).compile().as_text()

  assert " all-gather(" not in hlo
  assert hlo.count(" all-reduce(") == (1 if "model" in names else 0)


def test_vectorized_chunked_attention_matches_reference():
  # With more than one device the chunked kernel is mapped over the batch
  # with vmap. A per-sequence bias, a batch-indexed score_mod, dropout and
  # key lengths must then see the same batch indices as on the reference
  # path.
  mesh = data_model_mesh()
  rng = np.random.default_rng(3)
  query = rng.standard_normal((8, 64, 4, 8)).astype(np.float32)
  key = rng.standard_normal((8, 64, 2, 8)).astype(np.float32)
  value = rng.standard_normal((8, 64, 2, 8)).astype(np.float32)
  bias = rng.standard_normal((8, 1, 64, 64)).astype(np.float32)
  query, key, value = (
      jax.device_put(array, NamedSharding(
          mesh, PartitionSpec("data", None, "model", None)))
      for array in (query, key, value))

  def per_sequence(score, batch, head, q_index, kv_index):
    del head, q_index, kv_index
    return score + 0.1 * batch.astype(score.dtype)

  options = dict(is_causal=True, score_mod=per_sequence, dropout_rate=0.2,
                 dropout_rng=jax.random.key(4),
                 key_value_seq_lengths=np.array([64, 5, 0, 40] * 2, np.int32))
  prepared = chunked._prepare(
      query, key, value, bias, None, scale=None, query_seq_lengths=None,
      local_window_size=None, query_offset=None,
      query_segment_ids=None, key_segment_ids=None, logits_soft_cap=None,
      score_mod_params=None, mask_mod=None, deterministic=False,
      block_q=16, block_k=8, **options)
  assert prepared.vectorize_batch

  def loss(implementation, query, key, value, bias):
    if implementation == "chunked":
      out = aj.chunked_attention(query, key, value, bias, block_q=16,
                                 block_k=8, **options)
    else:
      out = aj.dot_product_attention(query, key, value, bias,
                                     implementation="reference", **options)
    return jnp.sum(out * jnp.cos(out)), out

  grad = jax.value_and_grad(loss, (1, 2, 3, 4), has_aux=True)
  (_, expected), expected_grads = grad("reference", query, key, value, bias)
  (_, actual), actual_grads = jax.jit(grad, static_argnums=0)(
      "chunked", query, key, value, bias)

  np.testing.assert_allclose(actual, expected, **tolerance(np.float32))
  for index, (got, want) in enumerate(zip(actual_grads, expected_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


def test_chunked_lengths_keep_heads_sharded():
  # Sequence lengths bound the tile loop through batch-wide extremes, so
  # they keep the vmapped layout and no key/value block is gathered.
  mesh = data_model_mesh()
  spec = NamedSharding(mesh, PartitionSpec("data", None, "model", None))
  query = jax.device_put(jnp.ones((8, 1024, 4, 8)), spec)
  key = value = jax.device_put(jnp.ones((8, 1024, 2, 8)), spec)
  lengths = jnp.arange(8, dtype=jnp.int32) * 100 + 300

  hlo = jax.jit(lambda query, key, value, lengths: aj.chunked_attention(
      query, key, value, is_causal=True, query_seq_lengths=lengths,
      key_value_seq_lengths=lengths)).lower(
          query, key, value, lengths).compile().as_text()

  assert " all-gather(" not in hlo
