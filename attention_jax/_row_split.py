"""Causal attention as two calls when T does not fill whole query blocks.

The chunked kernel computes a causal call fastest when its diagonal squares
split (`Plan.split_diagonal`), which needs T to be a multiple of the query
block. Padding T up to one is cheap when it adds little (`_blocks.
padded_to_split`). When it would add much, as at T = 1100 with query
blocks of 1024, the first M rows that do fill whole blocks run as one
call with the split, and the T - M rows after them as a second call
(`_tile_sizes.choose` picks M).

Under bottom-right causal alignment, query row i attends to keys up to
i + S - T. So the first call takes keys [0, M + S - T), which keeps its
offset at S - T, and the second call takes every key, with the offset
S - (T - M) that puts its first row at position M + S - T. Each row's
softmax lies within one call, so the outputs and log-sum-exps are joined
along T, and JAX adds the two calls' key and value gradients. Only calls
whose options do not depend on a row's absolute index run in two: a
`score_mod` and dropout see the query index, so calls with them stay one.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp


def _bias_part(bias, start: int, stop: int, key_stop: int):
  """Slice rows `[start, stop)` and keys `[0, key_stop)` of a bias.

  The bias is broadcastable to `[..., T, S]`; a T or S axis of size 1 (or
  missing) is broadcast and stays as it is.
  """
  if bias is None:
    return None
  bias = jnp.asarray(bias)
  if bias.ndim >= 2 and bias.shape[-2] != 1:
    bias = bias[..., start:stop, :]
  if bias.ndim >= 1 and bias.shape[-1] != 1:
    bias = bias[..., :key_stop]
  return bias


def attend_in_two(attend: Callable, rows: int, query, key, value, bias, *,
                  return_residual: bool, **options):
  """Return `attend(query, key, value, bias, ...)` computed as two calls.

  `attend` is `chunked_attention`; `rows` is M, the query rows of the
  first call. `options` are the keyword arguments both calls share.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  query_length, key_length = query.shape[-3], key.shape[-3]
  tail = query_length - rows
  head_keys = key_length - tail
  head = attend(query[..., :rows, :, :], key[..., :head_keys, :, :],
                value[..., :head_keys, :, :],
                _bias_part(bias, 0, rows, head_keys),
                return_residual=True, **options)
  rest = attend(query[..., rows:, :, :], key, value,
                _bias_part(bias, rows, query_length, key_length),
                return_residual=True, **options)
  # Outputs are [..., T, N, H_v] and log-sum-exps [..., T, N].
  out = jnp.concatenate([head[0], rest[0]], axis=-3)
  if not return_residual:
    return out
  return out, jnp.concatenate([head[1], rest[1]], axis=-2)

