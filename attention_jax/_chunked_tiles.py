"""Per-tile steps of the chunked implementation: masks, logits and slices
of one `[block_q, block_k]` tile.

Arrays use the layout of `_blocks`: query `[B, T, N, H]`, key
`[B, S, K, H]`, value `[B, S, K, H_v]`; a tile's rows stack the G query
heads of each key/value head, `[B * K, G * bq, ...]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _attend
from attention_jax import _packed_heads
from attention_jax import dropout as dropout_lib
from attention_jax._blocks import Plan, tile_of

F32 = jnp.float32


def round_to(x: jax.Array, dtype) -> jax.Array:
  """Return float32 `x` in `dtype`, rounding to nearest even.

  For bfloat16 the rounding is done on the bits (bfloat16 is the upper half
  of a float32). It gives the same values as `astype`, which XLA's CPU
  backend compiled to a loop about twice as slow inside the exp pass.
  """
  if x.dtype != F32 or jnp.dtype(dtype) != jnp.bfloat16:
    return x.astype(dtype)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))
  return jax.lax.bitcast_convert_type((bits >> 16).astype(jnp.uint16),
                                      jnp.bfloat16)


def tile_indices(plan: Plan, q_start, k_start):
  """Return broadcastable (batch, head, q_index, kv_index) for one tile.

  The batch index is flat over all leading batch axes.
  """
  num_heads = plan.num_kv_heads * plan.group_size
  heads = jnp.arange(num_heads, dtype=jnp.int32).reshape(
      1, plan.num_kv_heads, plan.group_size, 1, 1)
  q_index = (q_start + jnp.arange(plan.block_q, dtype=jnp.int32))
  k_index = (k_start + jnp.arange(plan.block_k, dtype=jnp.int32))
  return heads, q_index.reshape(1, 1, 1, -1, 1), k_index.reshape(1, 1, 1, 1, -1)


def batch_index(aux: dict, batch_size: int) -> jax.Array:
  """Return the global batch index `[B, 1, 1, 1, 1]` of the tile's rows.

  When the batch is processed in chunks, `aux["batch_start"]` is the first
  global index of the chunk.
  """
  index = jnp.arange(batch_size, dtype=jnp.int32)
  if "batch_start" in aux:
    index = index + aux["batch_start"]
  return index.reshape(-1, 1, 1, 1, 1)


def _per_batch(x: jax.Array) -> jax.Array:
  return x.reshape(-1, 1, 1, 1, 1)


def key_start(plan: Plan, k_block_index):
  """Return `(start, first_new)` of key block `k_block_index`.

  The last block of a length that is not a multiple of `block_k` is shifted
  left to end at S instead of being padded, so no [S]-sized copy of the keys
  is made. Its first keys repeat the previous block's and are masked as
  `index < first_new`.
  """
  first_new = k_block_index * plan.block_k
  return jnp.minimum(first_new, plan.key_length - plan.block_k), first_new


def tile_mask(plan: Plan, aux: dict, batch_size: int, q_start, k_start,
              first_new):
  """Return the boolean mask of one tile (broadcastable), or None."""
  heads, q_index, k_index = tile_indices(plan, q_start, k_start)
  parts = []
  if plan.needs_bounds:
    parts.append(k_index >= first_new)
  if plan.uses_positions:
    if plan.has_offset:
      positions = _per_batch(aux["offset"]) + q_index
    else:
      positions = q_index + (plan.key_length - plan.query_length)
    distance = k_index - positions
    if plan.is_causal:
      parts.append(distance <= 0)
    if plan.window is not None:
      left, right = plan.window
      parts.append((distance >= -left) & (distance <= right))
  if plan.has_query_lengths:
    parts.append(q_index < _per_batch(aux["query_lengths"]))
  if plan.has_key_lengths:
    parts.append(k_index < _per_batch(aux["key_lengths"]))
  if plan.has_segments:
    query_ids = jax.lax.dynamic_slice_in_dim(
        aux["query_segments"], q_start, plan.block_q, axis=1)
    key_ids = jax.lax.dynamic_slice_in_dim(
        aux["key_segments"], k_start, plan.block_k, axis=1)
    same = query_ids[:, :, None] == key_ids[:, None, :]
    parts.append(same[:, None, None])
  if plan.has_mask:
    parts.append(tile_of(plan, aux["mask"], q_start, k_start))
  if plan.mask_mod is not None:
    indices = (batch_index(aux, batch_size), heads, q_index, k_index)
    mask_mod = plan.mask_mod
    if "mask_mod_closed" in aux:
      # The arrays the hook closes over, passed in (see `_lifted_closures`).
      closed = aux["mask_mod_closed"]
      mask_mod = lambda *indices: plan.mask_mod(*indices, closed)
    parts.append(_attend.evaluate_mask_mod(mask_mod, indices))
  if not parts:
    return None
  result = parts[0]
  for part in parts[1:]:
    result = result & part
  return result


def tile_logits(plan: Plan, aux: dict, batch_size: int, q_start, k_start,
                q_rows, k_block, bias_tile, params=None):
  """Return the modified, scaled logits of one tile.

  Args:
    q_rows: `[B * K, G * bq, H]`, the query block with heads of a group
      stacked as rows, so one matrix product serves the whole group.
    k_block: `[B * K, bk, H]`, or `[B, bk, K * H]` when `plan.packs_heads`.
    bias_tile: block-layout bias tile or None.
    params: the `score_mod_params` pytree, or None.

  Returns:
    Logits `[B * K, G * bq, bk]` in float32.
  """
  if plan.packs_heads:
    logits = _packed_heads.logits(plan, q_rows, k_block)
  else:
    logits = jnp.einsum("xrh,xsh->xrs", q_rows, k_block,
                        preferred_element_type=F32)
  if plan.scale != 1.0:
    logits = logits * jnp.asarray(plan.scale, F32)
  if not modifies_logits(plan):
    return logits
  logits = modify_tile(plan, aux, batch_size, q_start, k_start,
                       as_tile5(plan, logits), bias_tile, params)
  return logits.reshape(-1, plan.group_size * plan.block_q, plan.block_k)


def modifies_logits(plan: Plan) -> bool:
  """Return whether soft-capping, a bias or `score_mod` changes the logits."""
  return (plan.logits_soft_cap is not None or plan.has_bias
          or plan.score_mod is not None)


def modify_tile(plan: Plan, aux: dict, batch_size: int, q_start, k_start,
                logits5, bias_tile, params):
  """Apply soft-capping, the bias and `score_mod` to `[B, K, G, bq, bk]`."""
  indices = None
  if plan.score_mod is not None:
    heads, q_index, k_index = tile_indices(plan, q_start, k_start)
    indices = (batch_index(aux, batch_size), heads, q_index, k_index)
  return _attend.modify_logits(
      logits5, bias_tile, logits_soft_cap=plan.logits_soft_cap,
      score_mod=plan.score_mod, indices=indices, score_mod_params=params)


def key_major(plan: Plan, x, batch_size: int):
  """View a broadcastable `[B, K, G, bq, bk]` tile as `[B * K, bk, G * bq]`.

  The backward pass works on transposed tiles (keys as rows), so that the
  key and value gradients are plain matrix products. On a 2-core Xeon, a
  `[8, 512, 512]` product that contracts over the rows of its left operand
  ran at about half the speed of the plain one (measured with jaxlib
  0.10.2).
  """
  x = jnp.moveaxis(x, 4, 2)
  full = (batch_size, plan.num_kv_heads, plan.block_k, plan.group_size,
          plan.block_q)
  return jnp.broadcast_to(x, full).reshape(
      batch_size * plan.num_kv_heads, plan.block_k,
      plan.group_size * plan.block_q)


def from_key_major(plan: Plan, x):
  """View `[B * K, bk, G * bq]` as the tile layout `[B, K, G, bq, bk]`."""
  x = x.reshape(-1, plan.num_kv_heads, plan.block_k, plan.group_size,
                plan.block_q)
  return jnp.moveaxis(x, 2, 4)


def as_tile5(plan: Plan, x):
  """View `[B * K, G * bq, ...]` rows as `[B, K, G, bq, ...]`."""
  return x.reshape(-1, plan.num_kv_heads, plan.group_size, plan.block_q,
                   *x.shape[2:])


def as_rows(x):
  """View `[B, K, G, bq, ...]` as `[B * K, G * bq, ...]`."""
  return x.reshape(x.shape[0] * x.shape[1], x.shape[2] * x.shape[3],
                   *x.shape[4:])


def dropout_scale(plan: Plan, aux: dict, batch_size: int, q_start,
                  k_start, transposed: bool = False):
  """Return the tile's dropout factors (0 or 1 / keep probability), or None
  without dropout.

  The factors are `[B * K, G * bq, bk]`, or `[B * K, bk, G * bq]` with
  `transposed`.
  """
  if plan.dropout_rate == 0.0:
    return None
  heads, q_index, k_index = tile_indices(plan, q_start, k_start)
  keep = dropout_lib.keep_mask(
      aux["dropout_seeds"], plan.dropout_rate, batch_index(aux, batch_size),
      heads, q_index, k_index)
  factor = jnp.asarray(1.0 / (1.0 - plan.dropout_rate), F32)
  scale = jnp.where(keep, factor, jnp.zeros((), F32))
  if transposed:
    return key_major(plan, scale, batch_size)
  scale = jnp.broadcast_to(scale, (batch_size, plan.num_kv_heads,
                                   plan.group_size, plan.block_q,
                                   plan.block_k))
  return as_rows(scale)


def valid_entries(plan: Plan, mask, logits, transposed: bool = False):
  """Return the validity of a logits tile, or None when all are valid.

  `logits` is `[B * K, G * bq, bk]`, or `[B * K, bk, G * bq]` with
  `transposed`; `mask` is the broadcastable tile mask or None.
  """
  if mask is not None:
    batch_size = logits.shape[0] // plan.num_kv_heads
    if transposed:
      mask = key_major(plan, mask, batch_size)
    else:
      full = (batch_size, plan.num_kv_heads, plan.group_size, plan.block_q,
              plan.block_k)
      mask = as_rows(jnp.broadcast_to(mask, full))
  if plan.can_produce_neg_inf:
    finite_below = logits != -jnp.inf
    return finite_below if mask is None else mask & finite_below
  return mask


def query_rows(plan: Plan, x, q_start):
  """Slice block `q_start` of a query-layout array as rows `[B * K, G * bq, D]`.

  `x` is `[B, T, N, D]` (the query, the output, their gradients) or
  `[B, T, N]` (per-row terms, D = 1).
  """
  block = jax.lax.dynamic_slice_in_dim(x, q_start, plan.block_q, 1)
  block = block.reshape(block.shape[0], plan.block_q, plan.num_kv_heads,
                        plan.group_size, -1)
  return as_rows(jnp.moveaxis(block, 1, 3))


def scaled_query_rows(plan: Plan, query, q_start):
  """Slice query block `q_start` as rows, times `plan.query_scale`."""
  rows = query_rows(plan, query, q_start)
  if plan.query_scale != 1.0:
    rows = rows * jnp.asarray(plan.query_scale, rows.dtype)
  return rows


def put_query_rows(plan: Plan, buffer, rows, q_start):
  """Write rows `[B * K, G * bq, D]` into a query-layout buffer at `q_start`.

  The inverse of `query_rows`, for a `[B, T, N, D]` or `[B, T, N]` buffer.
  """
  block = jnp.moveaxis(as_tile5(plan, rows), 3, 1).astype(buffer.dtype)
  block = block.reshape(buffer.shape[:1] + (plan.block_q,) + buffer.shape[2:])
  return jax.lax.dynamic_update_slice_in_dim(buffer, block, q_start, 1)


def key_rows(plan: Plan, aux: dict, x, k_start, packed: bool = False,
             zero: bool = True):
  """Slice keys or values `[B, S, K, D]` to rows `[B * K, bk, D]`.

  With `packed`, return the block as it lies in memory, `[B, bk, K * D]`,
  for the products of `_packed_heads`. With `zero`, keys that no query
  may see (past `key_value_seq_lengths`, or in an all-False column of a
  dense mask) become zeros, because 0 * inf is NaN in the tile's matrix
  products. A tile whose every entry is visible has no such keys, and the
  forward pass masks their logits, so only its values need zeros.
  """
  block = jax.lax.dynamic_slice_in_dim(x, k_start, plan.block_k, 1)
  keep = None
  if plan.has_key_lengths and zero:
    index = k_start + jnp.arange(plan.block_k, dtype=jnp.int32)
    keep = index < aux["key_lengths"][:, None]
  if "key_reachable" in aux and zero:
    reachable = jax.lax.dynamic_slice_in_dim(
        aux["key_reachable"], k_start, plan.block_k, 1)
    keep = reachable if keep is None else keep & reachable
  if keep is not None:
    block = jnp.where(keep[:, :, None, None], block,
                      jnp.zeros((), block.dtype))
  if packed:
    return block.reshape(x.shape[0], plan.block_k, -1)
  block = jnp.swapaxes(block, 1, 2)
  return block.reshape(-1, plan.block_k, x.shape[-1])


def add_key_rows(buffer, rows, k_start):
  """Add rows `[B * K, bk, D]` into `[B, S, K, D]` at key `k_start`."""
  batch, _, heads, features = buffer.shape
  block = jnp.swapaxes(rows.reshape(batch, heads, -1, features), 1, 2)
  return add_at(buffer, block, k_start, axis=1)


def add_at(buffer, update, start, axis):
  size = update.shape[axis]
  current = jax.lax.dynamic_slice_in_dim(buffer, start, size, axis)
  return jax.lax.dynamic_update_slice_in_dim(
      buffer, current + update.astype(buffer.dtype), start, axis)


def add_bias_grad(dbias, tile_grad, q_start, k_start):
  """Add the gradient of a `tile_of` view into the `[B, N, T, S]` `dbias`.

  `tile_grad` has the shape of the tile view, `[B, K, G, bq, bk]` with the
  bias's axes of size 1, so merging K and G gives the tile of `dbias`.
  """
  batch, kv_heads, group, *tile = tile_grad.shape
  tile_grad = tile_grad.astype(dbias.dtype).reshape(
      batch, kv_heads * group, *tile)
  rows, cols = dbias.shape[-2:]
  starts = (0, 0, q_start if rows != 1 else 0, k_start if cols != 1 else 0)
  current = jax.lax.dynamic_slice(dbias, starts, tile_grad.shape)
  return jax.lax.dynamic_update_slice(dbias, current + tile_grad, starts)


