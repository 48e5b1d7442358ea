"""Shared steps of every attention function: mask assembly and the weighted
sum of values.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads, K key/value heads, H head dimension, H_v value head dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import masks as masks_lib


def validate_mask_options(
    batch_shape: tuple[int, ...],
    num_heads: int,
    query_length: int,
    key_length: int,
    *,
    mask: ArrayLike | None = None,
    is_causal: bool = False,
    query_offset: ArrayLike | None = None,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
) -> tuple[int, int] | None:
  """Validate every masking argument without building any mask.

  Returns:
    The normalized `(left, right)` window, or None.
  """
  del is_causal
  full_shape = (*batch_shape, num_heads, query_length, key_length)
  if mask is not None:
    _checks.check_bool("mask", mask)
    _checks.check_broadcastable("mask", mask, full_shape, "[B..., N, T, S]")
  if query_offset is not None:
    _checks.check_integer("query_offset", query_offset)
    offset_shape = _checks.shape_of(query_offset)
    if offset_shape not in ((), tuple(batch_shape)):
      raise ValueError(
          "`query_offset` should be a scalar or have shape [B...] = "
          f"{tuple(batch_shape)}, but got {offset_shape}")
  for name, lengths in (("query_seq_lengths", query_seq_lengths),
                        ("key_value_seq_lengths", key_value_seq_lengths)):
    if lengths is not None:
      _checks.check_integer(name, lengths)
      _checks.check_exact_shape(name, lengths, batch_shape, "[B...]")
  if (query_segment_ids is None) != (key_segment_ids is None):
    raise ValueError(
        "`query_segment_ids` and `key_segment_ids` should be given together, "
        "but only one of them was given")
  if query_segment_ids is not None:
    _checks.check_integer("query_segment_ids", query_segment_ids)
    _checks.check_integer("key_segment_ids", key_segment_ids)
    _checks.check_exact_shape("query_segment_ids", query_segment_ids,
                              (*batch_shape, query_length), "[B..., T]")
    _checks.check_exact_shape("key_segment_ids", key_segment_ids,
                              (*batch_shape, key_length), "[B..., S]")
  return _checks.normalize_window(local_window_size)


def build_mask(
    batch_shape: tuple[int, ...],
    num_heads: int,
    query_length: int,
    key_length: int,
    *,
    mask: ArrayLike | None = None,
    is_causal: bool = False,
    query_offset: ArrayLike | None = None,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
) -> jax.Array | None:
  """Validate every masking argument and return their combined mask.

  Returns:
    A boolean array broadcastable to `[B..., N, T, S]`, or None when nothing
    is masked.
  """
  window = validate_mask_options(
      batch_shape, num_heads, query_length, key_length, mask=mask,
      query_offset=query_offset, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids)

  parts = [None if mask is None else jnp.asarray(mask)]
  if is_causal:
    parts.append(masks_lib.causal_mask(
        query_length, key_length, query_offset=query_offset))
  if window is not None:
    parts.append(masks_lib.sliding_window_mask(
        query_length, key_length, window, query_offset=query_offset))
  parts.append(masks_lib.padding_mask(
      query_length, key_length,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths))
  if query_segment_ids is not None:
    parts.append(masks_lib.segment_mask(query_segment_ids, key_segment_ids))
  return masks_lib.combine_masks(*parts)


def zero_unreachable_keys(
    mask: jax.Array | None, *arrays: jax.Array
) -> tuple[jax.Array, ...]:
  """Set keys and values that no query may attend to to zero.

  A weight of 0 times a NaN or infinite key or value is still NaN, so keys
  that are masked for every query and head (padding, for example) are
  replaced before the matrix products. This keeps them inert in the output
  and in every gradient.

  Args:
    mask: boolean mask broadcastable to `[B..., N, T, S]`, or None.
    *arrays: arrays of shape `[B..., S, K, ...]`.
  """
  if mask is None:
    return arrays
  mask = jnp.asarray(mask)
  if mask.ndim < 3:
    # Give a `[T, S]` or `[S]` mask the head and query axes reduced below.
    mask = jnp.reshape(mask, (1,) * (3 - mask.ndim) + mask.shape)
  # Right-aligned like the mask itself: [B..., S], where B may be shorter.
  reachable = jnp.any(mask, axis=(-3, -2))
  results = []
  for array in arrays:
    keep = jnp.reshape(reachable, reachable.shape + (1, 1))
    results.append(jnp.where(keep, array, jnp.zeros((), array.dtype)))
  return tuple(results)


def weighted_values(weights: jax.Array, value: jax.Array) -> jax.Array:
  """Return the weighted sum of values with grouped-query head mapping.

  Query head n reads key/value head `n // (N // K)`.

  Args:
    weights: `[B..., N, T, S]` in the compute dtype (float32 or wider).
    value: `[B..., S, K, H_v]`.

  Returns:
    `[B..., T, N, H_v]` in the dtype of `value`.
  """
  *batch, num_heads, query_length, key_length = weights.shape
  num_kv_heads = value.shape[-2]
  grouped = weights.reshape(
      *batch, num_kv_heads, num_heads // num_kv_heads, query_length,
      key_length)
  out = jnp.einsum(
      "...kgts,...skv->...tkgv", grouped.astype(value.dtype), value,
      preferred_element_type=jnp.promote_types(value.dtype, jnp.float32))
  return out.reshape(*batch, query_length, num_heads,
                     value.shape[-1]).astype(value.dtype)


def modify_logits(
    logits: jax.Array,
    bias: jax.Array | None,
    *,
    logits_soft_cap: float | None,
    score_mod,
    indices: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None,
    score_mod_params=None,
) -> jax.Array:
  """Apply soft-capping, the bias and `score_mod` to scaled logits, in order.

  Soft-capping maps `x` to `cap * tanh(x / cap)`. `score_mod(score, batch,
  head, q_index, kv_index)` receives broadcastable integer index arrays and
  returns the new scores; with `score_mod_params` (any pytree of arrays) it
  is called as `score_mod(score, batch, head, q_index, kv_index, params)`.
  Every implementation applies the steps in this order, so they agree.
  """
  if logits_soft_cap is not None:
    cap = jnp.asarray(logits_soft_cap, logits.dtype)
    logits = cap * jnp.tanh(logits / cap)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  if score_mod is not None:
    extra = () if score_mod_params is None else (score_mod_params,)
    logits = score_mod(logits, *indices, *extra).astype(logits.dtype)
  return logits


def evaluate_mask_mod(mask_mod, indices) -> jax.Array:
  """Call `mask_mod(batch, head, q_index, kv_index)` and check its dtype."""
  allowed = jnp.asarray(mask_mod(*indices))
  if allowed.dtype != jnp.bool_:
    raise TypeError(
        "`mask_mod` should return a boolean array (True where attention is "
        f"allowed), but returned dtype {allowed.dtype}")
  return allowed
