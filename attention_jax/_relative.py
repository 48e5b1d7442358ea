"""Absolute and relative positions of query-key pairs for score hooks.

`score_mod` and `mask_mod` receive a flat batch index and the indices
`q_index` and `kv_index` into the T and S axes, not positions. The helpers
here map those indices to positions in one of two ways:

* offset form (the default): key `s` sits at position `s` and query `t` at
  `query_offset + t`, with `query_offset = S - T` (bottom-right, like the
  causal mask) unless given as a scalar or an integer `[B...]` array;
* explicit form: integer `query_positions` `[T]` or `[B..., T]` and
  `key_positions` `[S]` or `[B..., S]`, for packed sequences or caches whose
  positions are not contiguous. A batched array needs the full batch shape
  of the attention call, because the hooks index it with the flat batch
  index.

Shape letters: B batch (any number of leading axes), T queries, S keys.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks

# (batch, q_index, kv_index) -> relative position `key - query`, int32.
RelativePositionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def check_positions(name: str, positions: ArrayLike, length: int,
                    layout: str) -> jax.Array:
  """Return `positions` as int32 after checking its dtype and last axis."""
  _checks.check_integer(name, positions)
  shape = _checks.shape_of(positions)
  if not shape or shape[-1] != length:
    raise ValueError(
        f"`{name}` should have shape {layout} with a last axis of "
        f"{length}, but got {shape}")
  return jnp.asarray(positions, jnp.int32)


def check_batch_shape(name: str, positions: jax.Array,
                      batch_shape: tuple[int, ...], layout: str) -> None:
  """Raise `ValueError` unless `positions` is `[L]` or `[B..., L]`."""
  if positions.ndim > 1 and tuple(positions.shape[:-1]) != batch_shape:
    raise ValueError(
        f"`{name}` should have shape {layout} with B... = {batch_shape}, "
        f"but got {positions.shape}")


def _lookup(table: jax.Array, batch: jax.Array, index: jax.Array):
  """Gather `table[batch, index]` from a flat `[B or 1, L]` table.

  Indices are clipped: the chunked path evaluates hooks on padded rows
  and columns, whose results it discards.
  """
  if table.shape[0] == 1:
    return jnp.take(table[0], index, mode="clip")
  return table.at[batch, index].get(mode="clip")


def _flat_offset(query_offset: ArrayLike) -> jax.Array:
  _checks.check_integer("query_offset", query_offset)
  return jnp.reshape(jnp.asarray(query_offset, jnp.int32), (-1,))


def query_position_fn(
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Return `(batch, q_index) -> position` of each query (int32)."""
  if query_positions is not None:
    if query_offset is not None:
      raise ValueError(
          "`query_offset` and `query_positions` should not both be given; "
          "`query_positions` already fixes every query's position")
    table = check_positions("query_positions", query_positions,
                            query_length, "[T] or [B..., T]")
    table = table.reshape(-1, query_length)
    return lambda batch, q_index: _lookup(table, batch, q_index)
  if query_offset is None:
    start = key_length - query_length
    return lambda batch, q_index: q_index + start
  offsets = _flat_offset(query_offset)
  if offsets.shape[0] == 1:
    return lambda batch, q_index: q_index + offsets[0]
  return lambda batch, q_index: (
      q_index + offsets.at[batch].get(mode="clip"))


def key_position_fn(
    key_length: int, *, key_positions: ArrayLike | None = None,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Return `(batch, kv_index) -> position` of each key (int32)."""
  if key_positions is None:
    return lambda batch, kv_index: kv_index
  table = check_positions("key_positions", key_positions, key_length,
                          "[S] or [B..., S]")
  table = table.reshape(-1, key_length)
  return lambda batch, kv_index: _lookup(table, batch, kv_index)


def relative_position_fn(
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> RelativePositionFn:
  """Return `(batch, q_index, kv_index) -> key position - query position`.

  Args:
    query_length: T.
    key_length: S.
    query_offset: position of query 0 (scalar or integer `[B...]`) in the
      offset form; defaults to `S - T`.
    query_positions: integer `[T]` or `[B..., T]`; give it together with
      `key_positions`.
    key_positions: integer `[S]` or `[B..., S]`.

  Raises:
    ValueError: if only one of the position arrays is given, both
      `query_offset` and `query_positions` are given, or a position array's
      last axis does not match T or S.
    TypeError: for non-integer positions or offsets.
  """
  if (query_positions is None) != (key_positions is None):
    raise ValueError(
        "`query_positions` and `key_positions` should be given together, "
        "but only one of them was given")
  query_fn = query_position_fn(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions)
  key_fn = key_position_fn(key_length, key_positions=key_positions)

  def relative(batch, q_index, kv_index):
    return key_fn(batch, kv_index) - query_fn(batch, q_index)

  return relative


def reference_indices(batch_shape: tuple[int, ...], num_heads: int,
                      query_length: int, key_length: int):
  """Return broadcastable (batch, head, q_index, kv_index) for
  `[B..., N, T, S]`, as the reference path passes them to `score_mod`."""
  flat_batch = 1
  for size in batch_shape:
    flat_batch *= size
  batch = jnp.arange(flat_batch, dtype=jnp.int32).reshape(
      *batch_shape, 1, 1, 1)
  head = jnp.arange(num_heads, dtype=jnp.int32)[:, None, None]
  q_index = jnp.arange(query_length, dtype=jnp.int32)[:, None]
  kv_index = jnp.arange(key_length, dtype=jnp.int32)
  return batch, head, q_index, kv_index


def implied_batch_shape(
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> tuple[int, ...]:
  """Return the batch shape B... that batched offsets or positions imply.

  Returns `()` when nothing depends on the batch.

  Raises:
    ValueError: if the batched arrays disagree on B....
  """
  shapes = {}
  if query_offset is not None and _checks.shape_of(query_offset):
    shapes["query_offset"] = _checks.shape_of(query_offset)
  for name, positions in (("query_positions", query_positions),
                          ("key_positions", key_positions)):
    if positions is not None and len(_checks.shape_of(positions)) > 1:
      shapes[name] = _checks.shape_of(positions)[:-1]
  if len(set(shapes.values())) > 1:
    described = ", ".join(f"`{name}` {shape}"
                          for name, shape in shapes.items())
    raise ValueError(
        f"batched offsets and positions should share the batch shape "
        f"B..., but got {described}")
  return next(iter(shapes.values()), ())


def dense_relative_positions(
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> jax.Array:
  """Return `key position - query position` as int32 `[B..., 1, T, S]`,
  or `[1, T, S]` when no position depends on the batch.

  Arguments are those of `relative_position_fn`.
  """
  relative = relative_position_fn(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)
  batch_shape = implied_batch_shape(query_offset, query_positions,
                                    key_positions)
  batch, _, q_index, kv_index = reference_indices(
      batch_shape, 1, query_length, key_length)
  distance = relative(batch, q_index, kv_index)
  return jnp.reshape(distance, (1,) * max(0, 3 - distance.ndim)
                     + distance.shape)
