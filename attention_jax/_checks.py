"""Trace-time validation of user input.

Every check runs on static shapes and dtypes, so it costs nothing under
`jax.jit`. Messages name the argument, what was expected and what was
received.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
  """Return the shape of an array-like without copying it to the device."""
  return tuple(np.shape(x))


def check_floating(name: str, x: Any) -> None:
  """Raise `TypeError` unless `x` has a floating-point dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"`{name}` should have a floating-point dtype, but got {dtype}")


def check_rank(name: str, x: Any, min_rank: int, layout: str) -> None:
  """Raise `ValueError` unless `x` has at least `min_rank` dimensions."""
  shape = shape_of(x)
  if len(shape) < min_rank:
    raise ValueError(
        f"`{name}` should have shape {layout} with at least {min_rank} "
        f"dimensions, but got {shape}")


def check_bool(name: str, x: Any) -> None:
  """Raise `TypeError` unless `x` is a boolean array."""
  dtype = jnp.result_type(x)
  if dtype != jnp.bool_:
    raise TypeError(
        f"`{name}` should be a boolean array (True where attention is "
        f"allowed), but got dtype {dtype}; pass additive masks as `bias`")


def check_integer(name: str, x: Any) -> None:
  """Raise `TypeError` unless `x` has an integer dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"`{name}` should have an integer dtype, but got {dtype}")


def check_broadcastable(
    name: str, x: Any, target: Sequence[int], layout: str
) -> None:
  """Raise `ValueError` unless `x` broadcasts to `target` without growing it."""
  shape = shape_of(x)
  try:
    result = np.broadcast_shapes(shape, tuple(target))
  except ValueError:
    result = None
  if result != tuple(target):
    raise ValueError(
        f"`{name}` should broadcast to {layout} = {tuple(target)}, but got "
        f"{shape}")


def check_exact_shape(
    name: str, x: Any, expected: Sequence[int], layout: str
) -> None:
  """Raise `ValueError` unless `x` has exactly the shape `expected`."""
  shape = shape_of(x)
  if shape != tuple(expected):
    raise ValueError(
        f"`{name}` should have shape {layout} = {tuple(expected)}, but got "
        f"{shape}")


def check_dropout_rate(rate: float) -> None:
  """Raise `ValueError` unless 0 <= `rate` < 1."""
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(
        f"`dropout_rate` should be in [0, 1), but got {rate}")


def normalize_window(
    local_window_size: int | tuple[int, int] | None,
) -> tuple[int, int] | None:
  """Return a `(left, right)` window or None, validating the input.

  A single integer `w` means `(w, w)`, as in `jax.nn.dot_product_attention`.
  """
  if local_window_size is None:
    return None
  if isinstance(local_window_size, (int, np.integer)):
    window = (int(local_window_size), int(local_window_size))
  else:
    try:
      left, right = local_window_size
      window = (int(left), int(right))
    except (TypeError, ValueError):
      raise ValueError(
          "`local_window_size` should be an int or a (left, right) pair of "
          f"ints, but got {local_window_size!r}") from None
  if window[0] < 0 or window[1] < 0:
    raise ValueError(
        "`local_window_size` should be non-negative, but got "
        f"{local_window_size!r}")
  return window


def check_bias(bias: Any, full_shape: Sequence[int]) -> None:
  """Raise unless `bias` is floating and broadcasts to `[B..., N, T, S]`."""
  check_floating("bias", bias)
  check_broadcastable("bias", bias, full_shape, "[B..., N, T, S]")


def check_value(key: Any, value: Any) -> None:
  """Raise unless `value` is `[B..., S, K, H_v]` matching `key` `[B..., S, K, H]`."""
  check_floating("value", value)
  key_shape, value_shape = shape_of(key), shape_of(value)
  if len(value_shape) != len(key_shape) or value_shape[:-1] != key_shape[:-1]:
    raise ValueError(
        "`value` should have shape [B..., S, K, H_v] with B..., S, K = "
        f"{key_shape[:-1]} as in `key`, but got {value_shape}")


def check_soft_cap(logits_soft_cap: float | None) -> None:
  """Raise unless `logits_soft_cap` is None or positive."""
  if logits_soft_cap is not None and not float(logits_soft_cap) > 0:
    raise ValueError(
        f"`logits_soft_cap` should be positive, but got {logits_soft_cap}")
