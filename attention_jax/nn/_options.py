"""Option handling shared by the NNX and Linen modules."""

from __future__ import annotations

import jax


def resolve_deterministic(
    dropout_rate: float, call_value: bool | None, module_value: bool | None
) -> bool:
  """Return whether dropout is off for this call.

  The call argument wins over the module attribute. With dropout enabled
  and neither set, raise instead of guessing between training and
  inference.
  """
  if dropout_rate == 0.0:
    return True
  for value in (call_value, module_value):
    if value is not None:
      return bool(value)
  raise ValueError(
      "`deterministic` is required when `dropout_rate` > 0: pass it to the "
      "constructor or the call (True at inference, False in training)")


def check_features(name: str, inputs: jax.Array, expected: int) -> None:
  """Raise `ValueError` unless the last axis of `inputs` has `expected` size."""
  if inputs.ndim < 2 or inputs.shape[-1] != expected:
    raise ValueError(
        f"`{name}` should have shape [B..., L, {expected}] (features last), "
        f"but got {inputs.shape}")
