"""Per-head diagnostics of attention weights `[B..., N, T, S]`.

Pure `jax.numpy` functions, usable under `jax.jit` and `jax.vmap`. A
boolean `mask` (True where a query may attend to a key) broadcasts to the
weights and sets which keys count as visible. Without a mask, all S keys
are visible. Rows whose weights sum to zero (fully masked queries) count as
empty: their per-row values are 0 and head averages skip them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

# A head is "concentrated" when its mean normalized entropy is at most this
# value. Normalized entropy 0.5 means exp(entropy) = sqrt(n): the head
# spreads its weight over about sqrt(n) of the n visible keys.
CONCENTRATED_MAX_NORMALIZED_ENTROPY = 0.5

# Weights below this value count as near zero in `attention_sparsity`.
DEFAULT_SPARSITY_THRESHOLD = 0.01


def _visible(weights: jax.Array, mask: ArrayLike | None) -> jax.Array:
  """Return a boolean array of the weights' shape, True at visible keys."""
  if mask is None:
    return jnp.ones(weights.shape, dtype=bool)
  mask = jnp.asarray(mask, dtype=bool)
  try:
    return jnp.broadcast_to(mask, weights.shape)
  except ValueError:
    raise ValueError(
        f"`mask` with shape {mask.shape} does not broadcast to the weights' "
        f"shape {weights.shape} [B..., N, T, S]") from None


def _row_valid(weights: jax.Array) -> jax.Array:
  """Return True for rows `[B..., N, T]` that hold any attention weight."""
  return jnp.sum(weights, axis=-1) > 0


def _check_weights(weights: ArrayLike) -> jax.Array:
  weights = jnp.asarray(weights)
  if weights.ndim < 3:
    raise ValueError(
        "`weights` should have shape [B..., N, T, S] (at least 3 axes), but "
        f"got {weights.shape}")
  return weights


def attention_entropy(weights: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Compute the entropy `-sum_s w log w` (in nats) of each query row.

  Args:
    weights: `[B..., N, T, S]` attention weights, each row summing to 1 or 0.
    mask: optional boolean, broadcasting to `weights`; masked keys are left
      out of the sum.

  Returns:
    `[B..., N, T]`. A one-hot row has entropy 0 and a uniform row over n
    visible keys has entropy log n.
  """
  weights = _check_weights(weights)
  visible = _visible(weights, mask) & (weights > 0)
  safe = jnp.where(visible, weights, 1.0)
  return -jnp.sum(jnp.where(visible, weights * jnp.log(safe), 0.0), axis=-1)


def visible_key_count(weights: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Count the visible keys of each query row: `[B..., N, T]` integers."""
  weights = _check_weights(weights)
  return jnp.sum(_visible(weights, mask), axis=-1)


def normalized_attention_entropy(
    weights: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
  """Compute each row's entropy divided by log(number of visible keys).

  The result is in [0, 1]: 0 for a one-hot row, 1 for a uniform row. Rows
  with at most one visible key have normalized entropy 0.

  Returns:
    `[B..., N, T]`.
  """
  weights = _check_weights(weights)
  entropy = attention_entropy(weights, mask)
  count = visible_key_count(weights, mask)
  log_count = jnp.log(jnp.maximum(count, 2).astype(entropy.dtype))
  return jnp.where(count > 1, entropy / log_count, 0.0)


def max_attention_weight(weights: ArrayLike) -> jax.Array:
  """Return the largest weight of each query row: `[B..., N, T]`."""
  weights = _check_weights(weights)
  return jnp.max(weights, axis=-1)


def mean_attention_distance(weights: ArrayLike) -> jax.Array:
  """Compute the weighted mean distance `sum_s w[t, s] |p(t) - s|` per row.

  Query t sits at position `p(t) = S - T + t` (bottom-right alignment, the
  library's causal convention), so with T == S it is at position t.

  Returns:
    `[B..., N, T]` in key positions; 0 for empty rows.
  """
  weights = _check_weights(weights)
  num_queries, num_keys = weights.shape[-2:]
  query_positions = jnp.arange(num_queries) + (num_keys - num_queries)
  distance = jnp.abs(query_positions[:, None] - jnp.arange(num_keys)[None, :])
  return jnp.sum(weights * distance.astype(weights.dtype), axis=-1)


def attention_sparsity(
    weights: ArrayLike, mask: ArrayLike | None = None, *,
    threshold: float = DEFAULT_SPARSITY_THRESHOLD) -> jax.Array:
  """Compute the fraction of visible weights below `threshold` per head.

  A uniform row over n keys has all weights equal to 1/n, so it counts as
  fully sparse once n > 1 / threshold (n > 100 for the default 0.01).

  Returns:
    `[B..., N]`, the fraction over the visible entries of valid rows; 0
    for a head with no visible entry.
  """
  weights = _check_weights(weights)
  visible = _visible(weights, mask) & _row_valid(weights)[..., None]
  below = visible & (weights < threshold)
  count = jnp.sum(visible, axis=(-2, -1))
  return jnp.sum(below, axis=(-2, -1)) / jnp.maximum(count, 1)


def mean_over_queries(values: ArrayLike, weights: ArrayLike) -> jax.Array:
  """Average per-row values `[B..., N, T]` over batch and queries, per head.

  Empty rows of `weights` `[B..., N, T, S]` are skipped.

  Returns:
    `[N]`.
  """
  weights = _check_weights(weights)
  values = jnp.asarray(values)
  valid = jnp.broadcast_to(_row_valid(weights), values.shape)
  head_first = jnp.moveaxis(valid, -2, 0).reshape(valid.shape[-2], -1)
  values_first = jnp.moveaxis(values, -2, 0).reshape(values.shape[-2], -1)
  total = jnp.sum(jnp.where(head_first, values_first, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(head_first, axis=-1), 1)


def head_diagnostics(
    weights: ArrayLike, mask: ArrayLike | None = None, *,
    sparsity_threshold: float = DEFAULT_SPARSITY_THRESHOLD,
    concentrated_max_normalized_entropy: float = CONCENTRATED_MAX_NORMALIZED_ENTROPY,
) -> dict[str, jax.Array]:
  """Summarize each head of `weights` `[B..., N, T, S]` over batch and queries.

  Returns:
    A dict of `[N]` arrays: `entropy`, `normalized_entropy`, `max_weight`,
    `mean_distance` (means over valid query rows), `sparsity` (mean over
    the batch) and `concentrated` (booleans, see `classify_heads`).
  """
  weights = _check_weights(weights)
  normalized = mean_over_queries(normalized_attention_entropy(weights, mask), weights)
  sparsity = attention_sparsity(weights, mask, threshold=sparsity_threshold)
  return {
      "entropy": mean_over_queries(attention_entropy(weights, mask), weights),
      "normalized_entropy": normalized,
      "max_weight": mean_over_queries(max_attention_weight(weights), weights),
      "mean_distance": mean_over_queries(mean_attention_distance(weights), weights),
      "sparsity": jnp.mean(sparsity.reshape(-1, sparsity.shape[-1]), axis=0),
      "concentrated": normalized <= concentrated_max_normalized_entropy,
  }


def classify_heads(
    weights: ArrayLike, mask: ArrayLike | None = None, *,
    concentrated_max_normalized_entropy: float = CONCENTRATED_MAX_NORMALIZED_ENTROPY,
) -> jax.Array:
  """Label each head concentrated (True) or dispersed (False).

  A head is concentrated when its mean normalized entropy over valid query
  rows is at most `concentrated_max_normalized_entropy` (default 0.5, where
  the weight spreads over about sqrt(n) of n visible keys); otherwise it is
  dispersed.

  Returns:
    `[N]` booleans.
  """
  weights = _check_weights(weights)
  normalized = mean_over_queries(normalized_attention_entropy(weights, mask), weights)
  return normalized <= concentrated_max_normalized_entropy


def head_labels(concentrated: ArrayLike) -> list[str]:
  """Turn `classify_heads` booleans into "concentrated"/"dispersed" strings."""
  return ["concentrated" if flag else "dispersed" for flag in jnp.asarray(concentrated).tolist()]
