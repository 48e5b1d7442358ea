"""Training monitors: attention gradient norms and attention-entropy collapse."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_ATTENTION_NAMES = ("attention", "attn")

# Defaults for `flag_gradients`.
# NOTE: rough starting points, not measured on any model. Tune both to the
# model's scale and the learning rate.
DEFAULT_VANISHING_THRESHOLD = 1e-7
DEFAULT_EXPLODING_THRESHOLD = 1e3


def _key_name(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def attention_gradient_norms(
    grads: Any, names: Sequence[str] = DEFAULT_ATTENTION_NAMES) -> dict[str, jax.Array]:
  """Compute the global L2 norm of each attention module's gradients.

  A leaf belongs to the module at the first path entry whose name contains
  one of `names` (for example `layers/0/attention`); leaves outside any
  attention module are skipped.

  Args:
    grads: a gradient pytree, such as the `nnx.State` from `nnx.grad` or a
      nested dict.
    names: substrings that mark an attention module in a path.

  Returns:
    An ordered dict mapping the module path (entries joined by "/") to a
    scalar norm.
  """
  squares: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    parts = [_key_name(entry) for entry in path]
    for index, part in enumerate(parts):
      if any(name in part for name in names):
        group = "/".join(parts[:index + 1])
        value = jnp.sum(jnp.square(jnp.asarray(leaf, dtype=jnp.float32)))
        squares[group] = squares.get(group, 0.0) + value
        break
  return {group: jnp.sqrt(total) for group, total in squares.items()}


def flag_gradients(
    norms: dict[str, Any], *,
    vanishing_threshold: float = DEFAULT_VANISHING_THRESHOLD,
    exploding_threshold: float = DEFAULT_EXPLODING_THRESHOLD,
) -> dict[str, str]:
  """Label each norm "vanishing" (< `vanishing_threshold`), "exploding"
  (> `exploding_threshold`, or not finite) or "ok"."""
  labels = {}
  for group, norm in norms.items():
    value = float(norm)
    if not np.isfinite(value) or value > exploding_threshold:
      labels[group] = "exploding"
    elif value < vanishing_threshold:
      labels[group] = "vanishing"
    else:
      labels[group] = "ok"
  return labels


def detect_entropy_collapse(
    history: Sequence[float], *, threshold: float = 0.1, drop_factor: float = 0.5,
    window: int = 100) -> bool:
  """Tell whether mean normalized attention entropy has collapsed.

  Collapse is either the latest value below `threshold`, or the latest
  value below `drop_factor` times the value `window` entries earlier (with
  `drop_factor` 0.5, a halving within the window).

  Args:
    history: mean normalized entropy (in [0, 1]) per recorded step, oldest
      first.
  """
  if not history:
    return False
  latest = float(history[-1])
  if latest < threshold:
    return True
  if len(history) > window:
    earlier = float(history[-1 - window])
    return latest < drop_factor * earlier
  return False


@dataclasses.dataclass
class EntropyCollapseMonitor:
  """Record mean normalized entropy per step and flag collapse (see `detect_entropy_collapse`)."""

  threshold: float = 0.1
  drop_factor: float = 0.5
  window: int = 100
  steps: list[int] = dataclasses.field(default_factory=list)
  values: list[float] = dataclasses.field(default_factory=list)

  def update(self, step: int, mean_normalized_entropy: float) -> bool:
    """Record a value and return True when it shows collapse."""
    self.steps.append(int(step))
    self.values.append(float(mean_normalized_entropy))
    return detect_entropy_collapse(
        self.values, threshold=self.threshold, drop_factor=self.drop_factor,
        window=self.window)
