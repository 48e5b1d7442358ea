"""Bucket masses for Shaw et al. relative values.

Relative values add `sum_r W_tr a_V[r]` to each output, where `W_tr` is the
attention mass that query t puts on keys at clipped distance r. The
reference path sums the weights directly; the chunked path rebuilds the
interior buckets from a band of diagonals and the two edge buckets from the
log-sum-exp of extra chunked calls, so no `[T, S]` array is built.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from attention_jax import _attend
from attention_jax import _checks
from attention_jax import _relative
from attention_jax import dropout as dropout_lib
from attention_jax import masks as masks_lib
from attention_jax.chunked import chunked_attention

_F32 = jnp.float32


def reference_bucket_masses(weights, max_distance, *, query_length,
                             key_length, query_offset, query_positions,
                             key_positions):
  """Return `[B..., N, T, 2k+1]`, the sum of the weights per bucket."""
  distance = _relative.dense_relative_positions(
      query_length, key_length, query_offset=query_offset,
      query_positions=query_positions, key_positions=key_positions)
  bucket = jnp.clip(distance[..., 0, :, :], -max_distance,
                    max_distance) + max_distance
  one_hot = jax.nn.one_hot(bucket, 2 * max_distance + 1, dtype=_F32)
  return jnp.einsum("...nts,...tsr->...ntr", weights.astype(_F32), one_hot)


def _gather_band(x: ArrayLike, kv_index: jax.Array, rank: int) -> jax.Array:
  """Gather a `[B..., N, T, S]`-broadcastable array at band columns.

  Args:
    x: broadcastable to `[B..., N, T, S]` (rank `rank`).
    kv_index: `[1, T, D]` or `[B..., 1, T, D]` key indices.

  Returns:
    `[..., T, D]`, broadcastable to `[B..., N, T, D]`.
  """
  x = jnp.asarray(x)
  x = x.reshape((1,) * (rank - x.ndim) + x.shape)
  if x.shape[-1] == 1:
    return x
  kv_index = kv_index.reshape((1,) * (rank - kv_index.ndim) + kv_index.shape)
  prefix = np.broadcast_shapes(x.shape[:-1], kv_index.shape[:-1])
  x = jnp.broadcast_to(x, prefix + x.shape[-1:])
  kv_index = jnp.broadcast_to(kv_index, prefix + kv_index.shape[-1:])
  return jnp.take_along_axis(x, kv_index, axis=-1)


def _band_masses(query, key, logsumexp, max_distance, options):
  """Return `[B..., N, T, 2k-1]`, the weight of each interior bucket.

  Interior bucket d (`|d| < k`) contains exactly the key at index
  `query position + d`, so its weight is `exp(logit - lse)` of that one
  logit, recomputed here with the masks, bias, soft cap, `score_mod` and
  dropout of the main call.
  """
  *batch, query_length, num_heads, head_dim = query.shape
  batch = tuple(batch)
  key_length, num_kv_heads = key.shape[-3], key.shape[-2]
  flat_batch = int(np.prod(batch, dtype=np.int64))
  rank = len(batch) + 3

  # Band column j is distance d = j - (k - 1).
  distances = jnp.arange(1 - max_distance, max_distance, dtype=jnp.int32)
  band = distances.shape[0]
  positions = masks_lib.query_positions(query_length, key_length,
                                        options["query_offset"])
  key_index = positions[..., :, None] + distances  # [T, D] or [B..., T, D]
  kv_index = jnp.clip(key_index, 0, key_length - 1)
  # Insert the head axis: [1, T, D] or [B..., 1, T, D].
  key_index = jnp.expand_dims(key_index, -3)
  kv_index = jnp.expand_dims(kv_index, -3)

  # As in the chunked path, keys that no query may see are zeroed so that
  # a NaN or infinite padded key stays inert.
  (key,) = _attend.zero_unreachable_keys(
      masks_lib.combine_masks(
          options["mask"], masks_lib.padding_mask(
              query_length, key_length,
              key_value_seq_lengths=options["key_value_seq_lengths"])),
      key)
  flat_index = jnp.broadcast_to(
      kv_index[..., 0, :, :], batch + (query_length, band)).reshape(
          flat_batch, query_length, band)
  batch_rows = jnp.arange(flat_batch)[:, None, None]
  band_keys = key.reshape(flat_batch, key_length, num_kv_heads,
                          head_dim)[batch_rows, flat_index]
  grouped = query.reshape(flat_batch, query_length, num_kv_heads,
                          num_heads // num_kv_heads, head_dim)
  logits = jnp.einsum("btkgh,btdkh->bkgtd", grouped, band_keys,
                      preferred_element_type=_F32)
  logits = logits.reshape(batch + (num_heads, query_length, band))
  logits = logits * jnp.asarray(options["scale"], _F32)

  batch_index, head, q_index, _ = _relative.reference_indices(
      batch, num_heads, query_length, 1)
  indices = (batch_index, head, q_index, kv_index)
  bias = options["bias"]
  logits = _attend.modify_logits(
      logits, None if bias is None else _gather_band(bias, kv_index, rank),
      logits_soft_cap=options["logits_soft_cap"],
      score_mod=options["score_mod"], indices=indices,
      score_mod_params=options["score_mod_params"])

  valid = (key_index >= 0) & (key_index < key_length)
  if options["is_causal"]:
    valid = valid & (distances <= 0)
  window = _checks.normalize_window(options["local_window_size"])
  if window is not None:
    valid = valid & (distances >= -window[0]) & (distances <= window[1])
  query_lengths = options["query_seq_lengths"]
  if query_lengths is not None:
    visible = jnp.arange(query_length) < jnp.asarray(query_lengths)[..., None]
    valid = valid & visible[..., None, :, None]
  key_lengths = options["key_value_seq_lengths"]
  if key_lengths is not None:
    valid = valid & (key_index < jnp.reshape(
        jnp.asarray(key_lengths), batch + (1, 1, 1)))
  if options["query_segment_ids"] is not None:
    key_ids = jnp.asarray(options["key_segment_ids"]).reshape(
        flat_batch, key_length)[batch_rows, flat_index]
    query_ids = jnp.asarray(options["query_segment_ids"])
    same = query_ids[..., :, None] == key_ids.reshape(
        batch + (query_length, band))
    valid = valid & same[..., None, :, :]
  if options["mask"] is not None:
    valid = valid & _gather_band(options["mask"], kv_index, rank)
  if options["mask_mod"] is not None:
    valid = valid & _attend.evaluate_mask_mod(options["mask_mod"], indices)

  logsumexp = jnp.swapaxes(logsumexp, -1, -2)[..., None]
  logsumexp = jnp.where(jnp.isfinite(logsumexp), logsumexp, 0.0)
  probs = jnp.exp(jnp.where(valid, logits, -jnp.inf) - logsumexp)
  rate = options["dropout_rate"]
  if rate > 0.0:
    keep = dropout_lib.keep_mask(
        dropout_lib.dropout_seeds(options["dropout_rng"]), rate, *indices)
    probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
  return jnp.broadcast_to(
      probs, batch + (num_heads, query_length, band))


def _edge_mass(query, key, logsumexp, max_distance, side, options,
               blocks):
  """Return `[B..., N, T]`, the weight of the keys at `d <= -k` (side -1)
  or `d >= k` (side +1), from one extra chunked call."""
  query_length, key_length = query.shape[-3], key.shape[-3]
  relative = _relative.relative_position_fn(
      query_length, key_length, query_offset=options["query_offset"])
  user_mask_mod = options["mask_mod"]

  def edge_mask_mod(batch, head, q_index, kv_index):
    distance = relative(batch, q_index, kv_index)
    inside = (distance <= -max_distance if side < 0
              else distance >= max_distance)
    if user_mask_mod is None:
      return inside
    return inside & _attend.evaluate_mask_mod(
        user_mask_mod, (batch, head, q_index, kv_index))

  chunked_options = {name: value for name, value in options.items()
                     if name not in ("bias", "mask", "mask_mod")}
  # A value of ones makes the output the kept fraction of the edge's
  # weights: exactly 1 without dropout.
  ones = jnp.ones(key.shape[:-1] + (1,), key.dtype)
  kept_fraction, edge_logsumexp = chunked_attention(
      query, key, ones, options["bias"], options["mask"],
      mask_mod=edge_mask_mod, return_residual=True, **chunked_options,
      **blocks)
  seen = jnp.isfinite(edge_logsumexp)
  ratio = jnp.exp(jnp.where(seen, edge_logsumexp, 0.0)
                  - jnp.where(seen, logsumexp, 0.0))
  mass = jnp.where(seen, kept_fraction[..., 0].astype(_F32) * ratio, 0.0)
  return jnp.swapaxes(mass, -1, -2)


def chunked_bucket_masses(query, key, logsumexp, max_distance, options,
                           blocks):
  """Return `[B..., N, T, 2k+1]` bucket weights without a `[T, S]` array."""
  interior = _band_masses(query, key, logsumexp, max_distance, options)
  window = _checks.normalize_window(options["local_window_size"])
  edges = []
  for side in (-1, 1):
    empty = side > 0 and options["is_causal"]
    if window is not None:
      reach = window[0] if side < 0 else window[1]
      empty = empty or reach < max_distance
    if empty:
      edges.append(jnp.zeros(interior.shape[:-1], _F32))
    else:
      edges.append(_edge_mass(query, key, logsumexp, max_distance, side,
                              options, blocks))
  return jnp.concatenate(
      [edges[0][..., None], interior, edges[1][..., None]], axis=-1)
