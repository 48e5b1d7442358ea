"""Online-softmax attention over blocks, with a recomputing custom VJP.

The forward pass walks query blocks in sequence and, for each, the range of
key blocks that its causal or window mask can reach, keeping a running
maximum, normalizer and weighted sum (FlashAttention, Dao et al. 2022). It
stores only the output and the per-row log-sum-exp. The backward pass
recomputes each tile's weights from the log-sum-exp instead of storing them,
so memory grows linearly in T and S.

Tiles that the causal, window, length or key-range bounds exclude are never
visited; tiles inside the range whose mask is all False (segments, dense
masks, `mask_mod`) are skipped with `lax.cond`. Arrays use the layout of
`_blocks`: query `[B, K, G, T, H]`, key `[B, S, K, H]`, value
`[B, S, K, H_v]` (keys keep the caller's layout, so a long key/value cache
is never copied; each tile transposes only its own block).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention_jax import _attend
from attention_jax import dropout as dropout_lib
from attention_jax._blocks import Plan, reduce_to_shape, tile_of

_F32 = jnp.float32


def _tile_indices(plan: Plan, q_start, k_start):
  """Return broadcastable (batch, head, q_index, kv_index) for one tile.

  The batch index is flat over all leading batch axes.
  """
  num_heads = plan.num_kv_heads * plan.group_size
  heads = jnp.arange(num_heads, dtype=jnp.int32).reshape(
      1, plan.num_kv_heads, plan.group_size, 1, 1)
  q_index = (q_start + jnp.arange(plan.block_q, dtype=jnp.int32))
  k_index = (k_start + jnp.arange(plan.block_k, dtype=jnp.int32))
  return heads, q_index.reshape(1, 1, 1, -1, 1), k_index.reshape(1, 1, 1, 1, -1)


def _batch_index(batch_size: int) -> jax.Array:
  return jnp.arange(batch_size, dtype=jnp.int32).reshape(-1, 1, 1, 1, 1)


def _per_batch(x: jax.Array) -> jax.Array:
  return x.reshape(-1, 1, 1, 1, 1)


def key_start(plan: Plan, k_block_index):
  """Return `(start, first_new)` of key block `k_block_index`.

  The last block of a length that is not a multiple of `block_k` is shifted
  left to end at S instead of being padded, so no [S]-sized copy of the keys
  is made; its first keys repeat the previous block's and are masked as
  `index < first_new`.
  """
  first_new = k_block_index * plan.block_k
  return jnp.minimum(first_new, plan.key_length - plan.block_k), first_new


def tile_mask(plan: Plan, aux: dict, batch_size: int, q_start, k_start,
              first_new):
  """Return the boolean mask of one tile (broadcastable), or None."""
  heads, q_index, k_index = _tile_indices(plan, q_start, k_start)
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
    parts.append(tile_of(aux["mask"], q_start, k_start, plan.block_q,
                         plan.block_k))
  if plan.mask_mod is not None:
    indices = (_batch_index(batch_size), heads, q_index, k_index)
    parts.append(_attend.evaluate_mask_mod(plan.mask_mod, indices))
  if not parts:
    return None
  result = parts[0]
  for part in parts[1:]:
    result = result & part
  return result


def tile_logits(plan: Plan, batch_size: int, q_start, k_start, q_rows,
                k_block, bias_tile, params=None):
  """Return the modified, scaled logits of one tile.

  Args:
    q_rows: `[B * K, G * bq, H]`, the query block with heads of a group
      stacked as rows, so one matrix product serves the whole group.
    k_block: `[B * K, bk, H]`.
    bias_tile: block-layout bias tile or None.
    params: the `score_mod_params` pytree, or None.

  Returns:
    Logits `[B * K, G * bq, bk]` in float32.
  """
  logits = jnp.einsum("xrh,xsh->xrs", q_rows, k_block,
                      preferred_element_type=_F32)
  if plan.scale != 1.0:
    logits = logits * jnp.asarray(plan.scale, _F32)
  if bias_tile is None and plan.score_mod is None:
    return _attend.modify_logits(
        logits, None, logits_soft_cap=plan.logits_soft_cap, score_mod=None,
        indices=None)
  indices = None
  if plan.score_mod is not None:
    heads, q_index, k_index = _tile_indices(plan, q_start, k_start)
    indices = (_batch_index(batch_size), heads, q_index, k_index)
  logits = _attend.modify_logits(
      as_tile5(plan, logits), bias_tile, logits_soft_cap=plan.logits_soft_cap,
      score_mod=plan.score_mod, indices=indices, score_mod_params=params)
  return logits.reshape(-1, plan.group_size * plan.block_q, plan.block_k)


def as_tile5(plan: Plan, x):
  """View `[B * K, G * bq, ...]` rows as `[B, K, G, bq, ...]`."""
  return x.reshape(-1, plan.num_kv_heads, plan.group_size, plan.block_q,
                   *x.shape[2:])


def as_rows(x):
  """View `[B, K, G, bq, ...]` as `[B * K, G * bq, ...]`."""
  return x.reshape(x.shape[0] * x.shape[1], x.shape[2] * x.shape[3],
                   *x.shape[4:])


def _dropout_scale(plan: Plan, aux: dict, batch_size: int, q_start,
                   k_start):
  """Return the tile's dropout factors `[B * K, G * bq, bk]` (0 or
  1 / keep probability), or None without dropout."""
  if plan.dropout_rate == 0.0:
    return None
  heads, q_index, k_index = _tile_indices(plan, q_start, k_start)
  keep = dropout_lib.keep_mask(
      aux["dropout_seeds"], plan.dropout_rate, _batch_index(batch_size),
      heads, q_index, k_index)
  keep = jnp.broadcast_to(keep, (batch_size, plan.num_kv_heads,
                                 plan.group_size, plan.block_q, plan.block_k))
  factor = jnp.asarray(1.0 / (1.0 - plan.dropout_rate), _F32)
  return as_rows(jnp.where(keep, factor, jnp.zeros((), _F32)))


def _valid(plan: Plan, mask, logits):
  """Return the validity of a `[B * K, G * bq, bk]` logits tile, or None."""
  if mask is not None:
    full = (logits.shape[0] // plan.num_kv_heads, plan.num_kv_heads,
            plan.group_size, plan.block_q, plan.block_k)
    mask = as_rows(jnp.broadcast_to(mask, full))
  if plan.can_produce_neg_inf:
    finite_below = logits != -jnp.inf
    return finite_below if mask is None else mask & finite_below
  return mask


def key_block_range(plan: Plan, aux: dict, block):
  """Return `[first, last)` key blocks that query block `block` can see."""
  first = jnp.int32(0)
  last = jnp.int32(plan.num_k_blocks)
  q_first = block * plan.block_q
  q_last = jnp.minimum(q_first + plan.block_q, plan.query_length) - 1
  if plan.uses_positions:
    if plan.has_offset:
      low, high = jnp.min(aux["offset"]), jnp.max(aux["offset"])
    else:
      low = high = plan.key_length - plan.query_length
    first_position = low + q_first
    last_position = high + q_last
    if plan.is_causal:
      last = jnp.minimum(last, last_position // plan.block_k + 1)
    if plan.window is not None:
      left, right = plan.window
      first = jnp.maximum(first, (first_position - left) // plan.block_k)
      last = jnp.minimum(last, (last_position + right) // plan.block_k + 1)
  if plan.has_key_lengths:
    longest = jnp.max(aux["key_lengths"])
    last = jnp.minimum(last, -(-longest // plan.block_k))
  if plan.has_query_lengths:
    last = jnp.where(q_first < jnp.max(aux["query_lengths"]), last, first)
  first = jnp.clip(first, 0, plan.num_k_blocks).astype(jnp.int32)
  last = jnp.clip(last, first, plan.num_k_blocks).astype(jnp.int32)
  return first, last


def _visit_tile(mask, update, carry):
  """Skip an all-False tile, and drop the mask of an all-True one.

  `update(carry, mask)` takes the mask, or None when every entry is
  visible; interior tiles of a causal or window mask then need no `where`.
  """
  if mask is None:
    return update(carry, None)
  branch = jnp.where(jnp.any(mask), jnp.where(jnp.all(mask), 2, 1), 0)
  return jax.lax.switch(
      branch,
      (lambda c: c, lambda c: update(c, mask), lambda c: update(c, None)),
      carry)


def _query_rows(plan: Plan, query, q_start):
  """Slice query block `[B, K, G, bq, H]` and view it as rows."""
  block = jax.lax.dynamic_slice_in_dim(query, q_start, plan.block_q, 3)
  return as_rows(block)


def _key_rows(plan: Plan, aux: dict, x, k_start):
  """Slice keys or values `[B, S, K, D]` to rows `[B * K, bk, D]`.

  Keys that no query may see (past `key_value_seq_lengths`, or in an
  all-False column of a dense mask) become zeros, because 0 * inf is NaN in
  the tile's matrix products.
  """
  block = jax.lax.dynamic_slice_in_dim(x, k_start, plan.block_k, 1)
  keep = None
  if plan.has_key_lengths:
    index = k_start + jnp.arange(plan.block_k, dtype=jnp.int32)
    keep = index < aux["key_lengths"][:, None]
  if "key_reachable" in aux:
    reachable = jax.lax.dynamic_slice_in_dim(
        aux["key_reachable"], k_start, plan.block_k, 1)
    keep = reachable if keep is None else keep & reachable
  if keep is not None:
    block = jnp.where(keep[:, :, None, None], block,
                      jnp.zeros((), block.dtype))
  block = jnp.swapaxes(block, 1, 2)
  return block.reshape(-1, plan.block_k, x.shape[-1])


def _add_key_rows(buffer, rows, k_start):
  """Add rows `[B * K, bk, D]` into `[B, S, K, D]` at key `k_start`."""
  batch, _, heads, features = buffer.shape
  block = jnp.swapaxes(rows.reshape(batch, heads, -1, features), 1, 2)
  return _add_at(buffer, block, k_start, axis=1)


def _forward(plan: Plan, query, key, value, bias, aux, params):
  batch_size = query.shape[0]
  rows = plan.group_size * plan.block_q
  flat = batch_size * plan.num_kv_heads

  def query_block(block):
    q_start = block * plan.block_q
    q_rows = _query_rows(plan, query, q_start)

    def visit(k_block_index, carry):
      k_start, first_new = key_start(plan, k_block_index)
      mask = tile_mask(plan, aux, batch_size, q_start, k_start, first_new)

      def update(carry, mask):
        row_max, total, acc = carry
        k_rows = _key_rows(plan, aux, key, k_start)
        v_rows = _key_rows(plan, aux, value, k_start)
        logits = tile_logits(
            plan, batch_size, q_start, k_start, q_rows, k_rows,
            tile_of(bias, q_start, k_start, plan.block_q, plan.block_k),
            params)
        valid = _valid(plan, mask, logits)
        if valid is not None:
          logits = jnp.where(valid, logits, -jnp.inf)
        new_max = jnp.maximum(row_max, jnp.max(logits, -1, keepdims=True))
        # A row with nothing visible yet keeps a maximum of -inf; shift it
        # by 0 so that exp gives 0 instead of NaN.
        shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
        probs = jnp.exp(logits - shift)
        correction = jnp.exp(row_max - shift)
        total = total * correction + jnp.sum(probs, -1, keepdims=True)
        # Dropout acts on the normalized weights, so it scales only the
        # weighted sum, never the normalizer.
        dropout = _dropout_scale(plan, aux, batch_size, q_start, k_start)
        if dropout is not None:
          probs = probs * dropout
        acc = acc * correction + jnp.einsum(
            "xrs,xsv->xrv", probs.astype(value.dtype), v_rows,
            preferred_element_type=_F32)
        return new_max, total, acc

      return _visit_tile(mask, update, carry)

    first, last = key_block_range(plan, aux, block)
    init = (jnp.full((flat, rows, 1), -jnp.inf, _F32),
            jnp.zeros((flat, rows, 1), _F32),
            jnp.zeros((flat, rows, value.shape[-1]), _F32))
    row_max, total, acc = jax.lax.fori_loop(first, last, visit, init)
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)
    out = acc / safe_total
    logsumexp = jnp.where(seen, row_max + jnp.log(safe_total), -jnp.inf)
    return (as_tile5(plan, out).astype(value.dtype),
            as_tile5(plan, logsumexp)[..., 0])

  outs, logsumexps = jax.lax.map(
      query_block, jnp.arange(plan.num_q_blocks, dtype=jnp.int32))
  # [num_q_blocks, B, K, G, bq, ...] -> [B, K, G, T_padded, ...]
  out = jnp.moveaxis(outs, 0, 3).reshape(
      query.shape[:3] + (plan.padded_query_length, value.shape[-1]))
  logsumexp = jnp.moveaxis(logsumexps, 0, 3).reshape(
      query.shape[:3] + (plan.padded_query_length,))
  return out, logsumexp


def _backward(plan: Plan, residuals, cotangents):
  query, key, value, bias, aux, params, out, logsumexp = residuals
  d_out, d_logsumexp = cotangents
  batch_size = query.shape[0]
  d_out = d_out.astype(_F32)
  # The row term of the softmax gradient, sum_v dO_tv O_tv, minus the
  # log-sum-exp's own cotangent (d lse / d logit is the weight itself).
  row_dot = (jnp.sum(d_out * out.astype(_F32), axis=-1, keepdims=True)
             - d_logsumexp.astype(_F32)[..., None])
  safe_logsumexp = jnp.where(jnp.isfinite(logsumexp), logsumexp, 0.0)[..., None]

  def query_block(carry, block):
    q_start = block * plan.block_q
    q_rows = _query_rows(plan, query, q_start)
    do_rows = _query_rows(plan, d_out, q_start)
    lse_rows = _query_rows(plan, safe_logsumexp, q_start)
    dot_rows = _query_rows(plan, row_dot, q_start)

    def visit(k_block_index, inner):
      k_start, first_new = key_start(plan, k_block_index)
      mask = tile_mask(plan, aux, batch_size, q_start, k_start, first_new)

      def update(inner, mask):
        dq, dk, dv, dbias, dparams = inner
        k_rows = _key_rows(plan, aux, key, k_start)
        v_rows = _key_rows(plan, aux, value, k_start)
        bias_tile = tile_of(bias, q_start, k_start, plan.block_q,
                            plan.block_k)
        logits, pullback = jax.vjp(
            functools.partial(tile_logits, plan, batch_size, q_start,
                              k_start),
            q_rows, k_rows, bias_tile, params)
        valid = _valid(plan, mask, logits)
        if valid is not None:
          logits = jnp.where(valid, logits, -jnp.inf)
        probs = jnp.exp(logits - lse_rows)
        d_probs = jnp.einsum("xrv,xsv->xrs", do_rows, v_rows.astype(_F32))
        dropout = _dropout_scale(plan, aux, batch_size, q_start, k_start)
        if dropout is None:
          dv_tile = jnp.einsum("xrs,xrv->xsv", probs, do_rows)
        else:
          dv_tile = jnp.einsum("xrs,xrv->xsv", probs * dropout, do_rows)
          d_probs = d_probs * dropout
        # With dropout D, sum_s P_s D_s (dO . v_s) is still dO . O.
        d_logits = probs * (d_probs - dot_rows)
        dq_tile, dk_tile, dbias_tile, dparams_tile = pullback(d_logits)
        dq = dq + dq_tile.astype(_F32)
        dk = _add_key_rows(dk, dk_tile, k_start)
        dv = _add_key_rows(dv, dv_tile, k_start)
        if dbias is not None:
          dbias = _add_bias_grad(dbias, dbias_tile, q_start, k_start)
        dparams = jax.tree.map(lambda total, part: total + part.astype(
            total.dtype), dparams, dparams_tile)
        return dq, dk, dv, dbias, dparams

      return _visit_tile(mask, update, inner)

    dk, dv, dbias, dparams = carry
    first, last = key_block_range(plan, aux, block)
    dq = jnp.zeros(q_rows.shape, _F32)
    dq, dk, dv, dbias, dparams = jax.lax.fori_loop(
        first, last, visit, (dq, dk, dv, dbias, dparams))
    return (dk, dv, dbias, dparams), as_tile5(plan, dq)

  init = (jnp.zeros(key.shape, _F32), jnp.zeros(value.shape, _F32),
          None if bias is None else jnp.zeros(bias.shape, _F32),
          jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, _F32), params))
  (dk, dv, dbias, dparams), dqs = jax.lax.scan(
      query_block, init, jnp.arange(plan.num_q_blocks, dtype=jnp.int32))
  dq = jnp.moveaxis(dqs, 0, 3).reshape(query.shape)
  if dbias is not None:
    dbias = dbias.astype(bias.dtype)
  aux_cotangents = jax.tree.map(lambda _: None, aux)
  dparams = jax.tree.map(lambda grad, leaf: grad.astype(leaf.dtype), dparams,
                         params)
  return (dq.astype(query.dtype), dk.astype(key.dtype),
          dv.astype(value.dtype), dbias, aux_cotangents, dparams)


def _add_at(buffer, update, start, axis):
  size = update.shape[axis]
  current = jax.lax.dynamic_slice_in_dim(buffer, start, size, axis)
  return jax.lax.dynamic_update_slice_in_dim(
      buffer, current + update.astype(buffer.dtype), start, axis)


def _add_bias_grad(dbias, tile_grad, q_start, k_start):
  tile_grad = reduce_to_shape(tile_grad.astype(dbias.dtype),
                              dbias.shape[:3] + tile_grad.shape[3:])
  rows, cols = dbias.shape[-2:]
  tile_grad = reduce_to_shape(
      tile_grad, tile_grad.shape[:3] + (1 if rows == 1 else tile_grad.shape[3],
                                        1 if cols == 1 else tile_grad.shape[4]))
  starts = (0, 0, 0, q_start if rows != 1 else 0, k_start if cols != 1 else 0)
  current = jax.lax.dynamic_slice(dbias, starts, tile_grad.shape)
  return jax.lax.dynamic_update_slice(dbias, current + tile_grad, starts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def chunked_core(plan: Plan, query, key, value, bias, aux, params):
  """Return `(out [B, K, G, T_pad, H_v], logsumexp [B, K, G, T_pad])`.

  `params` is the `score_mod_params` pytree (None for none); gradients flow
  into it like into the bias.
  """
  return _forward(plan, query, key, value, bias, aux, params)


def _core_fwd(plan, query, key, value, bias, aux, params):
  out, logsumexp = _forward(plan, query, key, value, bias, aux, params)
  return (out, logsumexp), (query, key, value, bias, aux, params, out,
                            logsumexp)


chunked_core.defvjp(_core_fwd, _backward)
