"""Head importance scores and pruning masks (Michel, Levy and Neubig, 2019,
"Are Sixteen Heads Really Better than One?").

The importance of head n in layer l is the expected absolute gradient of a
loss with respect to a gate `xi[l, n]` that multiplies the head's output,
taken at gates of 1: `I[l, n] = E_batch |dL / dxi[l, n]|`. This is the
first-order estimate of how much the loss changes when the head is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def head_importance(
    loss_fn: Callable[[jax.Array, Any], jax.Array],
    batches: Iterable[Any],
    gate_shape: tuple[int, int],
    *,
    normalize_per_layer: bool = True,
) -> jax.Array:
  """Average `|d loss_fn(gates, batch) / d gates|` over `batches` at gates of 1.

  Args:
    loss_fn: maps gates `[L, N]` and one batch to a scalar loss.
    batches: an iterable of batches, passed to `loss_fn` as they are.
    gate_shape: `(L, N)`, the number of layers and heads per layer.
    normalize_per_layer: divide each layer's scores by their L2 norm, as
      Michel et al. do, so that layers are comparable in global pruning.

  Returns:
    `[L, N]` non-negative scores.

  Raises:
    ValueError: if `batches` is empty.
  """
  gates = jnp.ones(gate_shape, dtype=jnp.float32)
  gradient_fn = jax.jit(jax.grad(loss_fn))
  total = jnp.zeros(gate_shape, dtype=jnp.float32)
  count = 0
  for batch in batches:
    total = total + jnp.abs(gradient_fn(gates, batch))
    count += 1
  if count == 0:
    raise ValueError("`batches` is empty; head importance needs at least one batch")
  importance = total / count
  if normalize_per_layer:
    norm = jnp.linalg.norm(importance, axis=-1, keepdims=True)
    importance = importance / jnp.where(norm > 0, norm, 1.0)
  return importance


def prune_mask(
    importance: ArrayLike,
    *,
    count: int | None = None,
    fraction: float | None = None,
    per_layer: bool = False,
) -> np.ndarray:
  """Build gates `[L, N]` of 1.0 (kept) and 0.0 (pruned) for the least important heads.

  Give exactly one of `count` and `fraction`. Globally (`per_layer=False`)
  the `count` (or `round(fraction * L * N)`) lowest-scoring heads of all
  layers are pruned, so a layer can lose every head. Per layer, each layer
  loses its `count` (or `round(fraction * N)`) lowest-scoring heads. Ties go
  to the lower head index first.

  Returns:
    A float32 NumPy array `[L, N]`.
  """
  importance = np.asarray(importance, dtype=np.float64)
  if importance.ndim != 2:
    raise ValueError(f"`importance` should have shape [L, N], but got {importance.shape}")
  if (count is None) == (fraction is None):
    raise ValueError("give exactly one of `count` and `fraction`")
  num_layers, num_heads = importance.shape
  pool = num_heads if per_layer else num_layers * num_heads
  if fraction is not None:
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"`fraction` should be in [0, 1], but got {fraction}")
    count = int(round(fraction * pool))
  if not 0 <= count <= pool:
    raise ValueError(f"`count` should be in [0, {pool}], but got {count}")

  gates = np.ones_like(importance, dtype=np.float32)
  if per_layer:
    for layer in range(num_layers):
      order = np.argsort(importance[layer], kind="stable")
      gates[layer, order[:count]] = 0.0
  else:
    order = np.argsort(importance.reshape(-1), kind="stable")
    gates.reshape(-1)[order[:count]] = 0.0
  return gates


def pruning_order(importance: ArrayLike) -> np.ndarray:
  """Return flat head indices `l * N + n`, least important first (stable)."""
  return np.argsort(np.asarray(importance, dtype=np.float64).reshape(-1), kind="stable")


def gates_without(order: ArrayLike, count: int, gate_shape: tuple[int, int]) -> np.ndarray:
  """Build gates `[L, N]` with the first `count` heads of flat `order` set to 0."""
  gates = np.ones(gate_shape, dtype=np.float32)
  gates.reshape(-1)[np.asarray(order)[:count]] = 0.0
  return gates
