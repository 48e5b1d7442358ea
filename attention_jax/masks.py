"""Boolean attention masks.

Every mask is `True` where a query may attend to a key and broadcasts to
`[B..., N, T, S]`. Functions that need no batch information return `[T, S]`;
functions driven by per-example data return `[B..., 1, T, S]`.

Positions follow bottom-right causal alignment: with `T` queries and `S`
keys, query `t` sits at absolute position `S - T + t` unless a
`query_offset` is given, in which case it sits at `query_offset + t`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks


def query_positions(
    query_length: int, key_length: int, query_offset: ArrayLike | None = None
) -> jax.Array:
  """Return the absolute position of each query, shape `[T]` or `[B..., T]`.

  Args:
    query_length: T.
    key_length: S.
    query_offset: position of the first query, a scalar or an integer array
      of shape `[B...]`. Defaults to `S - T` (bottom-right alignment).
  """
  steps = jnp.arange(query_length, dtype=jnp.int32)
  if query_offset is None:
    return steps + (key_length - query_length)
  _checks.check_integer("query_offset", query_offset)
  offset = jnp.asarray(query_offset, dtype=jnp.int32)
  return offset[..., None] + steps


def _from_positions(allowed: jax.Array) -> jax.Array:
  # A batched query offset gives `[B..., T, S]`; insert the head axis so the
  # result broadcasts against `[B..., N, T, S]`.
  if allowed.ndim > 2:
    allowed = jnp.expand_dims(allowed, -3)
  return allowed


def causal_mask(
    query_length: int, key_length: int, *,
    query_offset: ArrayLike | None = None,
) -> jax.Array:
  """Return a causal mask: query at position p may attend to keys at positions <= p.

  Args:
    query_length: T.
    key_length: S.
    query_offset: position of the first query (scalar or `[B...]`); defaults
      to `S - T`, so the last query may attend to every key.

  Returns:
    A boolean array of shape `[T, S]`, or `[B..., 1, T, S]` for a batched
    offset.
  """
  positions = query_positions(query_length, key_length, query_offset)
  keys = jnp.arange(key_length, dtype=jnp.int32)
  return _from_positions(keys <= positions[..., :, None])


def sliding_window_mask(
    query_length: int, key_length: int,
    window: int | tuple[int, int], *,
    query_offset: ArrayLike | None = None,
) -> jax.Array:
  """Return a local-window mask.

  The query at position p may attend to keys in `[p - left, p + right]`, its own
  position included; `(W - 1, 0)` is a causal window of W keys.

  Args:
    query_length: T.
    key_length: S.
    window: `(left, right)`, or one int `w` for `(w, w)`.
    query_offset: position of the first query (scalar or `[B...]`); defaults
      to `S - T`.

  Returns:
    A boolean array of shape `[T, S]`, or `[B..., 1, T, S]` for a batched
    offset.
  """
  left, right = _checks.normalize_window(window)
  positions = query_positions(query_length, key_length, query_offset)
  keys = jnp.arange(key_length, dtype=jnp.int32)
  distance = keys - positions[..., :, None]
  return _from_positions((distance >= -left) & (distance <= right))


def padding_mask(
    query_length: int, key_length: int, *,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
) -> jax.Array | None:
  """Return a mask that hides padded queries and keys at the end of each row.

  Args:
    query_length: T.
    key_length: S.
    query_seq_lengths: integer array `[B...]`; query `t` is valid when
      `t < query_seq_lengths`.
    key_value_seq_lengths: integer array `[B...]`; key `s` is valid when
      `s < key_value_seq_lengths`.

  Returns:
    A boolean array of shape `[B..., 1, T, S]`, or None when both lengths
    are None.
  """
  masks = []
  if query_seq_lengths is not None:
    _checks.check_integer("query_seq_lengths", query_seq_lengths)
    lengths = jnp.asarray(query_seq_lengths)
    valid = jnp.arange(query_length) < lengths[..., None]
    masks.append(valid[..., None, :, None])
  if key_value_seq_lengths is not None:
    _checks.check_integer("key_value_seq_lengths", key_value_seq_lengths)
    lengths = jnp.asarray(key_value_seq_lengths)
    valid = jnp.arange(key_length) < lengths[..., None]
    masks.append(valid[..., None, None, :])
  return combine_masks(*masks)


def segment_mask(
    query_segment_ids: ArrayLike, key_segment_ids: ArrayLike
) -> jax.Array:
  """Return a mask for packed sequences: attend only within one segment.

  Args:
    query_segment_ids: integer array `[B..., T]`.
    key_segment_ids: integer array `[B..., S]`.

  Returns:
    A boolean array of shape `[B..., 1, T, S]`.
  """
  _checks.check_integer("query_segment_ids", query_segment_ids)
  _checks.check_integer("key_segment_ids", key_segment_ids)
  query_ids = jnp.asarray(query_segment_ids)
  key_ids = jnp.asarray(key_segment_ids)
  if query_ids.shape[:-1] != key_ids.shape[:-1]:
    raise ValueError(
        "`query_segment_ids` [B..., T] and `key_segment_ids` [B..., S] should "
        f"have the same batch shape, but got {query_ids.shape} and "
        f"{key_ids.shape}")
  same = query_ids[..., :, None] == key_ids[..., None, :]
  return same[..., None, :, :]


def combine_masks(*masks: ArrayLike | None) -> jax.Array | None:
  """Return the logical AND of the masks that are not None (None if none)."""
  present = [jnp.asarray(m) for m in masks if m is not None]
  if not present:
    return None
  for index, mask in enumerate(present):
    _checks.check_bool(f"masks[{index}]", mask)
  result = present[0]
  for mask in present[1:]:
    result = jnp.logical_and(result, mask)
  return result
