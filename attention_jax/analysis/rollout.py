"""Attention rollout across layers (Abnar and Zuidema, 2020, "Quantifying
Attention Flow in Transformers")."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def attention_rollout(layer_weights: Sequence[ArrayLike] | ArrayLike) -> jax.Array:
  """Multiply head-averaged attention with the residual path through layers.

  For each layer, the weights are averaged over heads, the identity is
  added for the residual connection and each row is renormalized to sum to
  1 (so a row with weights summing to 1 becomes `0.5 W + 0.5 I`). The
  rollout is `A_L @ ... @ A_2 @ A_1`: row t gives how much each input token
  flows into output position t.

  Args:
    layer_weights: self-attention weights of each layer, first layer first:
      a sequence of `[B..., N, T, T]` arrays or one `[L, B..., N, T, T]`
      array.

  Returns:
    `[B..., T, T]`; each row sums to 1.
  """
  if not isinstance(layer_weights, (list, tuple)):
    layer_weights = list(jnp.asarray(layer_weights))
  if not layer_weights:
    raise ValueError("`layer_weights` should hold at least one layer, but got none")
  rollout = None
  for index, weights in enumerate(layer_weights):
    weights = jnp.asarray(weights)
    if weights.ndim < 3 or weights.shape[-1] != weights.shape[-2]:
      raise ValueError(
          f"layer {index} weights should have shape [B..., N, T, T] (self-attention), "
          f"but got {weights.shape}")
    averaged = jnp.mean(weights, axis=-3)
    with_residual = averaged + jnp.eye(weights.shape[-1], dtype=averaged.dtype)
    with_residual = with_residual / jnp.sum(with_residual, axis=-1, keepdims=True)
    rollout = with_residual if rollout is None else with_residual @ rollout
  return rollout
