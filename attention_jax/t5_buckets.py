"""T5 relative position buckets and the learned per-head bias they index.

T5 (Raffel et al., "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", JMLR 2020) adds a learned scalar per
head and bucket of the relative position `key position - query position`
to the logits. In each direction, half of the buckets are exact (one per
distance 0, 1, ..., max_exact - 1) and half are logarithmically spaced up
to `max_distance`. Longer distances share the last bucket.

`t5_score_mod` looks the bias up per tile, so the chunked path never
builds a `[T, S]` bias; pass the `[num_buckets, N]` table as
`score_mod_params` and gradients flow into it on every path.
`t5_relative_bias` builds the dense bias.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import _relative


def _check_bucket_options(num_buckets: int, max_distance: int,
                          bidirectional: bool) -> int:
  """Validate the options and return `max_exact`, the exact buckets per
  direction."""
  num_buckets, max_distance = int(num_buckets), int(max_distance)
  per_direction = num_buckets // 2 if bidirectional else num_buckets
  max_exact = per_direction // 2
  if max_exact < 1:
    minimum = 4 if bidirectional else 2
    raise ValueError(
        f"`num_buckets` should be at least {minimum} with "
        f"bidirectional={bidirectional}, but got {num_buckets}")
  if max_distance <= max_exact:
    raise ValueError(
        f"`max_distance` should exceed the {max_exact} exact buckets per "
        f"direction, but got {max_distance}")
  return max_exact


def t5_relative_position_bucket(
    relative_position: ArrayLike,
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
  """Return the T5 bucket of each relative position.

  With `n = query position - key position` (so `n > 0` for keys before the
  query):

  * bidirectional: `num_buckets // 2` buckets per direction; keys after
    the query (`n < 0`) use the upper half, offset by `num_buckets // 2`,
    and `n` becomes `|n|`;
  * causal (unidirectional): keys after the query share bucket 0 with
    `n = 0`.

  Within a direction of M buckets, distances below `max_exact = M // 2`
  get their own bucket; a longer distance n gets
  `max_exact + floor(log(n / max_exact) / log(max_distance / max_exact)
  * (M - max_exact))`, at most `M - 1`. As in T5, the logarithm is
  computed in float32.

  Args:
    relative_position: integer array of `key position - query position`.
    bidirectional: whether keys after the query get their own buckets.
    num_buckets: total number of buckets (both directions together).
    max_distance: distance from which every longer distance shares the
      last bucket of its direction.

  Returns:
    int32 buckets in `[0, num_buckets)`, shaped like `relative_position`.

  Raises:
    ValueError: for fewer than one exact bucket per direction, or a
      `max_distance` not above the exact buckets.
    TypeError: for a non-integer `relative_position`.
  """
  _checks.check_integer("relative_position", relative_position)
  max_exact = _check_bucket_options(num_buckets, max_distance, bidirectional)
  distance = -jnp.asarray(relative_position, jnp.int32)
  bucket = jnp.zeros_like(distance)
  per_direction = int(num_buckets)
  if bidirectional:
    per_direction //= 2
    bucket = jnp.where(distance < 0, per_direction, 0)
    distance = jnp.abs(distance)
  else:
    distance = jnp.maximum(distance, 0)

  # Clamp before the logarithm so that exact distances (and 0) never
  # reach log(0); `where` picks the exact bucket for them.
  long_distance = jnp.maximum(distance, max_exact).astype(jnp.float32)
  ratio = jnp.log(long_distance / max_exact) / jnp.float32(
      math.log(int(max_distance) / max_exact))
  logarithmic = max_exact + (
      ratio * jnp.float32(per_direction - max_exact)).astype(jnp.int32)
  logarithmic = jnp.minimum(logarithmic, per_direction - 1)
  return bucket + jnp.where(distance < max_exact, distance, logarithmic)


def _check_table(table: ArrayLike) -> jax.Array:
  table = jnp.asarray(table)
  if table.ndim != 2:
    raise ValueError(
        f"`table` should have shape [num_buckets, N], but got {table.shape}")
  _checks.check_floating("table", table)
  return table


def t5_score_mod(
    query_length: int,
    key_length: int,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> Callable:
  """Return a `score_mod` that adds `table[bucket, head]` to each logit.

  Use it with `score_mod_params=table`, a `[num_buckets, N]` array; the
  number of buckets is read from the table.

  Args:
    query_length: T.
    key_length: S.
    bidirectional, max_distance: as in `t5_relative_position_bucket`.
    query_offset: position of the first query (scalar or integer
      `[B...]`); defaults to `S - T`, the bottom-right alignment of the
      causal mask.
    query_positions: integer `[T]` or `[B..., T]` positions of the queries,
      instead of the offset form; give `key_positions` too.
    key_positions: integer `[S]` or `[B..., S]` positions of the keys.

  Returns:
    `score_mod(score, batch, head, q_index, kv_index, table)`.
  """
  relative = _relative.relative_position_fn(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)

  def score_mod(score, batch, head, q_index, kv_index, table):
    table = _check_table(table)
    bucket = t5_relative_position_bucket(
        relative(batch, q_index, kv_index), bidirectional=bidirectional,
        num_buckets=table.shape[0], max_distance=max_distance)
    return score + table[bucket, head].astype(score.dtype)

  return score_mod


def t5_relative_bias(
    table: ArrayLike,
    query_length: int,
    key_length: int,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> jax.Array:
  """Return the dense T5 bias `table[bucket(key pos - query pos), n]`.

  Memory grows with T * S; for long sequences use `t5_score_mod` instead.
  Arguments are those of `t5_score_mod`, with `table` `[num_buckets, N]`.

  Returns:
    `[N, T, S]`, or `[B..., N, T, S]` when the offset or positions are
    batched, in the dtype of `table`; pass it as `bias`.
  """
  table = _check_table(table)
  distance = _relative.dense_relative_positions(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)
  bucket = t5_relative_position_bucket(
      distance, bidirectional=bidirectional, num_buckets=table.shape[0],
      max_distance=max_distance)
  # [B..., 1, T, S] buckets -> [B..., T, S, N] -> [B..., N, T, S]
  return jnp.moveaxis(table[bucket[..., 0, :, :]], -1, -3)
