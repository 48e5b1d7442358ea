"""Softmax over keys that honours a boolean mask exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """Return the dtype for logits and softmax: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def masked_softmax(
    logits: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    axis: int = -1,
    return_logsumexp: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Softmax along `axis` in which masked entries are inert.

  An entry takes part when `mask` is True there and its logit is not
  `-inf`. Entries that do not take part get weight 0 and a gradient of
  exactly 0, even when their logit is `+inf` or NaN, because they are
  removed with `where` before any arithmetic. A row with no entry taking
  part gets all-zero weights and zero gradients instead of NaN.

  Logits in bfloat16 or float16 are promoted to float32, and the weights are
  returned in that promoted dtype.

  Args:
    logits: array of any shape, typically `[B..., N, T, S]`.
    mask: optional boolean array broadcastable to `logits`, True where an
      entry takes part.
    axis: the axis to normalize over.
    return_logsumexp: also return `log(sum(exp(logits)))` over the entries
      that take part, with `-inf` for rows that have none.

  Returns:
    The weights, or `(weights, logsumexp)` with `logsumexp` reduced over
    `axis`.
  """
  logits = jnp.asarray(logits)
  logits = logits.astype(compute_dtype(logits.dtype))
  valid = logits != -jnp.inf
  if mask is not None:
    valid = jnp.logical_and(valid, mask)

  # The row maximum only stabilizes exp; softmax is shift invariant, so no
  # gradient flows through it. Rows with nothing valid use a shift of 0.
  row_max = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=axis,
                    keepdims=True)
  row_max = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max), row_max, 0.0))

  safe_logits = jnp.where(valid, logits, 0.0)
  shifted = jnp.where(valid, safe_logits - row_max, -jnp.inf)
  unnormalized = jnp.exp(shifted)
  total = jnp.sum(unnormalized, axis=axis, keepdims=True)
  weights = unnormalized / jnp.where(total > 0, total, 1.0)

  if not return_logsumexp:
    return weights
  logsumexp = jnp.log(total) + row_max
  return weights, jnp.squeeze(logsumexp, axis=axis)
