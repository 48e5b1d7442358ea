"""Forward pass of the chunked implementation: an online softmax over tiles.

Each query block walks the range of key blocks that its causal or window
mask can reach, keeping a running maximum, normalizer and weighted sum
(FlashAttention, Dao et al. 2022), and stores only the output and the
per-row log-sum-exp. One tile's step is `_online_softmax.tile_update`.

With a causal mask whose diagonal runs through whole tiles (see
`Plan.split_diagonal`), a query block attends to the key blocks left of its
diagonal in full and to the diagonal square `[bq, bq]` in part. The square
is computed first: in tall blocks as three `[bq / 2, bq / 2]` tiles,
skipping its empty top-right quarter, otherwise as whole tiles with
constant masks. The key blocks left of it need no mask, except those at
the far edge of a sliding window.

Where every tile after a query block's first is visible in full, tiles
skip the maximum pass and keep one shift per row (`fixed_shift_applies`):
the row maximum of the first tile. With the causal split or a window,
the shift is instead the row's logit for its own position, which neither
mask hides. An exact pass with running maxima replaces the result if the
weights could overflow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _attend
from attention_jax import _chunked_tiles as tiles
from attention_jax import _online_softmax as online
from attention_jax import _tile_ranges as ranges
from attention_jax._blocks import Plan


def causal_patterns(block_q: int, block_k: int) -> np.ndarray:
  """Return the masks of the key blocks on a query block's causal diagonal.

  Entry `m` of the `[block_q // block_k, 1, 1, 1, block_q, block_k]` result
  is the tile-layout mask of the m-th key block from the diagonal's start:
  key j is visible from row i when `m * block_k + j <= i`.
  """
  rows = np.arange(block_q)[:, None]
  keys = np.arange(block_k)[None, :]
  masks = [m * block_k + keys <= rows for m in range(block_q // block_k)]
  return np.stack(masks)[:, None, None, None]


def _join_halves(plan: Plan, top, bottom):
  """Join the states of the top and bottom halves of a query block's rows."""
  def join(a, b):
    flat, _, features = a.shape
    a = a.reshape(flat, plan.group_size, -1, features)
    b = b.reshape(flat, plan.group_size, -1, features)
    return jnp.concatenate([a, b], axis=2).reshape(flat, -1, features)
  return tuple(join(a, b) for a, b in zip(top, bottom))


def _own_logits(plan: Plan, aux, q_rows, key, q_start):
  """Return the logit of each row of `q_rows` for its own key position.

  Query rows `[B * K, G * bq, H]` from `tiles.scaled_query_rows` at
  `q_start` and their bq own keys give `[B * K, G * bq, 1]`, computed as
  the tiles compute their logits without a bias or `score_mod`.
  """
  plan = dataclasses.replace(plan, block_k=plan.block_q)
  k_start = q_start + plan.key_length - plan.query_length
  k_rows = tiles.key_rows(plan, aux, key, k_start)
  flat, _, features = q_rows.shape
  grouped = q_rows.reshape(flat, plan.group_size, plan.block_q, features)
  logits = jnp.einsum("xgrh,xrh->xgr", grouped, k_rows,
                      preferred_element_type=tiles.F32)
  if plan.scale != 1.0:
    logits = logits * jnp.asarray(plan.scale, tiles.F32)
  logits = _attend.modify_logits(logits, None,
                                 logits_soft_cap=plan.logits_soft_cap,
                                 score_mod=None, indices=None)
  return logits.reshape(flat, -1, 1)


# Diagonal squares of query blocks at least this tall are computed in
# quarters, and smaller ones as whole masked tiles. On a 2-core Xeon at
# T = S = 4096 (8 heads), forward passes with (512, 512) tiles and a
# (1023, 0) window took 75 ms with whole diagonal tiles against 86 ms in
# quarters of 256, and causal attention at 2048 with 16 heads (query
# blocks of 512) 78 against 84 ms. With 1024 rows the quarters are
# (512, 512) tiles: causal attention at 4096 took 112 ms in quarters
# against 129 ms with whole (1024, 512) diagonal tiles.
QUARTERS_FROM_BLOCK_Q = 1024


def _diagonal_state(plan: Plan, aux, query, key, value, bias, params,
                    q_start, fixed_shift: bool):
  """Return the softmax state of a query block over its diagonal square.

  Rows `[q_start, q_start + bq)` attend to the keys at the same causal
  positions through a lower-triangular mask. With `fixed_shift`, each
  row's shift is its logit for its own position, which the causal mask
  never hides, so no tile needs a maximum pass.
  """
  if plan.block_q >= QUARTERS_FROM_BLOCK_Q:
    return _quartered_diagonal_state(plan, aux, query, key, value, bias,
                                     params, q_start, fixed_shift)
  k_start = q_start + plan.key_length - plan.query_length
  flat = key.shape[0] * plan.num_kv_heads
  q_rows = tiles.scaled_query_rows(plan, query, q_start)
  state = online.empty_state(flat, plan.group_size * plan.block_q,
                             value.shape[-1])
  if fixed_shift:
    state = (_own_logits(plan, aux, q_rows, key, q_start), *state[1:])
  patterns = jnp.asarray(causal_patterns(plan.block_q, plan.block_k))
  for index in range(plan.block_q // plan.block_k):
    state = online.tile_update(plan, aux, q_rows, q_start,
                               k_start + index * plan.block_k, key, value,
                               bias, params, state, patterns[index],
                               fixed_shift)
  return state


def _quartered_diagonal_state(plan: Plan, aux, query, key, value, bias,
                              params, q_start, fixed_shift: bool):
  """Return `_diagonal_state`, computed as three tiles of half the size.

  The top half of the rows attends only to the first half of the keys. The
  top half's tile is masked. The bottom half has a tile for each half of
  the keys, and only the second is masked.
  """
  k_start = q_start + plan.key_length - plan.query_length
  flat = key.shape[0] * plan.num_kv_heads
  half = plan.block_q // 2
  sub = dataclasses.replace(plan, block_q=half, block_k=half)
  lower = jnp.asarray(causal_patterns(half, half)[0])
  states = []
  previous = None
  for rows in (0, half):
    q_rows = tiles.scaled_query_rows(sub, query, q_start + rows)
    state = online.empty_state(flat, plan.group_size * half, value.shape[-1])
    if fixed_shift:
      shift = _own_logits(sub, aux, q_rows, key, q_start + rows)
      state = (shift, *state[1:])
    for keys in range(0, rows + half, half):
      if previous is not None:
        q_rows = online.after(q_rows, previous)
      state = online.tile_update(sub, aux, q_rows, q_start + rows,
                                 k_start + keys, key, value, bias, params,
                                 state, lower if keys == rows else None,
                                 fixed_shift)
      previous = state
    states.append(state)
  return _join_halves(plan, *states)


def fixed_shift_applies(plan: Plan, value_dtype) -> bool:
  """Return whether the forward pass keeps one softmax shift per row.

  The online softmax shifts each tile's logits by the running row maximum,
  which costs a pass over the tile for the maximum and a rescaling of the
  running sum and accumulator. Without a mask, every tile after a query
  block's first instead keeps the row maxima of that first tile as the
  shift. With a causal diagonal computed first (`Plan.split_diagonal`),
  or with a causal mask or a window and no other mask
  (`Plan.shifts_by_own_logit`), every
  tile keeps each row's logit for its own position, which neither the
  causal mask nor a window hides. A logit above the shift gives a
  weight above 1, which float32 represents with the same relative
  precision up to about exp(88). If a row's sum of weights could make its
  accumulator overflow, or is not finite, the whole pass runs again with
  running maxima (`_exact_unless_bounded`), so the result never depends on
  how far the logits rise above the shift. On a 2-core Xeon (8 heads, head
  dim 64, float32, T = S = 4096) the forward pass took 196 ms against
  210 ms, and a causal one 117 ms against 128 ms (paired runs).

  Left out:
  - a bias or `score_mod`, which can make a row's shift -inf;
  - float16 values, because the weights are rounded to float16, whose
    largest finite value is about exp(11);
  - more than one device, where the check would reduce over devices.
  """
  # The overlap of a shifted last key block never hides the first block,
  # which sets the shift.
  unmasked = not plan.hides_keys or plan.shifts_by_own_logit
  return (unmasked and not plan.can_produce_neg_inf
          and jnp.dtype(value_dtype) != jnp.float16
          and jax.device_count() == 1)


# A row's accumulator is at most its sum of weights times the largest
# absolute value (and the dropout scale). Below this bound it stays finite,
# with a margin for rounding the weights to a low-precision value dtype.
_ACCUMULATOR_LIMIT = 1e36


def _visitor(plan: Plan, fixed_shift: bool, q_start, q_rows, key, value, bias,
             aux, params, window_edge: bool = False, empty: bool = False):
  """Return `visit(k_block_index, state)`, which folds in one key block.

  `window_edge` marks key blocks at a window's far edge under the causal
  split, which get their mask but no test for being empty: the window
  shows the first of them to the block's first row, and the rest to more.
  `empty` is passed on to `online.tile_update`.
  """
  batch_size = key.shape[0]

  def visit(k_block_index, state):
    k_start, first_new = tiles.key_start(plan, k_block_index)
    update = lambda state, mask: online.tile_update(
        plan, aux, q_rows, q_start, k_start, key, value, bias, params,
        state, mask, fixed_shift, empty)
    if plan.split_diagonal and not window_edge:
      # Every other key block left of the diagonal is visible in full.
      return update(state, None)
    mask = tiles.tile_mask(plan, aux, batch_size, q_start, k_start,
                           first_new)
    if window_edge:
      return update(state, mask)
    return ranges.visit_tile(plan, aux, q_start, k_start, first_new, mask,
                             update, state)
  return visit


def _pass(plan: Plan, fixed_shift: bool, query, key, value, bias, aux,
          params):
  """Return `(out, logsumexp, bounded)` of one pass over every query block.

  `bounded` is whether every row's sum of weights keeps its accumulator
  within `_ACCUMULATOR_LIMIT`, always True without `fixed_shift`.
  """
  batch_size = query.shape[0]
  rows = plan.group_size * plan.block_q
  flat = batch_size * plan.num_kv_heads
  if fixed_shift:
    largest = jnp.max(jnp.abs(value)).astype(tiles.F32)
    if plan.dropout_rate:
      largest = largest / (1.0 - plan.dropout_rate)

  def query_block(block, outputs):
    q_start = block * plan.block_q
    q_rows = tiles.scaled_query_rows(plan, query, q_start)
    visit = _visitor(plan, fixed_shift, q_start, q_rows, key, value, bias,
                     aux, params)
    first, last = ranges.key_block_range(plan, aux, block)
    if plan.split_diagonal:
      init = _diagonal_state(plan, aux, query, key, value, bias, params,
                             q_start, fixed_shift)
      diagonal = (q_start + plan.key_length - plan.query_length
                  ) // plan.block_k
      last = jnp.asarray(diagonal, jnp.int32)
      if plan.window is not None:
        edge = ranges.full_window_start(plan, q_start, first, last)
        init = jax.lax.fori_loop(
            first, edge,
            _visitor(plan, fixed_shift, q_start, q_rows, key, value, bias,
                     aux, params, window_edge=True), init)
        first = edge
    else:
      init = online.empty_state(flat, rows, value.shape[-1])
      if fixed_shift and plan.shifts_by_own_logit:
        init = (_own_logits(plan, aux, q_rows, key, q_start), *init[1:])
    if fixed_shift and not plan.shifts_by_own_logit:
      # The first key block sets the shift of every row.
      init = _visitor(plan, False, q_start, q_rows, key, value, bias, aux,
                      params, empty=True)(first, init)
      first = first + 1
      # With one key block left, XLA inlines the loop and would start its
      # products alongside the first tile's. At T = S = 1024 (8 heads, 2-core
      # Xeon) the forward pass took 21.5 ms in order against 28.7 ms.
      visit = _visitor(plan, fixed_shift, q_start, online.after(q_rows, init),
                       key, value, bias, aux, params)
    row_max, total, acc = jax.lax.fori_loop(first, last, visit, init)
    out_buffer, logsumexp_buffer, bounded = outputs
    if fixed_shift:
      # NaN compares False, so a NaN or infinite sum (infinity times a zero
      # `largest` is NaN) also leads to the exact pass.
      bounded = bounded & (jnp.max(total) * largest < _ACCUMULATOR_LIMIT)
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)
    out = acc / safe_total
    logsumexp = jnp.where(seen, row_max + jnp.log(safe_total), -jnp.inf)
    return (tiles.put_query_rows(plan, out_buffer, out, q_start),
            tiles.put_query_rows(plan, logsumexp_buffer, logsumexp, q_start),
            bounded)

  # Each block is written in place, so the output needs no stacking and
  # transposing copy after the loop.
  outputs = (jnp.zeros(query.shape[:-1] + value.shape[-1:], value.dtype),
             jnp.zeros(query.shape[:-1], tiles.F32), jnp.asarray(True))
  return jax.lax.fori_loop(0, plan.num_q_blocks, query_block, outputs)


def _exact_unless_bounded(plan: Plan, result, bounded, operands):
  """Return `result`, or the result of a pass with running maxima.

  That pass also zeroes the values of hidden keys (`plan` is the caller's,
  with `zero_hidden_values`).

  A loop that runs at most once, rather than `lax.cond`: returning
  `result` from a branch copied the whole output (a causal forward pass
  at 4096 took 3% longer). JAX batches a `while_loop` with a mapped
  predicate by running it while any sequence needs it and selecting the
  new carry only for those sequences. A mapped `lax.cond` would instead
  run both branches on every call.
  """
  def exact(carry):
    del carry
    return *_pass(plan, False, *operands)[:2], jnp.asarray(True)
  *result, _ = jax.lax.while_loop(lambda carry: ~carry[-1], exact,
                                  (*result, bounded))
  return tuple(result)


def trusts_hidden_values(plan: Plan, aux) -> bool:
  """Return whether the forward pass first runs without zeroing any value.

  Keys past `key_value_seq_lengths` or in an all-False column of a dense
  mask get a weight of exactly 0, so their values change the output only
  if they are not finite (0 * inf is NaN). Zeroing them costs a pass over
  every masked tile's value block: when decoding from a cache of 32768
  slots on a 2-core Xeon, more time than the tile's matrix products. So
  the pass runs without it, and if any output is not finite, the exact
  pass zeroes them and replaces the result. One device only, like
  `fixed_shift_applies`.
  """
  hides_keys = plan.has_key_lengths or "key_reachable" in aux
  return hides_keys and jax.device_count() == 1


def forward(plan: Plan, query, key, value, bias, aux, params):
  """Return `(out [B, T_pad, N, H_v], logsumexp [B, T_pad, N])`."""
  operands = (query, key, value, bias, aux, params)
  fixed_shift = fixed_shift_applies(plan, value.dtype)
  trusting = trusts_hidden_values(plan, aux)
  if not fixed_shift and not trusting:
    return _pass(plan, False, *operands)[:2]
  fast = dataclasses.replace(plan, zero_hidden_values=not trusting)
  out, logsumexp, bounded = _pass(fast, fixed_shift, *operands)
  if trusting:
    bounded = bounded & jnp.all(jnp.isfinite(out))
  return _exact_unless_bounded(plan, (out, logsumexp), bounded, operands)
