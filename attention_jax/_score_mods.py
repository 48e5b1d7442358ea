"""Chaining of several `score_mod` hooks into one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compose_score_mods(
    *mods: tuple[Callable | None, Any],
) -> tuple[Callable | None, Any]:
  """Chain `(score_mod, score_mod_params)` pairs, applied in order.

  A pair with a None `score_mod` is skipped; a None params entry means the
  hook takes five arguments.

  Returns:
    `(score_mod, score_mod_params)` for one attention call: `(None, None)`
    when no hook is given, the pair itself when one is, and otherwise a
    six-argument hook whose params are the tuple of the parts' params (so
    gradients reach each of them).
  """
  present = [(mod, params) for mod, params in mods if mod is not None]
  if not present:
    return None, None
  if len(present) == 1:
    return present[0]
  hooks = tuple(mod for mod, _ in present)

  def composed(score, batch, head, q_index, kv_index, params):
    for hook, hook_params in zip(hooks, params):
      extra = () if hook_params is None else (hook_params,)
      score = hook(score, batch, head, q_index, kv_index, *extra)
    return score

  return composed, tuple(params for _, params in present)
