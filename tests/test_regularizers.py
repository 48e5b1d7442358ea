"""Attention penalties: values, masks, gradients, and the optax training example."""

import importlib.util
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.analysis import regularizers

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "regularized_training.py"


def _finite_difference(fn, x, epsilon=1e-3):
  """Central differences of scalar `fn` at every entry of float64 NumPy `x`."""
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = epsilon
    gradient[index] = (fn(x + step) - fn(x - step)) / (2 * epsilon)
  return gradient


def test_l1_l2_values_with_mask():
  weights = jnp.array([[0.5, 0.5, 9.0], [0.2, 0.8, 9.0]])[None, None]
  mask = jnp.array([True, True, False])
  np.testing.assert_allclose(regularizers.l1_attention_penalty(weights, mask), 0.5, rtol=1e-6)
  expected_l2 = (0.25 + 0.25 + 0.04 + 0.64) / 4
  np.testing.assert_allclose(regularizers.l2_attention_penalty(weights, mask), expected_l2, rtol=1e-6)


def test_l2_gradient_is_two_w_over_count():
  weights = jnp.array([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])[None, None]
  mask = jnp.array([[True, True, False], [True, True, True]])
  gradient = jax.grad(regularizers.l2_attention_penalty)(weights, mask)
  expected = np.where(np.asarray(mask), 2 * np.asarray(weights) / 5, 0.0)
  np.testing.assert_allclose(gradient, expected, rtol=1e-6)


def test_entropy_penalty_values():
  weights = jnp.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.0] * 4])[None, None]
  # The all-zero row (fully masked) is left out of the mean.
  np.testing.assert_allclose(regularizers.entropy_penalty(weights), math.log(4) / 2, rtol=1e-6)
  np.testing.assert_allclose(regularizers.entropy_penalty(weights, normalized=True), 0.5, rtol=1e-6)


def test_entropy_penalty_gradient_through_softmax():
  logits = np.array([[[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]]])
  mask = np.array([True, True, True, False])

  def penalty(x):
    weights = jax.nn.softmax(jnp.where(mask, x, -jnp.inf), axis=-1)
    return regularizers.entropy_penalty(weights, mask)

  gradient = jax.grad(penalty)(jnp.asarray(logits, dtype=jnp.float32))
  expected = _finite_difference(lambda x: float(penalty(jnp.asarray(x, dtype=jnp.float32))), logits)
  assert np.all(np.isfinite(gradient))
  np.testing.assert_allclose(gradient, expected, atol=2e-3)
  np.testing.assert_array_equal(gradient[..., 3], 0.0)


def test_z_loss_value_and_gradient():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  lse = np.log(np.exp(np.asarray(logits)).sum(-1))
  np.testing.assert_allclose(regularizers.logit_z_loss(logits), np.mean(lse ** 2), rtol=1e-6)
  # d/dx mean(lse^2) = 2 lse softmax(x) / rows.
  softmax = np.exp(np.asarray(logits) - lse[:, None])
  expected = 2 * lse[:, None] * softmax / 2
  np.testing.assert_allclose(jax.grad(regularizers.logit_z_loss)(logits), expected, rtol=1e-5)


def test_z_loss_ignores_masked_keys():
  logits = jnp.array([[1.0, 2.0, 1e30], [jnp.nan, jnp.nan, jnp.nan]])
  mask = jnp.array([[True, True, False], [False, False, False]])
  expected = np.log(np.exp(1.0) + np.exp(2.0)) ** 2
  np.testing.assert_allclose(regularizers.logit_z_loss(logits, mask), expected, rtol=1e-6)
  gradient = jax.grad(regularizers.logit_z_loss)(logits, mask)
  np.testing.assert_array_equal(gradient[:, 2], 0.0)
  np.testing.assert_array_equal(gradient[1], 0.0)


def test_regularized_training_example_learns():
  spec = importlib.util.spec_from_file_location("regularized_training", EXAMPLE)
  example = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = example
  spec.loader.exec_module(example)
  history = example.train(steps=30)
  first, last = history[0], history[-1]
  assert last["cross_entropy"] < 0.5 * first["cross_entropy"]
  for name in ("entropy", "l2", "z_loss"):
    assert np.isfinite(last[name]), name
    assert last[name] > 0, name
  weights = example.PenaltyWeights()
  expected = (last["cross_entropy"] + weights.entropy * last["entropy"]
              + weights.l2 * last["l2"] + weights.z_loss * last["z_loss"])
  np.testing.assert_allclose(last["loss"], expected, rtol=1e-5)
