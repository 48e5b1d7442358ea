"""Online-softmax attention over blocks, with a recomputing custom VJP.

The forward pass (`_chunked_forward`) walks query blocks in sequence and,
for each, the range of key blocks that its causal or window mask can reach,
keeping a running maximum, normalizer and weighted sum (FlashAttention, Dao
et al. 2022). It stores only the output and the per-row log-sum-exp. The
backward pass here recomputes each tile's weights from the log-sum-exp
instead of storing them, so memory grows linearly in T and S.

Tiles that the causal, window, length or key-range bounds exclude are never
visited. Tiles inside the range whose mask is all False (segments, dense
masks, `mask_mod`) are skipped with `lax.cond`. A causal mask that is the
only mask, or comes with a window at least a query block wide, and is
aligned with the tiles needs neither: only the tiles on the diagonal get a
constant mask, and those at the window's far edge their own. Arrays use
the layout of `_blocks`: query `[B, T, N, H]`, key `[B, S, K, H]`, value
`[B, S, K, H_v]`, all views of the caller's arrays, so a long query or
key/value cache is never copied; each tile transposes only its own block.
The output is written block by block into the query's layout.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from attention_jax import _chunked_tiles as tiles
from attention_jax import _tile_ranges as ranges
from attention_jax._chunked_forward import causal_patterns
from attention_jax._chunked_forward import forward as _forward
from attention_jax._blocks import Plan, tile_of


def chunked_backward(plan: Plan, residuals, cotangents, *,
                     bias_grad: bool = True,
                     params_grad: tuple[bool, ...] | None = None):
  """Return the cotangents of `chunked_core`'s inputs.

  `residuals` are the inputs with the output and log-sum-exp that the
  weights are normalized by; `cotangents` are those of the output and the
  log-sum-exp (None for a zero log-sum-exp cotangent). The bias gradient is
  computed only with `bias_grad`, and that of each leaf of `params` only
  where `params_grad` (one flag per leaf, None for all) is True; the
  others are returned as None, which means zero.

  Tiles are recomputed transposed, `[B * K, bk, G * bq]` with keys as rows,
  so that the key and value gradients are plain matrix products and only
  the query gradient contracts over rows (see `tiles.key_major`).
  """
  query, key, value, bias, aux, params, out, logsumexp = residuals
  d_out, d_logsumexp = cotangents
  if plan.backward_blocks is not None:
    block_q, block_k = plan.backward_blocks
    plan = dataclasses.replace(plan, block_q=block_q, block_k=block_k,
                               backward_blocks=None)
  batch_size = query.shape[0]
  safe_logsumexp = jnp.where(jnp.isfinite(logsumexp), logsumexp, 0.0)
  modifies = tiles.modifies_logits(plan)
  # With a causal mask aligned with the tiles, every key block left of a
  # query block's diagonal is visible in full, except at a window's far
  # edge. The bq / bk key blocks on the diagonal have fixed masks.
  split = plan.split_diagonal
  if split:
    diagonal_masks = jnp.asarray(causal_patterns(plan.block_q, plan.block_k))

  def query_block(block, carry):
    q_start = block * plan.block_q
    q_rows = tiles.scaled_query_rows(plan, query, q_start)
    do_low = tiles.query_rows(plan, d_out, q_start).astype(value.dtype)
    # Row terms become [B * K, 1, G * bq], broadcast along each key row.
    lse_row = jnp.swapaxes(tiles.query_rows(plan, safe_logsumexp, q_start),
                           1, 2)
    # The row term of the softmax gradient, sum_v dO_tv O_tv, minus the
    # log-sum-exp's own cotangent (d lse / d logit is the weight itself).
    # Each block reduces its own rows: XLA's reduction over the whole
    # [B, T, N, H_v] arrays took about 2.4 ms at T = 2048 on one core.
    dot_rows = jnp.sum(
        tiles.query_rows(plan, d_out, q_start).astype(tiles.F32)
        * tiles.query_rows(plan, out, q_start).astype(tiles.F32),
        axis=-1, keepdims=True)
    if d_logsumexp is not None:
      dot_rows = dot_rows - tiles.query_rows(
          plan, d_logsumexp, q_start).astype(tiles.F32)
    dot_row = jnp.swapaxes(dot_rows, 1, 2)

    def visit(k_block_index, inner, diagonal_mask=None, window_edge=False):
      k_start, first_new = tiles.key_start(plan, k_block_index)

      def update(inner, mask):
        dq_t, dk, dv, dbias, dparams = inner
        masked = mask is not None
        k_rows = tiles.key_rows(plan, aux, key, k_start, zero=masked)
        v_rows = tiles.key_rows(plan, aux, value, k_start, zero=masked)
        logits = jnp.einsum("xsh,xrh->xsr", k_rows, q_rows,
                            preferred_element_type=tiles.F32)
        if plan.scale != 1.0:
          logits = logits * jnp.asarray(plan.scale, tiles.F32)
        if modifies:
          bias_tile = tile_of(plan, bias, q_start, k_start)
          modified, pullback = jax.vjp(
              functools.partial(tiles.modify_tile, plan, aux, batch_size,
                                q_start, k_start),
              tiles.from_key_major(plan, logits), bias_tile, params)
          logits = tiles.key_major(plan, modified, batch_size)
        valid = tiles.valid_entries(plan, mask, logits, transposed=True)
        if valid is not None:
          logits = jnp.where(valid, logits, -jnp.inf)
        probs = jnp.exp(logits - lse_row)
        # Matrix products take their operands in the input dtypes and
        # accumulate in float32, so low-precision inputs use the CPU's
        # low-precision units (as the forward pass does).
        d_probs = jnp.einsum("xsv,xrv->xsr", v_rows, do_low,
                             preferred_element_type=tiles.F32)
        dropout = tiles.dropout_scale(plan, aux, batch_size, q_start, k_start,
                                      transposed=True)
        weights = probs if dropout is None else probs * dropout
        weights = tiles.round_to(weights, value.dtype)
        dv_tile = jnp.einsum("xsr,xrv->xsv", weights, do_low,
                             preferred_element_type=tiles.F32)
        if dropout is not None:
          d_probs = d_probs * dropout
        # With dropout D, sum_s P_s D_s (dO . v_s) is still dO . O.
        d_logits = probs * (d_probs - dot_row)
        if modifies:
          d_logits5, dbias_tile, dparams_tile = pullback(
              tiles.from_key_major(plan, d_logits))
          d_logits = tiles.key_major(plan, d_logits5, batch_size)
          if dbias is not None:
            dbias = tiles.add_bias_grad(dbias, dbias_tile, q_start, k_start)
          dparams = [None if total is None
                     else total + part.astype(total.dtype)
                     for total, part in zip(dparams,
                                            jax.tree.leaves(dparams_tile))]
        if plan.scale != 1.0:
          d_logits = d_logits * jnp.asarray(plan.scale, tiles.F32)
        dk_tile = jnp.einsum("xsr,xrh->xsh",
                             tiles.round_to(d_logits, query.dtype), q_rows,
                             preferred_element_type=tiles.F32)
        dq_t = dq_t + jnp.einsum("xsh,xsr->xhr", k_rows,
                                 tiles.round_to(d_logits, key.dtype),
                                 preferred_element_type=tiles.F32)
        dk = tiles.add_key_rows(dk, dk_tile, k_start)
        dv = tiles.add_key_rows(dv, dv_tile, k_start)
        return dq_t, dk, dv, dbias, dparams

      if split and not window_edge:
        # Only the diagonal tiles need a mask, and it is a constant.
        return update(inner, diagonal_mask)
      mask = tiles.tile_mask(plan, aux, batch_size, q_start, k_start, first_new)
      if window_edge:
        return update(inner, mask)
      return ranges.visit_tile(plan, aux, q_start, k_start, first_new,
                               mask, update, inner)

    dq, dk, dv, dbias, dparams = carry
    first, last = ranges.key_block_range(plan, aux, block)
    # The query gradient is accumulated transposed, [B * K, H, G * bq].
    dq_t = jnp.zeros((q_rows.shape[0], q_rows.shape[2], q_rows.shape[1]),
                     tiles.F32)
    inner = (dq_t, dk, dv, dbias, dparams)
    if split:
      diagonal = (q_start + plan.key_length - plan.query_length
                  ) // plan.block_k
      if plan.window is not None:
        # Key blocks at the window's far edge get their mask.
        edge = ranges.full_window_start(plan, q_start, first, diagonal)
        inner = jax.lax.fori_loop(
            first, edge,
            lambda index, inner: visit(index, inner, window_edge=True),
            inner)
        first = edge
      inner = jax.lax.fori_loop(first, diagonal, visit, inner)
      inner = jax.lax.fori_loop(
          diagonal, last,
          lambda index, inner: visit(index, inner,
                                     diagonal_masks[index - diagonal]),
          inner)
    else:
      inner = jax.lax.fori_loop(first, last, visit, inner)
    dq_t, dk, dv, dbias, dparams = inner
    dq = tiles.put_query_rows(plan, dq, jnp.swapaxes(dq_t, 1, 2), q_start)
    return dq, dk, dv, dbias, dparams

  # Backward query blocks may cover fewer padding rows than the forward's,
  # so the query gradient of the rows past them stays zero.
  # Gradients that are not requested are not accumulated, because XLA
  # still computes a loop carry that no output uses, and a [B, N, T, S]
  # bias gradient is a full-size buffer updated on every tile.
  leaves, params_tree = jax.tree.flatten(params)
  if params_grad is None:
    params_grad = (True,) * len(leaves)
  init = (jnp.zeros(query.shape, tiles.F32),
          jnp.zeros(key.shape, tiles.F32), jnp.zeros(value.shape, tiles.F32),
          (jnp.zeros(bias.shape, tiles.F32)
           if bias is not None and bias_grad else None),
          [jnp.zeros(leaf.shape, tiles.F32) if requested else None
           for leaf, requested in zip(leaves, params_grad, strict=True)])
  dq, dk, dv, dbias, dparams = jax.lax.fori_loop(
      0, plan.num_q_blocks, query_block, init)
  if plan.query_scale != 1.0:
    # The tiles saw the query blocks times the scale.
    dq = dq * jnp.asarray(plan.query_scale, tiles.F32)
  if dbias is not None:
    dbias = dbias.astype(bias.dtype)
  aux_cotangents = jax.tree.map(lambda _: None, aux)
  dparams = params_tree.unflatten(
      [None if grad is None else grad.astype(leaf.dtype)
       for grad, leaf in zip(dparams, leaves)])
  return (dq.astype(query.dtype), dk.astype(key.dtype),
          dv.astype(value.dtype), dbias, aux_cotangents, dparams)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def chunked_core(plan: Plan, query, key, value, bias, aux, params):
  """Return `(out [B, T_pad, N, H_v], logsumexp [B, T_pad, N])`.

  `params` is the `score_mod_params` pytree (None for none); gradients flow
  into it like into the bias.
  """
  return _forward(plan, query, key, value, bias, aux, params)


def _core_fwd(plan, query, key, value, bias, aux, params):
  # With symbolic zeros, every input leaf arrives as a CustomVJPPrimal whose
  # `perturbed` field tells whether it is being differentiated.
  bias_grad = bias is not None and bias.perturbed
  params_grad = tuple(leaf.perturbed for leaf in jax.tree.leaves(params))
  query, key, value, bias, aux, params = jax.tree.map(
      lambda leaf: leaf.value, (query, key, value, bias, aux, params))
  out, logsumexp = _forward(plan, query, key, value, bias, aux, params)
  # Residuals hold arrays only, so the static flags travel as the pytree
  # structure: () for True, None for False.
  flags = (() if bias_grad else None,
           tuple(() if requested else None for requested in params_grad))
  return (out, logsumexp), ((query, key, value, bias, aux, params, out,
                             logsumexp), flags)


def _core_bwd(plan, residuals, cotangents):
  residuals, (bias_flag, params_flags) = residuals
  *_, out, _ = residuals
  d_out, d_logsumexp = cotangents
  if isinstance(d_out, SymbolicZero):
    d_out = jnp.zeros(out.shape, out.dtype)
  if isinstance(d_logsumexp, SymbolicZero):
    d_logsumexp = None
  return chunked_backward(
      plan, residuals, (d_out, d_logsumexp), bias_grad=bias_flag is not None,
      params_grad=tuple(flag is not None for flag in params_flags))


chunked_core.defvjp(_core_fwd, _core_bwd, symbolic_zeros=True)
