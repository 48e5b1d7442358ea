"""Head gates and structural pruning: removing a gated-off head changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.analysis.pruning import gated_attention
from attention_jax.analysis.pruning import prune_heads
from attention_jax.models.bert import BertConfig
from attention_jax.models.bert import BertEncoder
from attention_jax.nn import MultiHeadAttention

NUM_HEADS, FEATURES, QKV_FEATURES, OUT_FEATURES = 5, 13, 15, 7
BATCH, LENGTH = 2, 11
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _module_and_inputs():
  module = MultiHeadAttention(NUM_HEADS, FEATURES, QKV_FEATURES, OUT_FEATURES, rngs=nnx.Rngs(0))
  # Nonzero biases, so that slicing them is tested too.
  for name in ("query", "key", "value", "out"):
    bias = getattr(module, name).bias
    bias[...] = jax.random.normal(jax.random.key(len(name)), bias[...].shape)
  inputs = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, FEATURES))
  mask = jnp.arange(LENGTH) < jnp.array([LENGTH, 6])[:, None]
  return module, inputs, mask[:, None, None, :]


def test_gates_of_one_equal_module_call():
  module, inputs, mask = _module_and_inputs()
  np.testing.assert_allclose(gated_attention(module, inputs, mask=mask), module(inputs, mask=mask), **TOLERANCE)
  ones = jnp.ones(NUM_HEADS)
  np.testing.assert_allclose(gated_attention(module, inputs, ones, mask=mask), module(inputs, mask=mask), **TOLERANCE)


def test_pruning_gated_off_head_changes_nothing():
  module, inputs, mask = _module_and_inputs()
  gates = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])
  before = gated_attention(module, inputs, gates, mask=mask)
  pruned = prune_heads(module, gates > 0)
  after = gated_attention(pruned, inputs, jnp.ones(NUM_HEADS - 1), mask=mask)
  np.testing.assert_allclose(after, before, **TOLERANCE)


@pytest.mark.parametrize("keep", [[0, 2, 3], [4], [0, 1, 2, 3, 4]])
def test_structural_pruning_equals_gating(keep):
  module, inputs, mask = _module_and_inputs()
  gates = jnp.zeros(NUM_HEADS).at[jnp.array(keep)].set(1.0)
  pruned = prune_heads(module, keep)
  assert pruned.num_heads == len(keep)
  assert pruned.query.kernel[...].shape == (FEATURES, len(keep), QKV_FEATURES // NUM_HEADS)
  assert pruned.out.kernel[...].shape == (len(keep), QKV_FEATURES // NUM_HEADS, OUT_FEATURES)
  np.testing.assert_allclose(pruned(inputs, mask=mask), gated_attention(module, inputs, gates, mask=mask), **TOLERANCE)


def test_prune_heads_rejects_invalid_input():
  module, _, _ = _module_and_inputs()
  with pytest.raises(ValueError, match="keeps no head"):
    prune_heads(module, np.zeros(NUM_HEADS, dtype=bool))
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    prune_heads(module, [7])
  grouped = MultiHeadAttention(4, 8, num_kv_heads=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_kv_heads=2"):
    prune_heads(grouped, [0, 1])


def test_gates_wrong_shape_raise():
  module, inputs, _ = _module_and_inputs()
  with pytest.raises(ValueError, match=r"\[N\] = \(5,\)"):
    gated_attention(module, inputs, jnp.ones(3))


def test_bert_structural_pruning_equals_gating():
  config = BertConfig(vocab_size=31, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=17, max_position_embeddings=16)
  model = BertEncoder(config, rngs=nnx.Rngs(0))
  input_ids = jax.random.randint(jax.random.key(2), (2, 7), 0, 31)
  attention_mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
  gates = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  forward = nnx.jit(lambda model, gates: model(input_ids, attention_mask, head_gates=gates))
  gated = forward(model, gates)
  model.prune_heads(gates > 0)
  assert [layer.attention.num_heads for layer in model.layers] == [2, 1]
  np.testing.assert_allclose(forward(model, None), gated, **TOLERANCE)
