"""Diagnostics, rollout, head importance and monitors against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.analysis import diagnostics
from attention_jax.analysis import importance
from attention_jax.analysis import monitors
from attention_jax.analysis.rollout import attention_rollout
from attention_jax.nn import MultiHeadAttention


def _rows(*rows):
  """Stack weight rows into `[B=1, N=1, T, S]`."""
  return jnp.asarray(rows, dtype=jnp.float32)[None, None]


def test_entropy_one_hot_is_zero():
  weights = _rows([0.0, 1.0, 0.0, 0.0])
  assert float(diagnostics.attention_entropy(weights)[0, 0, 0]) == 0.0
  assert float(diagnostics.normalized_attention_entropy(weights)[0, 0, 0]) == 0.0


def test_entropy_uniform_is_log_n():
  weights = _rows([0.2] * 5)
  np.testing.assert_allclose(diagnostics.attention_entropy(weights)[0, 0, 0], math.log(5), rtol=1e-6)
  np.testing.assert_allclose(diagnostics.normalized_attention_entropy(weights)[0, 0, 0], 1.0, rtol=1e-6)


def test_entropy_uniform_over_visible_keys():
  weights = _rows([0.5, 0.0, 0.5, 0.0, 0.0])
  mask = jnp.array([True, False, True, False, True])
  entropy = diagnostics.attention_entropy(weights, mask)[0, 0, 0]
  normalized = diagnostics.normalized_attention_entropy(weights, mask)[0, 0, 0]
  np.testing.assert_allclose(entropy, math.log(2), rtol=1e-6)
  np.testing.assert_allclose(normalized, math.log(2) / math.log(3), rtol=1e-6)


def test_normalized_entropy_one_visible_key_is_zero():
  weights = _rows([0.0, 1.0, 0.0])
  mask = jnp.array([False, True, False])
  assert float(diagnostics.normalized_attention_entropy(weights, mask)[0, 0, 0]) == 0.0


def test_fully_masked_row_is_zero_and_skipped():
  weights = _rows([0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0])
  mask = jnp.array([[True] * 4, [False] * 4])[None, None]
  assert float(diagnostics.attention_entropy(weights, mask)[0, 0, 1]) == 0.0
  summary = diagnostics.head_diagnostics(weights, mask)
  np.testing.assert_allclose(summary["entropy"], [math.log(4)], rtol=1e-6)
  np.testing.assert_allclose(summary["max_weight"], [0.25], rtol=1e-6)


def test_entropy_known_distribution():
  probabilities = np.array([0.5, 0.25, 0.125, 0.125])
  expected = -np.sum(probabilities * np.log(probabilities))
  np.testing.assert_allclose(diagnostics.attention_entropy(_rows(probabilities))[0, 0, 0], expected, rtol=1e-6)


def test_max_weight():
  weights = _rows([0.1, 0.7, 0.2], [0.3, 0.3, 0.4])
  np.testing.assert_allclose(diagnostics.max_attention_weight(weights)[0, 0], [0.7, 0.4], rtol=1e-6)


def test_mean_distance_square():
  weights = _rows([1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0])
  np.testing.assert_allclose(diagnostics.mean_attention_distance(weights)[0, 0], [0.0, 1.0, 0.0], atol=1e-6)


def test_mean_distance_bottom_right():
  # T=2, S=4: queries sit at positions 2 and 3.
  weights = _rows([1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5])
  np.testing.assert_allclose(diagnostics.mean_attention_distance(weights)[0, 0], [2.0, 1.0], atol=1e-6)


def test_sparsity_threshold_and_mask():
  weights = _rows([0.005, 0.995, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25])
  mask = jnp.array([[True, True, False, False], [True] * 4])[None, None]
  # Visible entries: 2 + 4; below 0.01: one.
  np.testing.assert_allclose(diagnostics.attention_sparsity(weights, mask)[0], [1 / 6], rtol=1e-6)
  np.testing.assert_allclose(diagnostics.attention_sparsity(weights, mask, threshold=0.3)[0], [5 / 6], rtol=1e-6)


def test_classify_heads():
  one_hot = jnp.eye(4)[None]
  uniform = jnp.full((1, 4, 4), 0.25)
  weights = jnp.concatenate([one_hot, uniform])[None]
  assert diagnostics.classify_heads(weights).tolist() == [True, False]
  assert diagnostics.head_labels(diagnostics.classify_heads(weights)) == ["concentrated", "dispersed"]


def test_head_diagnostics_under_jit_with_batch_axes():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 7, 11))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  summary = jax.jit(diagnostics.head_diagnostics)(weights, None)
  assert summary["entropy"].shape == (5,)
  # Oracle: every row is valid, so each head's value is the plain mean over B, B', T.
  entropy = -np.sum(weights * np.log(weights), axis=-1)
  np.testing.assert_allclose(summary["entropy"], entropy.mean(axis=(0, 1, 3)), rtol=1e-5)
  np.testing.assert_allclose(summary["normalized_entropy"], entropy.mean(axis=(0, 1, 3)) / np.log(11), rtol=1e-5)
  np.testing.assert_allclose(summary["max_weight"], weights.max(-1).mean(axis=(0, 1, 3)), rtol=1e-5)
  np.testing.assert_allclose(summary["sparsity"], (weights < 0.01).mean(axis=(0, 1, 3, 4)), rtol=1e-5)


def test_mask_shape_error_names_shapes():
  with pytest.raises(ValueError, match=r"\(3,\).*\(1, 1, 2, 4\)"):
    diagnostics.attention_entropy(jnp.full((1, 1, 2, 4), 0.25), jnp.ones(3, dtype=bool))


def test_rollout_one_layer_adds_identity():
  weights = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
  # Head mean is uniform 0.5; with the identity: [[0.75, 0.25], [0.25, 0.75]].
  np.testing.assert_allclose(attention_rollout([weights]), [[0.75, 0.25], [0.25, 0.75]], rtol=1e-6)


def test_rollout_multiplies_layers():
  first = jnp.array([[[1.0, 0.0], [1.0, 0.0]]])
  second = jnp.array([[[0.0, 1.0], [0.0, 1.0]]])
  a1 = np.array([[1.0, 0.0], [0.5, 0.5]])
  a2 = np.array([[0.5, 0.5], [0.0, 1.0]])
  np.testing.assert_allclose(attention_rollout([first, second]), a2 @ a1, rtol=1e-6)
  np.testing.assert_allclose(attention_rollout(jnp.stack([first, second])), a2 @ a1, rtol=1e-6)


def test_head_importance_linear_loss():
  scale = jnp.array([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]])
  loss_fn = lambda gates, batch: jnp.sum(batch * scale * gates ** 2)
  scores = importance.head_importance(loss_fn, [1.0, 3.0], (2, 3), normalize_per_layer=False)
  # d/dg of b * s * g^2 at g=1 is 2 b s; the mean of |.| over b in {1, 3} is 4 |s|.
  np.testing.assert_allclose(scores, 4 * np.abs(scale), rtol=1e-6)
  normalized = importance.head_importance(loss_fn, [1.0], (2, 3))
  np.testing.assert_allclose(np.linalg.norm(normalized, axis=-1), [1.0, 1.0], rtol=1e-6)


def test_prune_mask_global_and_per_layer():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
  np.testing.assert_array_equal(importance.prune_mask(scores, count=2), [[1, 0, 1], [0, 1, 1]])
  np.testing.assert_array_equal(
      importance.prune_mask(scores, count=1, per_layer=True), [[1, 0, 1], [0, 1, 1]])
  np.testing.assert_array_equal(importance.prune_mask(scores, fraction=0.5), [[1, 0, 1], [0, 1, 0]])
  np.testing.assert_array_equal(
      importance.prune_mask(scores, fraction=2 / 3, per_layer=True), [[1, 0, 0], [0, 1, 0]])
  with pytest.raises(ValueError, match="exactly one"):
    importance.prune_mask(scores)


def test_gradient_norms_per_attention_module():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.attention = MultiHeadAttention(2, 4, rngs=rngs)
      self.dense = nnx.Linear(4, 4, rngs=rngs)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([Block(rngs), Block(rngs)])

  model = Model(nnx.Rngs(0))
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  norms = monitors.attention_gradient_norms(grads)
  assert list(norms) == ["layers/0/attention", "layers/1/attention"]
  # Per module: 3 kernels [4, 2, 2], 3 biases [2, 2], out kernel [2, 2, 4], out bias [4].
  parameter_count = 3 * 16 + 3 * 4 + 16 + 4
  np.testing.assert_allclose(norms["layers/0/attention"], math.sqrt(parameter_count), rtol=1e-6)


def test_flag_gradients():
  flags = monitors.flag_gradients({"a": 1e-9, "b": 1.0, "c": 1e5, "d": float("nan")})
  assert flags == {"a": "vanishing", "b": "ok", "c": "exploding", "d": "exploding"}


def test_entropy_collapse_threshold_and_drop():
  assert monitors.detect_entropy_collapse([0.8, 0.05], threshold=0.1)
  assert not monitors.detect_entropy_collapse([0.8, 0.7, 0.6], window=2)
  assert monitors.detect_entropy_collapse([0.8, 0.7, 0.35], window=2, drop_factor=0.5)
  monitor = monitors.EntropyCollapseMonitor(window=1)
  assert not monitor.update(0, 0.9)
  assert monitor.update(1, 0.4)
