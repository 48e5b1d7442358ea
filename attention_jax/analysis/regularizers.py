"""Penalties on attention weights and logits, each returning a scalar to add to a loss.

A boolean `mask` (True where a query may attend to a key) broadcasts to
`[B..., N, T, S]`; masked entries are left out. Rows with no visible key
and no weight (fully masked queries) are left out of the means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax.analysis import diagnostics


def _visible(values: jax.Array, mask: ArrayLike | None) -> jax.Array:
  return diagnostics._visible(values, mask)


def _masked_mean(values: jax.Array, include: jax.Array) -> jax.Array:
  total = jnp.sum(jnp.where(include, values, 0.0))
  return total / jnp.maximum(jnp.sum(include), 1)


def l1_attention_penalty(weights: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Compute the mean `|w|` over visible entries of `weights` `[B..., N, T, S]`.

  NOTE: softmax rows sum to 1, so this penalty is constant (1 / visible
  keys per row) and has zero gradient through a softmax. It only has an
  effect on weights that are not normalized per row, such as gated or
  dropped-out weights or weights from a sparse transform.
  """
  weights = jnp.asarray(weights)
  return _masked_mean(jnp.abs(weights), _visible(weights, mask))


def l2_attention_penalty(weights: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Compute the mean `w ** 2` over visible entries of `weights` `[B..., N, T, S]`.

  For softmax rows, minimizing it spreads weight evenly over visible keys.
  """
  weights = jnp.asarray(weights)
  return _masked_mean(jnp.square(weights), _visible(weights, mask))


def entropy_penalty(
    weights: ArrayLike, mask: ArrayLike | None = None, *, normalized: bool = False) -> jax.Array:
  """Compute the mean per-row entropy of `weights` `[B..., N, T, S]`.

  Adding it with a positive coefficient makes heads more concentrated; a
  negative coefficient keeps heads from collapsing onto one key.
  `normalized=True` divides each row's entropy by log(visible keys).
  The gradient is finite at zero weights, which contribute nothing.
  """
  weights = jnp.asarray(weights)
  if normalized:
    per_row = diagnostics.normalized_attention_entropy(weights, mask)
  else:
    per_row = diagnostics.attention_entropy(weights, mask)
  return _masked_mean(per_row, diagnostics._row_valid(weights))


def logit_z_loss(logits: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Compute the mean squared log-sum-exp of `logits` over the last axis.

  `mean(logsumexp(logits, axis=-1) ** 2)`, the z-loss of PaLM (Chowdhery
  et al., 2022), which keeps the softmax normalizer near 1 and logits from
  drifting. PaLM applies it with a coefficient of 1e-4 to output logits.
  For attention logits `[B..., N, T, S]`, masked keys are left out of the
  log-sum-exp and rows with no visible key are left out of the mean.
  """
  logits = jnp.asarray(logits)
  visible = _visible(logits, mask)
  masked = jnp.where(visible, logits, -jnp.inf)
  row_valid = jnp.any(visible, axis=-1)
  safe = jnp.where(row_valid[..., None], masked, 0.0)
  log_normalizer = jax.nn.logsumexp(safe, axis=-1)
  return _masked_mean(jnp.square(log_normalizer), row_valid)
