"""ALiBi: attention with linear biases (Press, Smith and Lewis, "Train Short,
Test Long", ICLR 2022).

Head n adds `-slope_n * |key position - query position|` to its logits.
Under a causal mask no key lies after its query, so this equals the
paper's bias `-slope_n * (query position - key position)`. Without one
(bidirectional attention), keys after the query are penalized by the same
distance.

`alibi_score_mod` computes the bias per tile inside the chunked path, so a
long sequence never builds a `[T, S]` bias; `alibi_bias` builds the dense
bias for the reference path and for tests.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from attention_jax import _relative


def _geometric_slopes(num_heads: int) -> list[float]:
  # The sequence that starts at 2^(-8/n) and multiplies by that ratio.
  return [2.0 ** (-8.0 * (index + 1) / num_heads)
          for index in range(num_heads)]


def alibi_slopes(num_heads: int) -> jax.Array:
  """Return the ALiBi slope of each head, `[N]` float32.

  For N a power of two the slopes are the geometric sequence
  `2^(-8/N), 2^(-16/N), ..., 2^(-8)`; 8 heads get `1/2, 1/4, ..., 1/256`.
  Otherwise, as in the paper, the first P slopes are those of the closest
  lower power of two P. The remaining `N - P` slopes are the 1st, 3rd,
  5th, ... slopes of the sequence for 2P heads, which fall between the
  first ones.

  Raises:
    ValueError: if `num_heads` is not positive.
  """
  num_heads = int(num_heads)
  if num_heads <= 0:
    raise ValueError(
        f"`num_heads` should be a positive integer, but got {num_heads}")
  power = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = _geometric_slopes(power)
  if power != num_heads:
    slopes += _geometric_slopes(2 * power)[0::2][:num_heads - power]
  return jnp.asarray(np.asarray(slopes, np.float32))


def _check_slopes(slopes: ArrayLike) -> jax.Array:
  slopes = jnp.asarray(slopes)
  if slopes.ndim != 1:
    raise ValueError(
        f"`slopes` should have shape [N], but got {slopes.shape}")
  if not jnp.issubdtype(slopes.dtype, jnp.floating):
    raise TypeError(
        f"`slopes` should have a floating-point dtype, but got "
        f"{slopes.dtype}")
  return slopes


def alibi_score_mod(
    slopes: ArrayLike,
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> Callable:
  """Return a `score_mod` that adds `-slope_n * |key pos - query pos|`.

  Pass the result as `score_mod` to `dot_product_attention` or
  `chunked_attention` for the same T and S. The slopes are constants of
  the returned function; ALiBi has no learned parameters.

  Args:
    slopes: `[N]`, usually `alibi_slopes(N)`.
    query_length: T.
    key_length: S.
    query_offset: position of the first query (scalar or integer
      `[B...]`); defaults to `S - T`, the bottom-right alignment of the
      causal mask. Use the `query_offset` given to the attention call.
    query_positions: integer `[T]` or `[B..., T]` positions of the queries,
      instead of the offset form; give `key_positions` too.
    key_positions: integer `[S]` or `[B..., S]` positions of the keys.

  Returns:
    `score_mod(score, batch, head, q_index, kv_index)`.
  """
  slopes = _check_slopes(slopes)
  relative = _relative.relative_position_fn(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)

  def score_mod(score, batch, head, q_index, kv_index):
    distance = jnp.abs(relative(batch, q_index, kv_index))
    slope = slopes.astype(score.dtype)[head]
    return score - slope * distance.astype(score.dtype)

  return score_mod


def alibi_bias(
    slopes: ArrayLike,
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> jax.Array:
  """Return the dense ALiBi bias `-slope_n * |key pos - query pos|`.

  Memory grows with T * S; for long sequences pass `alibi_score_mod` to
  the chunked path instead. Arguments are those of `alibi_score_mod`.

  Returns:
    float32 `[N, T, S]`, or `[B..., N, T, S]` when the offset or positions
    are batched; pass it as `bias`.
  """
  slopes = _check_slopes(slopes).astype(jnp.float32)
  distance = _relative.dense_relative_positions(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)
  return -slopes[:, None, None] * jnp.abs(distance).astype(jnp.float32)
