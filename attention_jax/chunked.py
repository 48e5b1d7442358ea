"""Memory-efficient attention: exact attention computed block by block.

`chunked_attention` accepts the arguments of `dot_product_attention`
(except `return_weights`) plus score and mask hooks. Memory grows linearly
in T and S because no `[T, S]` array is ever built, unless the caller
passes a dense `mask` or `bias` of that size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from attention_jax import _attend
from attention_jax import _batch_chunks
from attention_jax import _checks
from attention_jax import _lifted_closures
from attention_jax import _tile_sizes
from attention_jax import dropout as dropout_lib
from attention_jax import scores as scores_lib
from attention_jax._blocks import Plan, padded_to_split, to_block_layout
from attention_jax._chunked_kernel import chunked_backward

# A batch runs in chunks of sequences while the tiles of the whole batch
# would contain more logits than this. Causal attention over eight
# sequences of 512 tokens (8 heads) took 39 ms one sequence at a time, 47 ms
# two at a time and 72 ms in one piece. Without a mask, one and two at a
# time were equal. So this budget is smaller than `_tile_sizes.TILE_LOGITS`.
BATCH_CHUNK_LOGITS = 8 * 512 * 512


def _is_power_of_two(scale: float) -> bool:
  mantissa, _ = math.frexp(scale)
  return mantissa == 0.5


def _vectorizes_batch(plan: Plan, flat_batch: int) -> bool:
  """Return whether the kernel is mapped over the batch with `jax.vmap`.

  The kernel merges the batch and key/value head axes, batch first. When
  devices shard key/value heads over a model axis and hold more than one
  sequence each, XLA's partitioner then gathered every key/value block over
  that axis inside the tile loop (8 sequences on a 4 x 2 CPU mesh). Under
  `vmap` the batch stays an axis of its own in every tile, and no block is
  gathered. On one device that layout was 3% to 11% slower than one loop
  over the merged axis, so it is used only with more than one device, and
  only with key/value heads to shard. Segment ids, dense masks and
  `mask_mod` are left out: the branch that skips a tile they leave empty
  would depend on the sequence under `vmap`, so every branch would run.
  Lengths and offsets decide it from batch-wide extremes instead.
  """
  per_sequence = (plan.has_mask or plan.has_segments
                  or plan.mask_mod is not None)
  return (jax.device_count() > 1 and flat_batch > 1
          and plan.num_kv_heads > 1 and not per_sequence)


def _flat(x: ArrayLike | None, batch_shape, trailing: int = 0):
  if x is None:
    return None
  x = jnp.asarray(x, jnp.int32)
  x = jnp.broadcast_to(x, tuple(batch_shape) + x.shape[x.ndim - trailing:])
  return x.reshape((-1,) + x.shape[len(batch_shape):])


class _Prepared(NamedTuple):
  """The arguments of the chunked kernel in its block layout."""

  plan: Plan
  query: jax.Array  # [B, T_padded, N, H]
  key: jax.Array  # [B, S, K, H]
  value: jax.Array  # [B, S, K, H_v]
  bias: jax.Array | None
  aux: dict
  batch: tuple[int, ...]
  batch_chunk: int  # batch elements per run of the tile loop
  params: Any  # the `score_mod_params` the kernel receives
  vectorize_batch: bool = False  # map the kernel over the batch with vmap
  query_length: int = 0  # the caller's T, to which outputs are sliced back


def _to_rows(x: jax.Array, plan: Plan, batch: tuple[int, ...],
             fill) -> jax.Array:
  """View `[B..., T, N, ...]` as `[B, T_padded, N, ...]`, padding T with `fill`.

  Without padding this is a reshape, which copies nothing.
  """
  x = x.reshape(-1, *x.shape[len(batch):])
  pad = plan.padded_query_length - x.shape[1]
  if pad:
    widths = ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)
    x = jnp.pad(x, widths, constant_values=fill)
  return x


def _from_rows(x: jax.Array, prepared: _Prepared) -> jax.Array:
  """Undo `_to_rows`: `[B, T_padded, N, ...]` to `[B..., T, N, ...]`."""
  if x.shape[1] != prepared.query_length:
    x = x[:, :prepared.query_length]
  return x.reshape(*prepared.batch, *x.shape[1:])


def _prepare(
    query, key, value, bias, mask, *, scale, is_causal, query_seq_lengths,
    key_value_seq_lengths, local_window_size, query_offset,
    query_segment_ids, key_segment_ids, logits_soft_cap, score_mod,
    score_mod_params, mask_mod, dropout_rate, dropout_rng, deterministic,
    block_q, block_k, chunk_batch: bool = True,
) -> _Prepared:
  """Validate the arguments of `chunked_attention` and lay them out in blocks."""
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  scores_lib.check_query_key(query, key)
  _checks.check_value(key, value)
  *batch, query_length, num_heads, head_dim = query.shape
  batch = tuple(batch)
  key_length, num_kv_heads = key.shape[-3], key.shape[-2]
  group_size = num_heads // num_kv_heads
  if bias is not None:
    _checks.check_bias(bias, (*batch, num_heads, query_length, key_length))
  window = _attend.validate_mask_options(
      batch, num_heads, query_length, key_length, mask=mask,
      query_offset=query_offset, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids)
  _checks.check_dropout_rate(dropout_rate)
  if deterministic or dropout_rng is None:
    dropout_rate = 0.0
  _checks.check_soft_cap(logits_soft_cap)

  scale = float(scores_lib.default_scale(head_dim) if scale is None
                else scale)
  # Scaling each [bq, H] query block as it is sliced is cheaper than scaling
  # every [bq, bk] tile. Low-precision queries keep the scale in the float32
  # tile instead, so rounding matches the reference path, unless the scale
  # is a power of two (1/8 for H = 64), which scales them exactly.
  fold_scale = (jnp.dtype(query.dtype).itemsize >= 4
                or _is_power_of_two(scale))
  flat_batch = int(np.prod(batch, dtype=np.int64))
  if score_mod_params is not None and score_mod is None:
    raise ValueError("`score_mod_params` was given without a `score_mod`")
  plan = Plan(
      query_length=query_length, key_length=key_length,
      num_kv_heads=num_kv_heads, group_size=group_size,
      block_q=0, block_k=0,
      scale=1.0 if fold_scale else scale,
      query_scale=scale if fold_scale else 1.0,
      is_causal=bool(is_causal), window=window,
      logits_soft_cap=(None if logits_soft_cap is None
                       else float(logits_soft_cap)),
      score_mod=score_mod, mask_mod=mask_mod,
      has_bias=bias is not None, has_mask=mask is not None,
      has_query_lengths=query_seq_lengths is not None,
      has_key_lengths=key_value_seq_lengths is not None,
      has_segments=query_segment_ids is not None,
      has_offset=query_offset is not None,
      dropout_rate=float(dropout_rate))

  def splits(block_q: int, block_k: int, padding: bool) -> bool:
    tiled = dataclasses.replace(plan, block_q=block_q, block_k=block_k)
    return (padded_to_split(tiled) if padding else tiled).split_diagonal

  chosen = _tile_sizes.choose(
      block_q=block_q, block_k=block_k, query_length=query_length,
      key_length=key_length, num_heads=num_heads, window=window,
      is_causal=plan.is_causal, hides_keys=plan.hides_keys, splits=splits)
  plan = dataclasses.replace(
      plan, block_q=chosen.block_q, block_k=chosen.block_k,
      backward_blocks=chosen.backward_blocks)
  chunk = flat_batch
  # NOTE: the loop over batch chunks is sequential, so XLA's partitioner
  # gathers a batch sharded over devices in front of it, and every device
  # then computed attention for the whole batch (compiled HLO on 8 CPU
  # devices, jax 0.10.2). A traced array does not show its sharding here,
  # so the batch runs in chunks only when `jax.device_count()` is 1.
  if chunk_batch and jax.device_count() == 1:
    chunk = _batch_chunks.batch_chunk(flat_batch, num_heads,
                                      plan.block_q * plan.block_k,
                                      BATCH_CHUNK_LOGITS)
  vectorize = chunk_batch and _vectorizes_batch(plan, flat_batch)
  if vectorize:
    chunk = 1
  # Each kernel call gets tiles of `chunk` sequences. Hooks are traced for
  # every tile shape the kernel uses.
  blocks = [(plan.block_q, plan.block_k)]
  if plan.backward_blocks is not None:
    blocks.append(plan.backward_blocks)
  if plan.split_diagonal:
    blocks.append((plan.block_q // 2, plan.block_q // 2))
  tile_shape = dict(batch_size=chunk, num_kv_heads=num_kv_heads,
                    group_size=group_size, blocks=tuple(blocks))
  score_mod, score_mod_params = _lifted_closures.lift_score_mod(
      score_mod, score_mod_params, **tile_shape)
  mask_mod, mask_mod_closed = _lifted_closures.lift_mask_mod(
      mask_mod, **tile_shape)
  plan = dataclasses.replace(plan, score_mod=score_mod, mask_mod=mask_mod)
  padded = (plan.padded_query_length, key_length)

  # [B..., T, N, H] -> [B, T_padded, N, H]
  q5 = _to_rows(query, plan, batch, 0)
  # [B..., S, K, H] -> [B, S, K, H], a free reshape.
  k4 = key.reshape(flat_batch, key_length, num_kv_heads, head_dim)
  v4 = value.reshape(flat_batch, key_length, num_kv_heads, value.shape[-1])
  padded_plan = padded_to_split(plan)
  if padded_plan is not plan:
    # Zero keys after the last one. The causal mask hides them from every
    # real query, so only the padded query rows, which are dropped, attend
    # to them.
    extra = padded_plan.key_length - key_length
    k4, v4 = (jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))
              for x in (k4, v4))
    plan = padded_plan

  bias4 = to_block_layout(bias, batch, padded, 0)
  aux = {
      "mask": to_block_layout(mask, batch, padded, False),
      "offset": _flat(query_offset, batch),
      "query_lengths": _flat(query_seq_lengths, batch),
      "key_lengths": _flat(key_value_seq_lengths, batch),
      "query_segments": None, "key_segments": None,
  }
  if query_segment_ids is not None:
    aux["query_segments"] = jnp.pad(
        _flat(query_segment_ids, batch, 1),
        ((0, 0), (0, padded[0] - query_length)))
    aux["key_segments"] = _flat(key_segment_ids, batch, 1)
  if aux["mask"] is not None:
    # Keys in an all-False mask column are set to zero inside each tile.
    # NOTE: like the reference path, a key hidden only from some queries
    # still enters their tile, so an infinite value there can reach them.
    reachable = jnp.any(aux["mask"], axis=(1, 2))
    aux["key_reachable"] = jnp.broadcast_to(
        reachable, (reachable.shape[0], key_length))
  if mask_mod_closed:
    aux["mask_mod_closed"] = mask_mod_closed
  if plan.dropout_rate > 0.0:
    aux["dropout_seeds"] = dropout_lib.dropout_seeds(dropout_rng)
  aux = {name: array for name, array in aux.items() if array is not None}

  return _Prepared(plan, q5, k4, v4, bias4, aux, batch, chunk,
                   score_mod_params, vectorize, query_length)


def chunked_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    return_residual: bool = False,
    query_offset: ArrayLike | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
    logits_soft_cap: float | None = None,
    score_mod: Callable | None = None,
    score_mod_params=None,
    mask_mod: Callable | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
):
  """Exact attention with an online softmax over `[block_q, block_k]` tiles.

  Returns what `dot_product_attention` returns for the same arguments, with
  the same conventions, and differentiates through a custom VJP that
  recomputes each tile instead of storing the `[T, S]` weights.

  Args:
    query, key, value, bias, mask, scale, is_causal, query_seq_lengths,
    key_value_seq_lengths, local_window_size, return_residual,
    query_offset, query_segment_ids, key_segment_ids: as in
      `dot_product_attention`.
    logits_soft_cap: if set, logits become `cap * tanh(logits / cap)` before
      the bias and `score_mod` are applied.
    score_mod: `score_mod(score, batch, head, q_index, kv_index)` returns
      modified logits; its index arguments are broadcastable int32 arrays
      (`batch` is flat over all leading batch axes). It is evaluated per
      tile, so a positional bias never becomes a `[T, S]` array. It may
      close over arrays; traced ones are passed to the kernel as extra
      parameters, so gradients flow into those being differentiated, as on
      the reference path.
    score_mod_params: a pytree of arrays passed to `score_mod` as a sixth
      argument; gradients flow into it.
    mask_mod: `mask_mod(batch, head, q_index, kv_index)` returns a boolean
      array, True where attention is allowed, evaluated per tile. Like
      `score_mod`, it may close over arrays, traced or not.
    dropout_rate, dropout_rng, deterministic: as in
      `dot_product_attention`; the chunked path drops exactly the weights
      that the reference path drops for the same key.
    block_q: queries per tile. None picks 512 with a window and 1024
      otherwise, halved (down to 256) while heads * block_q * block_k
      exceeds 2**22 logits, and then spreads the same number of blocks
      evenly over T (blocks of 550 at T = 1100), so that few padded rows
      are computed. A causal call with a causal mask and no other, T a
      multiple of that size and S - T a multiple of block_k computes each
      diagonal square on its own, as three quarter tiles when the block
      has 1024 rows. Other causal calls do so with square blocks of about
      512 (with the same halving), padded by fewer than two rows per
      block, when S - T is a multiple of that block, and otherwise use
      blocks spread evenly over T and S. When the
      tiles of the whole batch would exceed 2**21 logits and
      `jax.device_count()` is 1, the batch runs in chunks of sequences,
      one chunk after another. With more than one device, calls without
      segment ids, a dense mask or `mask_mod` map the kernel over the
      batch with `jax.vmap` instead, so that a sharded batch and sharded
      key/value heads stay sharded.
    block_k: keys per tile. None picks 512 (256 with a window narrower
      than 512 keys), or more keys when T is shorter than a query block,
      keeping the tile area, but with a window no more than its width
      rounded up to a power of two. The same number of blocks is then
      spread evenly over S. When both are None and the defaults pick
      1024 queries per tile (no window, T of at least 1024, few heads),
      the backward pass takes tiles of its own: about 512 by 512, or
      about 256 queries by 1024 keys over more than 1024 keys when no
      causal or other mask hides keys and the host's CPU has at least
      2 MB of L2 cache per core.

  Returns:
    The output `[B..., T, N, H_v]`, or `(output, logsumexp [B..., T, N])`
    with `return_residual`.
  """
  prepared = _prepare(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size, query_offset=query_offset,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids,
      logits_soft_cap=logits_soft_cap, score_mod=score_mod,
      score_mod_params=score_mod_params, mask_mod=mask_mod,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      deterministic=deterministic, block_q=block_q, block_k=block_k)
  out5, logsumexp = _batch_chunks.core_in_chunks(
      prepared.plan, prepared.batch_chunk, prepared.query, prepared.key,
      prepared.value, prepared.bias, prepared.aux, prepared.params,
      vectorize=prepared.vectorize_batch)
  out = _from_rows(out5, prepared)
  if not return_residual:
    return out
  return out, _from_rows(logsumexp, prepared)


def chunked_attention_gradients(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    out: ArrayLike,
    logsumexp: ArrayLike,
    d_out: ArrayLike,
    d_logsumexp: ArrayLike,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    key_value_seq_lengths: ArrayLike | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Return `(dq, dk, dv)` of one block of keys, given the softmax over all keys.

  For attention whose keys are split into blocks computed apart (ring
  attention, for example), `out` `[B..., T, N, H_v]` and `logsumexp`
  `[B..., T, N]` are the merged results over every block, and `d_out`,
  `d_logsumexp` their cotangents. The weights of this block's keys are
  then `exp(logit - logsumexp)`, so the tile loop of the chunked backward
  pass gives this block's exact share of the gradients without running its
  forward pass again. Masking options mean what they mean in
  `chunked_attention`, within the block.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  prepared = _prepare(
      query, key, value, None, None, scale=scale, is_causal=is_causal,
      query_seq_lengths=None, key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=None, query_offset=None, query_segment_ids=None,
      key_segment_ids=None, logits_soft_cap=None, score_mod=None,
      score_mod_params=None, mask_mod=None, dropout_rate=0.0,
      dropout_rng=None, deterministic=True, block_q=block_q, block_k=block_k,
      chunk_batch=False)

  def to_rows(x, fill):
    return _to_rows(jnp.asarray(x), prepared.plan, prepared.batch, fill)

  residuals = (prepared.query, prepared.key, prepared.value, None,
               prepared.aux, None, to_rows(out, 0), to_rows(logsumexp, -jnp.inf))
  cotangents = (to_rows(d_out, 0), to_rows(d_logsumexp, 0))
  dq, dk, dv, *_ = chunked_backward(prepared.plan, residuals, cotangents)
  key_length = key.shape[-3]
  return (_from_rows(dq, prepared), dk[:, :key_length].reshape(key.shape),
          dv[:, :key_length].reshape(value.shape))
