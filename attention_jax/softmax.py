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
  if mask is not None:
    # Replacing masked logits before any arithmetic keeps a NaN or +inf
    # there out of both the result and the gradient: `where` sends a zero
    # cotangent to the branch it did not select.
    logits = jnp.where(mask, logits, -jnp.inf)

  # The row maximum only stabilizes exp; softmax is shift invariant, so no
  # gradient flows through it. A row whose entries are all -inf (masked)
  # uses a shift of 0, so exp gives zeros there rather than NaN.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)

  unnormalized = jnp.exp(logits - row_max)
  total = jnp.sum(unnormalized, axis=axis, keepdims=True)
  weights = unnormalized / jnp.where(total > 0, total, 1.0)

  if not return_logsumexp:
    return weights
  logsumexp = jnp.log(total) + row_max
  return weights, jnp.squeeze(logsumexp, axis=axis)
