"""Basic feed-forward attention: pool one sequence into one vector.

A learned layer scores each position on its own, a softmax over the
sequence turns the scores into weights, and the output is the weighted
average of the inputs (Raffel and Ellis, 2015, "Feed-forward networks with
attention can solve some long-term memory problems").
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import scores as scores_lib
from attention_jax.softmax import masked_softmax


def basic_attention(
    inputs: ArrayLike,
    kernel: ArrayLike,
    bias: ArrayLike,
    score_vector: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    values: ArrayLike | None = None,
    is_causal: bool = False,
    return_weights: bool = False,
):
  """Pool `inputs` over the sequence with weights `softmax(v . tanh(W x + b))`.

  Args:
    inputs: `[B..., S, D]`, the sequence that is scored.
    kernel: `W`, `[D, A]`.
    bias: `b`, `[A]`.
    score_vector: `v`, `[A]`.
    mask: boolean `[B..., S]` (or broadcastable to it), True for positions
      that take part. A fully masked sequence pools to zeros.
    values: optional `[B..., S, D_v]` to average instead of `inputs`.
    is_causal: pool every prefix instead of the whole sequence: output row
      `t` averages positions `0..t` with the same per-position scores, so a
      causal language model can use it as a token mixer.
    return_weights: also return the weights `[B..., S]` (`[B..., S, S]`
      with `is_causal`).

  Returns:
    The pooled vector `[B..., D]` (or `[B..., D_v]`), or
    `(pooled, weights)`. With `is_causal`, one pooled vector per prefix:
    `[B..., S, D]` (or `[B..., S, D_v]`).
  """
  inputs = jnp.asarray(inputs)
  logits = scores_lib.feedforward_scores(inputs, kernel, bias, score_vector)
  if mask is not None:
    _checks.check_bool("mask", mask)
    _checks.check_broadcastable("mask", mask, logits.shape, "[B..., S]")
  if values is None:
    values = inputs
  else:
    values = jnp.asarray(values)
    _checks.check_floating("values", values)
    if values.ndim != inputs.ndim or values.shape[:-1] != inputs.shape[:-1]:
      raise ValueError(
          "`values` should have shape [B..., S, D_v] with B..., S = "
          f"{inputs.shape[:-1]} as in `inputs`, but got {values.shape}")
  if mask is not None:
    visible = jnp.broadcast_to(mask, logits.shape)[..., None]
    values = jnp.where(visible, values, jnp.zeros((), values.dtype))

  if is_causal:
    length = logits.shape[-1]
    prefix = jnp.tril(jnp.ones((length, length), dtype=bool))
    if mask is not None:
      prefix = prefix & jnp.asarray(mask)[..., None, :]
    logits = jnp.broadcast_to(logits[..., None, :],
                              logits.shape[:-1] + (length, length))
    weights = masked_softmax(logits, prefix)
    pooled = jnp.einsum("...ts,...sd->...td", weights.astype(values.dtype),
                        values, preferred_element_type=weights.dtype)
  else:
    weights = masked_softmax(logits, mask)
    pooled = jnp.einsum("...s,...sd->...d", weights.astype(values.dtype),
                        values, preferred_element_type=weights.dtype)
  pooled = pooled.astype(values.dtype)
  if return_weights:
    return pooled, weights.astype(inputs.dtype)
  return pooled
