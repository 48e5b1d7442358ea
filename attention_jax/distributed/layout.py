"""Sequence layouts across the devices of one mesh axis.

Ring attention shards the sequence axis of query, key and value over P
devices. Two layouts are supported:

* `"contiguous"`: device i stores positions `[i * L / P, (i + 1) * L / P)`,
  which is what `jax.sharding.PartitionSpec` gives a sequence in its
  natural order. Under a causal mask device 0 then has almost no keys to
  attend to while device P - 1 attends to all of them.
* `"zigzag"`: the sequence is cut into 2P chunks of `L / (2P)` positions
  and device i stores chunks i and 2P - 1 - i, one early and one late chunk,
  so every device does the same causal work. Reorder the sequence axis
  once upstream with `to_zigzag` (token ids, position ids, labels) and
  shard the reordered arrays contiguously. `from_zigzag` undoes the
  reordering.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Layout = Literal["contiguous", "zigzag"]
LAYOUTS: tuple[str, ...] = ("contiguous", "zigzag")


def check_layout(layout: str) -> None:
  """Raise `ValueError` unless `layout` is one of `LAYOUTS`."""
  if layout not in LAYOUTS:
    raise ValueError(
        f"`layout` should be one of {LAYOUTS}, but got {layout!r}")


def chunks_per_device(layout: Layout) -> int:
  """Return how many contiguous chunks of the sequence one device stores."""
  check_layout(layout)
  return 1 if layout == "contiguous" else 2


def check_divisible(name: str, length: int, num_devices: int,
                    layout: Layout) -> None:
  """Raise `ValueError` unless `length` splits into whole chunks per device."""
  if num_devices <= 0:
    raise ValueError(
        f"`num_devices` should be a positive integer, but got {num_devices}")
  per_device = chunks_per_device(layout)
  chunks = per_device * num_devices
  if length % chunks:
    raise ValueError(
        f"{name} should be divisible by {per_device} x {num_devices} "
        f"devices = {chunks} for layout={layout!r}, but got {length}")


def device_chunk_ids(num_devices: int, layout: Layout) -> np.ndarray:
  """Return the ids of the chunks that each device stores, in storage order.

  Returns:
    Integer `[P, 1]` for `"contiguous"` (device i stores chunk i of P) and
    `[P, 2]` for `"zigzag"` (device i stores chunks i and 2P - 1 - i of 2P).
  """
  check_layout(layout)
  devices = np.arange(num_devices)
  if layout == "contiguous":
    return devices[:, None]
  return np.stack([devices, 2 * num_devices - 1 - devices], axis=1)


def sequence_positions(length: int, num_devices: int,
                       layout: Layout = "zigzag") -> np.ndarray:
  """Return the original positions that each device stores under `layout`.

  Args:
    length: the sequence length L, divisible by P (`"contiguous"`) or 2P
      (`"zigzag"`).
    num_devices: P, the size of the mesh axis that shards the sequence.
    layout: `"contiguous"` or `"zigzag"`.

  Returns:
    Integer `[P, L / P]`; row i lists, in storage order, the positions of
    the original sequence that device i stores. Flattened, it is the
    permutation that `to_zigzag` applies (the identity for `"contiguous"`).

  Raises:
    ValueError: for an unknown layout or a length that does not split into
      whole chunks.
  """
  check_divisible("`length`", length, num_devices, layout)
  chunk_ids = device_chunk_ids(num_devices, layout)
  chunk_length = length // (num_devices * chunks_per_device(layout))
  offsets = np.arange(chunk_length)
  positions = chunk_ids[:, :, None] * chunk_length + offsets
  return positions.reshape(num_devices, -1)


def _check_axis(x: jax.Array, axis: int) -> int:
  if not -x.ndim <= axis < x.ndim:
    raise ValueError(
        f"`axis` should index one of the {x.ndim} dimensions of `x` (shape "
        f"{x.shape}), but got {axis}")
  return axis % x.ndim


def _zigzag_order(x: jax.Array, num_devices: int, axis: int) -> np.ndarray:
  """Return the original positions in zigzag order, `[L]`, for `x`'s axis."""
  axis = _check_axis(x, axis)
  check_divisible(f"the sequence axis {axis} of `x` (shape {x.shape})",
                  x.shape[axis], num_devices, "zigzag")
  return sequence_positions(x.shape[axis], num_devices, "zigzag").reshape(-1)


def to_zigzag(x: ArrayLike, num_devices: int, *, axis: int = 1) -> jax.Array:
  """Reorder the sequence axis of `x` into the zigzag layout.

  After reordering, the i-th of P equal contiguous shards of the sequence
  axis contains chunks i and 2P - 1 - i of the original sequence, so sharding
  the result over P devices with an ordinary `PartitionSpec` balances
  causal attention. Apply it once to everything indexed by position
  (inputs, position ids for RoPE, targets, loss masks).

  Args:
    x: an array whose `axis` is a sequence of length L divisible by 2P, for
      example token ids `[B, L]` or query `[B, T, N, H]`.
    num_devices: P, the size of the mesh axis that will shard the sequence.
    axis: the sequence axis; 1 for batch-first arrays.

  Returns:
    `x` with its sequence axis permuted; same shape and dtype.

  Raises:
    ValueError: if L is not divisible by 2P or `axis` is out of range.
  """
  x = jnp.asarray(x)
  return jnp.take(x, jnp.asarray(_zigzag_order(x, num_devices, axis)),
                  axis=_check_axis(x, axis))


def from_zigzag(x: ArrayLike, num_devices: int, *, axis: int = 1) -> jax.Array:
  """Restore the original order of a sequence axis reordered by `to_zigzag`.

  Args:
    x: an array whose `axis` is in the zigzag layout, of length L divisible
      by 2P.
    num_devices: P, as given to `to_zigzag`.
    axis: the sequence axis.

  Returns:
    `x` with its sequence axis in the original order.

  Raises:
    ValueError: if L is not divisible by 2P or `axis` is out of range.
  """
  x = jnp.asarray(x)
  order = _zigzag_order(x, num_devices, axis)
  return jnp.take(x, jnp.asarray(np.argsort(order)),
                  axis=_check_axis(x, axis))
