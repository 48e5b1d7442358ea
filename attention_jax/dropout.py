"""Dropout on attention weights with an explicit PRNG key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _checks


def attention_dropout(
    weights: jax.Array,
    rate: float,
    rng: jax.Array | None,
    *,
    deterministic: bool = False,
) -> jax.Array:
  """Zero each weight with probability `rate` and rescale the rest.

  Dropout is off when `deterministic` is True, `rng` is None or `rate` is 0,
  so inference never drops weights. Kept weights are divided by
  `1 - rate`, which keeps the expected output unchanged.

  Args:
    weights: attention weights, typically `[B..., N, T, S]`.
    rate: drop probability in [0, 1).
    rng: a PRNG key, or None to turn dropout off.
    deterministic: turn dropout off regardless of `rng`.
  """
  _checks.check_dropout_rate(rate)
  if deterministic or rng is None or rate == 0.0:
    return weights
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, weights.shape)
  return jnp.where(keep, weights / keep_prob, jnp.zeros_like(weights))
