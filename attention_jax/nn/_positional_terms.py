"""Positional terms of an attention call, shared by the NNX and Linen modules.

A positional module is called as
`module(query, key, *, query_positions=None, key_positions=None)` on the
projected query `[B..., T, N, H]` and key `[B..., S, K, H]` and returns
`PositionalTerms`. Positions of None mean the offset form: key s at
position s and query t at `S - T + t` (bottom-right, like the causal
mask). `attend` then runs attention with those terms.

The functions here build the terms from a module's parameters, so the NNX
modules and their Linen twins share one implementation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _dispatch
from attention_jax import masks as masks_lib
from attention_jax.alibi import alibi_score_mod
from attention_jax.alibi import alibi_slopes
from attention_jax.dot_product import dot_product_attention
from attention_jax.rope import apply_rope
from attention_jax.shaw import shaw_attention
from attention_jax.sinks import attention_sink_factor
from attention_jax.t5_buckets import t5_score_mod


@dataclasses.dataclass(frozen=True)
class PositionalTerms:
  """The contribution of a positional module to one attention call.

  Attributes:
    query: `[B..., T, N, H]`, the query to attend with (rotated by RoPE).
    key: `[B..., S, K, H]`, the key to attend with.
    score_mod: a `score_mod` hook, or None.
    score_mod_params: its parameters (gradients flow into them).
    sinks: `[N]` sink logits, or None.
    relative_keys: Shaw et al. `a_K` `[2k+1, H]`, or None.
    relative_values: Shaw et al. `a_V` `[2k+1, H_v]`, or None.
  """

  query: jax.Array
  key: jax.Array
  score_mod: Callable | None = None
  score_mod_params: Any = None
  sinks: jax.Array | None = None
  relative_keys: jax.Array | None = None
  relative_values: jax.Array | None = None


def check_position_pair(query_positions, key_positions) -> None:
  if (query_positions is None) != (key_positions is None):
    raise ValueError(
        "`query_positions` and `key_positions` should be given together, "
        "but only one of them was given")


def check_num_heads(module_name: str, query: jax.Array,
                    num_heads: int) -> None:
  if query.shape[-2] != num_heads:
    raise ValueError(
        f"{module_name} was built for N={num_heads} query heads, but the "
        f"query has shape {query.shape} (expected [B..., T, N, H])")


def rotary_terms(query, key, query_positions, key_positions, *, base,
                 rotary_dim, pairing) -> PositionalTerms:
  """Return terms with RoPE applied to the query and the key."""
  check_position_pair(query_positions, key_positions)
  if query_positions is None:
    query_length, key_length = query.shape[-3], key.shape[-3]
    query_positions = masks_lib.query_positions(query_length, key_length)
    key_positions = jnp.arange(key_length, dtype=jnp.int32)
  options = dict(base=base, rotary_dim=rotary_dim, pairing=pairing)
  return PositionalTerms(
      query=apply_rope(query, query_positions, **options),
      key=apply_rope(key, key_positions, **options))


def alibi_terms(query, key, query_positions, key_positions, *,
                num_heads) -> PositionalTerms:
  """Return terms with an ALiBi `score_mod`."""
  check_position_pair(query_positions, key_positions)
  check_num_heads("ALiBi", query, num_heads)
  score_mod = alibi_score_mod(
      alibi_slopes(num_heads), query.shape[-3], key.shape[-3],
      query_positions=query_positions, key_positions=key_positions)
  return PositionalTerms(query=query, key=key, score_mod=score_mod)


def t5_terms(query, key, query_positions, key_positions, *, table,
             bidirectional, max_distance) -> PositionalTerms:
  """Return terms with a T5 bucket `score_mod` reading `table`."""
  check_position_pair(query_positions, key_positions)
  check_num_heads("T5RelativeBias", query, table.shape[-1])
  score_mod = t5_score_mod(
      query.shape[-3], key.shape[-3], bidirectional=bidirectional,
      max_distance=max_distance, query_positions=query_positions,
      key_positions=key_positions)
  return PositionalTerms(query=query, key=key, score_mod=score_mod,
                         score_mod_params=table)


def attend(
    terms: PositionalTerms,
    value: jax.Array,
    bias: ArrayLike | None,
    mask: ArrayLike | None,
    *,
    query_positions: ArrayLike | None,
    key_positions: ArrayLike | None,
    return_weights: bool,
    implementation: str | None,
    **options,
) -> tuple[jax.Array, jax.Array | None]:
  """Run attention with the terms; return `(heads, weights or None)`.

  Args:
    terms: from a positional module, or `PositionalTerms(query, key)`.
    value: `[B..., S, K, H_v]`.
    bias, mask: as in `dot_product_attention`.
    query_positions, key_positions: the positions the module received,
      needed again by Shaw et al. relative positions.
    return_weights: also return the `[B..., N, T, S]` weights.
    implementation: as in `dot_product_attention`.
    **options: the masking and dropout keyword arguments of
      `dot_product_attention`.
  """
  has_relative = (terms.relative_keys is not None
                  or terms.relative_values is not None)
  hooks = dict(score_mod=terms.score_mod,
               score_mod_params=terms.score_mod_params)
  if has_relative:
    result = shaw_attention(
        terms.query, terms.key, value, terms.relative_keys,
        terms.relative_values, bias, mask, query_positions=query_positions,
        key_positions=key_positions, implementation=implementation,
        return_residual=True, return_weights=return_weights, **hooks,
        **options)
    heads, logsumexp = result[0], result[1]
    weights = result[2] if return_weights else None
  elif terms.sinks is not None:
    chosen = _dispatch.choose_implementation(
        implementation, terms.query, terms.key, return_weights=return_weights)
    heads, logsumexp, weights = _dispatch.attention_with_residual(
        terms.query, terms.key, value, bias, mask, implementation=chosen,
        return_weights=return_weights, **hooks, **options)
  else:
    result = dot_product_attention(
        terms.query, terms.key, value, bias, mask,
        implementation=implementation, return_weights=return_weights,
        **hooks, **options)
    heads, weights = result if return_weights else (result, None)
    return heads, weights

  if terms.sinks is not None:
    factor = attention_sink_factor(logsumexp, terms.sinks)
    heads = (heads.astype(jnp.float32) * factor[..., None]).astype(
        heads.dtype)
    if weights is not None:
      row_factor = jnp.swapaxes(factor, -1, -2)[..., None]
      weights = (weights.astype(jnp.float32) * row_factor).astype(
          weights.dtype)
  return heads, weights


def check_positions_need_module(position, query_positions,
                                key_positions) -> None:
  """Raise unless positions come with a positional module to use them."""
  if position is None and (query_positions is not None
                           or key_positions is not None):
    raise ValueError(
        "`query_positions` and `key_positions` drive a positional module; "
        "pass `position=` to the constructor to use them")


def positional_terms(position, query, key, query_positions,
                     key_positions) -> PositionalTerms:
  """Call the positional module, or return the plain query and key."""
  check_positions_need_module(position, query_positions, key_positions)
  if position is None:
    return PositionalTerms(query=query, key=key)
  terms = position(query, key, query_positions=query_positions,
                   key_positions=key_positions)
  if not isinstance(terms, PositionalTerms):
    raise TypeError(
        "a positional module should return PositionalTerms, but "
        f"{type(position).__name__} returned {type(terms).__name__}")
  return terms

