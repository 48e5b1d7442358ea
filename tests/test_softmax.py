"""`masked_softmax` against the oracle, and on masked, infinite and NaN
entries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
from inputs import random_mask
from inputs import random_normal
from tolerances import tolerance

SHAPE = (2, 3, 5, 7)


def test_masked_softmax_unmasked():
  logits = random_normal(0, SHAPE)
  expected, _ = oracle.masked_softmax(logits)
  np.testing.assert_allclose(aj.masked_softmax(logits), expected,
                             **tolerance(np.float32))


def test_masked_softmax_with_mask():
  logits = random_normal(1, SHAPE)
  mask = random_mask(2, SHAPE)
  expected, _ = oracle.masked_softmax(logits, mask)
  np.testing.assert_allclose(aj.masked_softmax(logits, mask), expected,
                             **tolerance(np.float32))


def test_masked_softmax_masked_entries_exactly_zero():
  logits = random_normal(3, SHAPE)
  mask = random_mask(4, SHAPE)
  weights = np.asarray(aj.masked_softmax(logits, mask))
  np.testing.assert_array_equal(weights[~mask], 0.0)


def test_masked_softmax_fully_masked_row():
  logits = random_normal(5, SHAPE)
  mask = np.ones(SHAPE, dtype=bool)
  mask[1, 2, 3] = False
  weights = np.asarray(aj.masked_softmax(logits, mask))
  np.testing.assert_array_equal(weights[1, 2, 3], np.zeros(SHAPE[-1]))


def test_masked_softmax_neg_inf_logits_are_masked():
  logits = random_normal(6, SHAPE)
  logits[0, 0, 0, :3] = -np.inf
  logits[0, 0, 1, :] = -np.inf
  weights = np.asarray(aj.masked_softmax(logits))
  expected, _ = oracle.masked_softmax(logits)
  np.testing.assert_allclose(weights, expected, **tolerance(np.float32))


def test_masked_softmax_all_neg_inf_row():
  logits = random_normal(7, SHAPE)
  logits[0, 0, 1, :] = -np.inf
  weights = np.asarray(aj.masked_softmax(logits))
  np.testing.assert_array_equal(weights[0, 0, 1], np.zeros(SHAPE[-1]))


@pytest.mark.parametrize("poison", [np.inf, -np.inf, np.nan, 3e38],
                         ids=["pos_inf", "neg_inf", "nan", "huge"])
def test_masked_softmax_masked_logit_inert(poison):
  logits = random_normal(8, SHAPE)
  mask = random_mask(9, SHAPE)
  poisoned = np.where(mask, logits, np.float32(poison))
  np.testing.assert_array_equal(aj.masked_softmax(poisoned, mask),
                                aj.masked_softmax(logits, mask))


@pytest.mark.parametrize("poison", [np.inf, -np.inf, np.nan, 3e38],
                         ids=["pos_inf", "neg_inf", "nan", "huge"])
def test_masked_softmax_masked_logit_zero_gradient(poison):
  logits = random_normal(10, SHAPE)
  mask = random_mask(11, SHAPE)
  cotangent = random_normal(12, SHAPE)
  poisoned = np.where(mask, logits, np.float32(poison))

  def loss(x):
    return jnp.sum(aj.masked_softmax(x, mask) * cotangent)

  grad = np.asarray(jax.grad(loss)(poisoned))
  np.testing.assert_array_equal(grad[~mask], 0.0)
  np.testing.assert_array_equal(grad, jax.grad(loss)(logits))


def test_masked_softmax_fully_masked_row_zero_gradient():
  logits = random_normal(13, SHAPE)
  mask = np.ones(SHAPE, dtype=bool)
  mask[0, 1, 2] = False
  cotangent = random_normal(14, SHAPE)
  grad = jax.grad(lambda x: jnp.sum(aj.masked_softmax(x, mask) * cotangent))(
      logits)
  np.testing.assert_array_equal(grad[0, 1, 2], np.zeros(SHAPE[-1]))
  assert np.all(np.isfinite(grad))


def test_masked_softmax_logsumexp():
  logits = random_normal(15, SHAPE)
  mask = random_mask(16, SHAPE)
  mask[1, 0, 4] = False
  _, expected = oracle.masked_softmax(logits, mask)
  _, logsumexp = aj.masked_softmax(logits, mask, return_logsumexp=True)
  assert logsumexp.shape == SHAPE[:-1]
  np.testing.assert_allclose(logsumexp, expected, **tolerance(np.float32))


def test_masked_softmax_logsumexp_empty_row():
  logits = random_normal(17, SHAPE)
  mask = np.ones(SHAPE, dtype=bool)
  mask[1, 0, 4] = False
  _, logsumexp = aj.masked_softmax(logits, mask, return_logsumexp=True)
  assert np.asarray(logsumexp)[1, 0, 4] == -np.inf


def test_masked_softmax_axis():
  logits = random_normal(18, SHAPE)
  mask = random_mask(19, SHAPE)
  expected, _ = oracle.masked_softmax(logits, mask, axis=1)
  np.testing.assert_allclose(aj.masked_softmax(logits, mask, axis=1),
                             expected, **tolerance(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16],
                         ids=["bfloat16", "float16"])
def test_masked_softmax_low_precision_promoted(dtype):
  logits = random_normal(20, SHAPE).astype(dtype)
  mask = random_mask(21, SHAPE)
  weights = aj.masked_softmax(logits, mask)
  expected, _ = oracle.masked_softmax(logits, mask)
  assert weights.dtype == jnp.float32
  np.testing.assert_allclose(weights, expected, **tolerance(np.float32))
