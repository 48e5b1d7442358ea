"""Tile ranges of the chunked implementation: the tiles to visit and their masks.

A query block visits the key blocks its causal, window and length bounds can
reach (`key_block_range`). Inside that range, a tile's corners tell whether
its position-based mask hides all, some or none of it (`tile_bounds`), and
`visit_tile` skips or unmasks it accordingly. Under the causal split,
`full_window_start` marks where a window's masked far edge ends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax._blocks import Plan


# Per-sequence aux entries whose batch-wide extremes decide loop bounds and
# tile skipping. `_batch_chunks` passes those extremes precomputed, as
# "<name>_min" and "<name>_max", when it maps the kernel over the batch
# with `jax.vmap`, so that no bound depends on the mapped sequence.
BOUNDED = ("offset", "query_lengths", "key_lengths")


def batch_min(aux: dict, name: str) -> jax.Array:
  """Return the smallest value of per-sequence `aux[name]` over the batch."""
  return aux[name + "_min"] if name + "_min" in aux else jnp.min(aux[name])


def batch_max(aux: dict, name: str) -> jax.Array:
  """Return the largest value of per-sequence `aux[name]` over the batch."""
  return aux[name + "_max"] if name + "_max" in aux else jnp.max(aux[name])


def key_block_range(plan: Plan, aux: dict, block):
  """Return `[first, last)` key blocks that query block `block` can see."""
  first = jnp.int32(0)
  last = jnp.int32(plan.num_k_blocks)
  q_first = block * plan.block_q
  q_last = jnp.minimum(q_first + plan.block_q, plan.query_length) - 1
  if plan.uses_positions:
    if plan.has_offset:
      low, high = batch_min(aux, "offset"), batch_max(aux, "offset")
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
    longest = batch_max(aux, "key_lengths")
    last = jnp.minimum(last, -(-longest // plan.block_k))
  if plan.has_query_lengths:
    last = jnp.where(q_first < batch_max(aux, "query_lengths"), last, first)
  first = jnp.clip(first, 0, plan.num_k_blocks).astype(jnp.int32)
  last = jnp.clip(last, first, plan.num_k_blocks).astype(jnp.int32)
  return first, last


def full_window_start(plan: Plan, q_start, first, diagonal):
  """Return the first key block in `[first, diagonal]` that no window hides.

  With the causal split (`Plan.split_diagonal`) and a window of `left`
  keys, the key blocks from `first` up to this one contain the window's
  far edge and need a mask. Those from it up to the diagonal need none,
  because their first key is within `left` of the query block's last row.
  """
  if plan.window is None:
    return first
  last_row = q_start + plan.key_length - plan.query_length + plan.block_q - 1
  start = -(-(last_row - plan.window[0]) // plan.block_k)
  return jnp.clip(start, first, diagonal).astype(jnp.int32)


def tile_bounds(plan: Plan, aux: dict, q_start, k_start, first_new):
  """Return scalar `(some, every)` for the position-based parts of a mask.

  The causal, window, length and block-bound masks depend only on indices
  and per-batch scalars, so whether a tile has any or only visible entries
  follows from its corners without building the `[bq, bk]` mask. `some` may
  be True for a tile that is empty for every batch element, which only
  costs time. `every` is True only when every entry is visible.
  """
  q_first, q_last = q_start, q_start + plan.block_q - 1
  k_first, k_last = k_start, k_start + plan.block_k - 1
  some, every = jnp.bool_(True), jnp.bool_(True)
  if plan.needs_bounds:
    every = every & (k_first >= first_new)
  if plan.uses_positions:
    if plan.has_offset:
      low, high = batch_min(aux, "offset"), batch_max(aux, "offset")
    else:
      low = high = plan.key_length - plan.query_length
    # Key minus query position over the tile, for any batch element.
    nearest = k_first - (q_last + high)
    farthest = k_last - (q_first + low)
    right = 0 if plan.is_causal else None
    left = None
    if plan.window is not None:
      left = plan.window[0]
      right = plan.window[1] if right is None else min(right, plan.window[1])
    if right is not None:
      some = some & (nearest <= right)
      every = every & (farthest <= right)
    if left is not None:
      some = some & (farthest >= -left)
      every = every & (nearest >= -left)
  if plan.has_key_lengths:
    some = some & (k_first < batch_max(aux, "key_lengths"))
    every = every & (k_last < batch_min(aux, "key_lengths"))
  if plan.has_query_lengths:
    some = some & (q_first < batch_max(aux, "query_lengths"))
    every = every & (q_last < batch_min(aux, "query_lengths"))
  return some, every


def visit_tile(plan: Plan, aux: dict, q_start, k_start, first_new, mask,
               update, carry):
  """Skip an all-False tile, and drop the mask of an all-True one.

  `update(carry, mask)` takes the mask, or None when every entry is
  visible; interior tiles of a causal or window mask then need no `where`.
  Segment ids, dense masks and `mask_mod` are reduced over the tile. The
  other mask parts are decided from the tile's corners.
  """
  if mask is None:
    return update(carry, None)
  some, every = tile_bounds(plan, aux, q_start, k_start, first_new)
  if plan.has_segments or plan.has_mask or plan.mask_mod is not None:
    some = some & jnp.any(mask)
    every = every & jnp.all(mask)
  branch = jnp.where(some, jnp.where(every, 2, 1), 0)
  return jax.lax.switch(
      branch,
      (lambda c: c, lambda c: update(c, mask), lambda c: update(c, None)),
      carry)
