"""Relative position representations (Shaw, Uszkoreit and Vaswani,
"Self-Attention with Relative Position Representations", NAACL 2018).

Learned embeddings of the clipped relative position
`d = clip(key position - query position, -k, k)`, shared by all heads:

* relative keys `a_K` `[2k+1, H]` add `scale * q_t . a_K[d]` to each logit;
* relative values `a_V` `[2k+1, H_v]` add `sum_s p_ts a_V[d]` to each
  output, with `p_ts` the attention weights (after dropout).

Row r of a table is the embedding of distance `r - k`. The relative-key
term is added like a `score_mod`, after logit soft-capping and the bias.

Neither path builds a `[T, S, H]` tensor. The relative-key term is a
`[B..., T, N, 2k+1]` table of `scale * q . a_K` that a `score_mod` reads.
For relative values the reference path sums the `[B..., N, T, S]` weights
per distance bucket. The chunked path, whose memory is linear in T and S,
gets the mass of each bucket from the log-sum-exp `lse` of the main call:

* the `2k - 1` interior buckets `|d| < k` each hold one key per query, on
  a diagonal band whose logits it recomputes from the query and the
  gathered keys, with every mask, so `p = exp(logit - lse)`;
* the two edge buckets `d <= -k` and `d >= k` hold the keys left and right
  of the band; one extra chunked call per edge, restricted to it by a
  `mask_mod`, returns the edge's log-sum-exp `lse_edge` (and, with
  dropout, the kept fraction), so the edge mass is `exp(lse_edge - lse)`.
  An edge that the causal or window mask empties is skipped.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads, K key/value heads, H head dimension, H_v value head
dimension, k the maximum relative distance, D = 2k - 1 interior buckets.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import _dispatch
from attention_jax import _relative
from attention_jax import _score_mods
from attention_jax import _shaw_values
from attention_jax import scores as scores_lib

_F32 = jnp.float32


def _table_distance(name: str, table: jax.Array, width: int,
                    width_name: str) -> int:
  """Validate a `[2k+1, width]` table and return k."""
  _checks.check_floating(name, table)
  if (table.ndim != 2 or table.shape[0] < 3 or table.shape[0] % 2 == 0
      or table.shape[1] != width):
    raise ValueError(
        f"`{name}` should have shape [2k+1, {width_name}] with k >= 1 and "
        f"{width_name}={width}, but got {table.shape}")
  return (table.shape[0] - 1) // 2


def _max_distance(relative_keys, relative_values, head_dim: int,
                  value_dim: int) -> int | None:
  distances = []
  if relative_keys is not None:
    distances.append(_table_distance("relative_keys", relative_keys,
                                     head_dim, "H"))
  if relative_values is not None:
    distances.append(_table_distance("relative_values", relative_values,
                                     value_dim, "H_v"))
  if len(set(distances)) > 1:
    raise ValueError(
        "`relative_keys` and `relative_values` should have the same number "
        f"of rows 2k+1, but got {relative_keys.shape[0]} and "
        f"{relative_values.shape[0]}")
  return distances[0] if distances else None


def shaw_relative_key_logits(
    query: ArrayLike, relative_keys: ArrayLike, *, scale: float | None = None,
) -> jax.Array:
  """Return `scale * q . a_K[r]` for every query and distance bucket.

  Args:
    query: `[B..., T, N, H]`.
    relative_keys: `[2k+1, H]`.
    scale: logit multiplier; None means `1 / sqrt(H)`.

  Returns:
    float32 `[B..., T, N, 2k+1]`, the `score_mod_params` of
    `shaw_score_mod`.
  """
  query, relative_keys = jnp.asarray(query), jnp.asarray(relative_keys)
  _checks.check_floating("query", query)
  _checks.check_rank("query", query, 3, "[B..., T, N, H]")
  _table_distance("relative_keys", relative_keys, query.shape[-1], "H")
  scale = scores_lib.default_scale(query.shape[-1]) if scale is None else scale
  dtype = jnp.promote_types(query.dtype, relative_keys.dtype)
  logits = jnp.einsum("...tnh,rh->...tnr", query.astype(dtype),
                      relative_keys.astype(dtype),
                      preferred_element_type=jnp.promote_types(dtype, _F32))
  return logits * jnp.asarray(scale, logits.dtype)


def shaw_score_mod(
    query_length: int,
    key_length: int,
    *,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
) -> Callable:
  """Return a `score_mod` that adds the relative-key logit of each pair.

  Use it with `score_mod_params=shaw_relative_key_logits(query, a_K)`; k
  is read from that table, and gradients flow through it into the query
  and `a_K` on every path.

  Args:
    query_length: T.
    key_length: S.
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
    max_distance = (table.shape[-1] - 1) // 2
    bucket = jnp.clip(relative(batch, q_index, kv_index), -max_distance,
                      max_distance) + max_distance
    # [B..., T, N, 2k+1] -> [B, T, N, 2k+1] for the flat batch index;
    # padded query rows of the chunked path read a clipped row.
    flat = table.reshape((-1,) + table.shape[-3:])
    if flat.shape[0] == 1:
      term = flat[0].at[q_index, head, bucket].get(mode="clip")
    else:
      term = flat.at[batch, q_index, head, bucket].get(mode="clip")
    return score + term.astype(score.dtype)

  return score_mod


def shaw_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    relative_keys: ArrayLike | None = None,
    relative_values: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_offset: ArrayLike | None = None,
    query_positions: ArrayLike | None = None,
    key_positions: ArrayLike | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    logits_soft_cap: float | None = None,
    score_mod: Callable | None = None,
    score_mod_params=None,
    mask_mod: Callable | None = None,
    implementation: str | None = None,
    return_residual: bool = False,
    return_weights: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
):
  """Dot-product attention with Shaw et al. relative position embeddings.

  Computes, for the clipped relative position
  `d_ts = clip(key pos - query pos, -k, k)`,

    logit_ts = scale * q_t . (k_s + a_K[d_ts]),
    out_t = sum_s p_ts (v_s + a_V[d_ts]),

  with the masks, bias and hooks of `dot_product_attention` (the
  relative-key term is added after soft-capping and the bias, before a
  `score_mod`). Either table may be None to leave that term out.

  Positions follow the offset form by default: key s at s, query t at
  `query_offset + t` with `query_offset` defaulting to `S - T`, as for the
  causal mask. `query_positions` and `key_positions` replace them for the
  relative distances only, and masks keep using `query_offset`. Relative
  values with position arrays need the reference path, because the
  chunked path finds each interior bucket on a diagonal.

  Args:
    query: `[B..., T, N, H]`.
    key: `[B..., S, K, H]`.
    value: `[B..., S, K, H_v]`.
    relative_keys: `a_K` `[2k+1, H]`, or None.
    relative_values: `a_V` `[2k+1, H_v]` with the same k, or None.
    bias, mask, scale, is_causal, query_seq_lengths,
    key_value_seq_lengths, local_window_size, query_offset,
    query_segment_ids, key_segment_ids, dropout_rate, dropout_rng,
    deterministic, logits_soft_cap, score_mod, score_mod_params, mask_mod:
      as in `dot_product_attention`; a `score_mod` runs before the
      relative-key term.
    query_positions: integer `[T]` or `[B..., T]`; give `key_positions`
      too.
    key_positions: integer `[S]` or `[B..., S]`.
    implementation: `"reference"`, `"xla"`, `"chunked"` or None. None
      picks like `dot_product_attention`, but takes the reference path for
      relative values with position arrays.
    return_residual: also return the log-sum-exp `[B..., T, N]` of the
      logits (relative-key term included).
    return_weights: also return the weights `[B..., N, T, S]` (reference
      path).
    block_q, block_k: tile sizes of the chunked path.

  Returns:
    The output `[B..., T, N, H_v]` in the dtype of `value`; with
    `return_residual` or `return_weights`, a tuple of the output followed
    by the residual and then the weights, for the ones requested.

  Raises:
    ValueError: for tables of the wrong shape, position arrays that do not
      match the batch, or `implementation="chunked"` with relative values
      and position arrays; and for what `dot_product_attention` rejects.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  scores_lib.check_query_key(query, key)
  _checks.check_value(key, value)
  relative_keys = None if relative_keys is None else jnp.asarray(relative_keys)
  relative_values = (None if relative_values is None
                     else jnp.asarray(relative_values))
  max_distance = _max_distance(relative_keys, relative_values,
                               query.shape[-1], value.shape[-1])
  batch, query_length = tuple(query.shape[:-3]), query.shape[-3]
  key_length = key.shape[-3]
  has_positions = query_positions is not None or key_positions is not None
  if has_positions:
    for name, positions, length, layout in (
        ("query_positions", query_positions, query_length, "[B..., T]"),
        ("key_positions", key_positions, key_length, "[B..., S]")):
      if positions is not None:
        _relative.check_batch_shape(
            name, _relative.check_positions(name, positions, length, layout),
            batch, layout)

  if implementation is None and has_positions and relative_values is not None:
    implementation = "reference"
  chosen = _dispatch.choose_implementation(
      implementation, query, key, return_weights=return_weights)
  if chosen == "chunked" and has_positions and relative_values is not None:
    raise ValueError(
        "implementation='chunked' finds relative-value buckets on "
        "diagonals, so it needs the offset form of positions; pass "
        "`query_offset` instead of `query_positions`/`key_positions`, or "
        "use implementation='reference'")

  scale = scores_lib.default_scale(query.shape[-1]) if scale is None else scale
  relative_offset = None if has_positions else query_offset
  if relative_keys is not None:
    key_mod = shaw_score_mod(
        query_length, key_length, query_offset=relative_offset,
        query_positions=query_positions, key_positions=key_positions)
    # NOTE: the chunked backward pass adds a gradient of the whole
    # [B..., T, N, 2k+1] table in every tile, so that step costs
    # O(tiles * T * N * k) rather than O(T * N * k).
    key_table = shaw_relative_key_logits(query, relative_keys, scale=scale)
    score_mod, score_mod_params = _score_mods.compose_score_mods(
        (score_mod, score_mod_params), (key_mod, key_table))

  if deterministic or dropout_rng is None:
    dropout_rate = 0.0
  options = dict(
      scale=scale, is_causal=is_causal, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size, query_offset=query_offset,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      logits_soft_cap=logits_soft_cap, score_mod=score_mod,
      score_mod_params=score_mod_params, mask_mod=mask_mod)
  blocks = dict(block_q=block_q, block_k=block_k)
  need_weights = return_weights or (relative_values is not None
                                    and chosen == "reference")
  out, logsumexp, weights = _dispatch.attention_with_residual(
      query, key, value, bias, mask, implementation=chosen,
      return_weights=need_weights, **blocks, **options)

  if relative_values is not None:
    if chosen == "reference":
      masses = _shaw_values.reference_bucket_masses(
          weights, max_distance, query_length=query_length,
          key_length=key_length, query_offset=relative_offset,
          query_positions=query_positions, key_positions=key_positions)
    else:
      masses = _shaw_values.chunked_bucket_masses(
          query, key, logsumexp, max_distance,
          dict(options, bias=bias, mask=mask), blocks)
    relative_out = jnp.einsum("...ntr,rv->...tnv", masses,
                              relative_values.astype(_F32))
    out = (out.astype(_F32) + relative_out).astype(out.dtype)

  extras = []
  if return_residual:
    extras.append(logsumexp)
  if return_weights:
    extras.append(weights)
  if extras:
    return (out, *extras)
  return out
