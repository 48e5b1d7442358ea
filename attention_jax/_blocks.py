"""Block layout for the chunked implementation.

Inside the chunked path every array uses a flat batch axis and splits the
query heads into key/value groups: query `[B, T, N, H]`, key
`[B, S, K, H]`, value `[B, S, K, H_v]`, with `N = K * G` (head `n` is
group member `n % G` of key/value head `n // G`). These are views of the
caller's `[B..., T, N, H]` arrays, so no copy is made; each tile transposes
only its own block. The output and log-sum-exp use the query's
layout. Masks and biases become `[B or 1, N or 1, T or 1, S or 1]`, so
that a bias shared across the batch or heads is never copied; each tile
of them is viewed as `[B or 1, K or 1, G or 1, bq or 1, bk or 1]`. The T axis
is padded to whole blocks (a copy only when T is not a multiple of the
block); the S axis is not (the last key block is shifted instead).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._tile_sizes import PACKED_HEADS_MAX_ROWS


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of one chunked attention call (hashable for jit)."""

  query_length: int
  key_length: int
  num_kv_heads: int
  group_size: int
  block_q: int
  block_k: int
  scale: float
  is_causal: bool
  window: tuple[int, int] | None
  logits_soft_cap: float | None
  score_mod: Callable | None
  mask_mod: Callable | None
  has_bias: bool
  has_mask: bool
  has_query_lengths: bool
  has_key_lengths: bool
  has_segments: bool
  has_offset: bool
  dropout_rate: float = 0.0
  # (block_q, block_k) of the backward pass when it differs from the
  # forward pass. Its block_q is at most the forward pass's.
  backward_blocks: tuple[int, int] | None = None
  # Factor applied to each query block as it is sliced, in the query dtype
  # (the softmax scale when that is exact there, else 1). The query
  # gradient includes it.
  query_scale: float = 1.0
  # Whether the forward pass zeroes the values of keys that no query may
  # see. A pass without it is checked for non-finite outputs (see
  # `_chunked_forward.forward`).
  zero_hidden_values: bool = True

  @property
  def num_q_blocks(self) -> int:
    return math.ceil(self.query_length / self.block_q)

  @property
  def num_k_blocks(self) -> int:
    return math.ceil(self.key_length / self.block_k)

  @property
  def padded_query_length(self) -> int:
    """T rounded up to whole query blocks of both passes."""
    length = self.num_q_blocks * self.block_q
    if self.backward_blocks is not None:
      block_q = self.backward_blocks[0]
      length = max(length, math.ceil(self.query_length / block_q) * block_q)
    return length

  @property
  def uses_positions(self) -> bool:
    return self.is_causal or self.window is not None

  @property
  def needs_bounds(self) -> bool:
    """Whether the last key block overlaps the one before it.

    Padded query rows need no mask: their outputs are sliced away and their
    output gradients are zero.
    """
    return self.key_length % self.block_k != 0

  @property
  def has_data_masks(self) -> bool:
    """Whether a mask depends on data: dense, lengths, segments, mask_mod."""
    return (self.has_mask or self.has_query_lengths or self.has_key_lengths
            or self.has_segments or self.mask_mod is not None)

  @property
  def hides_keys(self) -> bool:
    """Whether a mask hides keys, apart from the last key block's overlap.

    That overlap (`needs_bounds`) hides only keys that the block before it
    already counted.
    """
    return self.uses_positions or self.has_data_masks

  @property
  def split_diagonal(self) -> bool:
    """Whether each causal diagonal square is computed on its own.

    The forward pass then computes each query block's diagonal square
    first (as three quarter tiles when the block is tall, see
    `_chunked_forward.QUARTERS_FROM_BLOCK_Q`), and both passes visit the key
    blocks left of it
    with no mask, except those at a window's far edge (see
    `_chunked_forward`). That needs a causal mask, no other mask than a
    window that shows each row its whole part of the diagonal square, no
    query padding, and a diagonal that starts each query block on a key
    block boundary.
    """
    offset = self.key_length - self.query_length
    other_masks = self.has_offset or self.has_data_masks
    if self.window is not None and self.window[0] < self.block_q - 1:
      return False
    return (self.is_causal and not other_masks and offset >= 0
            and self.block_q % 2 == 0
            and self.query_length % self.block_q == 0
            and self.block_q % self.block_k == 0
            and offset % self.block_k == 0)

  @property
  def shifts_by_own_logit(self) -> bool:
    """Whether each row can be shifted by the logit of its own key position.

    A causal mask or a window never hides a row's own key. The shift
    applies under the causal split, and for a causal mask or any window
    (causal or not) with no other mask, no query padding and the queries
    aligned with the last T keys. A query block's own keys are then one
    slice of the keys. On a 2-core Xeon (8 heads, head dim 64), a causal
    forward pass with T = 700 and S = 1000, which cannot split, took
    19.7 ms with this shift against 21.6 ms with running maxima.
    """
    if self.split_diagonal:
      return True
    offset = self.key_length - self.query_length
    other_masks = self.has_offset or self.has_data_masks
    shows_own_key = (self.is_causal if self.window is None
                     else min(self.window) >= 0)
    return (shows_own_key and not other_masks and offset >= 0
            and self.query_length % self.block_q == 0)

  @property
  def packs_heads(self) -> bool:
    """Whether forward tiles multiply all key/value heads at once.

    With few query rows per tile, as when decoding, a tile's time goes
    into transposing its key and value blocks to `[B * K, bk, H]`. The
    packed products of `_packed_heads` read the blocks as they lie and do
    K times the arithmetic instead.
    """
    rows = self.num_kv_heads * self.group_size * self.block_q
    return self.num_kv_heads > 1 and rows <= PACKED_HEADS_MAX_ROWS

  @property
  def can_produce_neg_inf(self) -> bool:
    """Whether logits can be -inf, which counts as masked."""
    return self.has_bias or self.score_mod is not None


# A causal call whose T is not a multiple of the query block pads its keys
# as far as its queries when that adds at most this share of T, so that the
# diagonal split applies (`padded_to_split`).
# NOTE: an eighth is a judgement. It was timed only at T = 2000 and 4000.
MAX_SPLIT_PADDING = 1 / 8


def padded_to_split(plan: Plan) -> Plan:
  """Return `plan` with T and S padded to whole query blocks, if that splits.

  `Plan.split_diagonal` needs T to be a multiple of the query block.
  Padding the keys by as many zero rows as the queries keeps the causal
  offset S - T, so no real query can attend to a padded key. Returns
  `plan` itself when it already splits, or when padding would not make it
  split or would add more than `MAX_SPLIT_PADDING` of T.
  """
  pad = plan.padded_query_length - plan.query_length
  if not pad or pad > MAX_SPLIT_PADDING * plan.query_length:
    return plan
  padded = dataclasses.replace(plan, query_length=plan.query_length + pad,
                               key_length=plan.key_length + pad)
  return padded if padded.split_diagonal else plan


def to_block_layout(
    x: jax.Array | None,
    batch_shape: tuple[int, ...],
    padded_lengths: tuple[int, int],
    fill,
) -> jax.Array | None:
  """Reshape a `[B..., N, T, S]`-broadcastable array to `[B, N, T, S]`.

  Axes of size 1 stay size 1; full T and S axes are padded with `fill` up to
  `padded_lengths`. The heads stay in one axis, which `tile_of` splits per
  tile: splitting the whole array into K and G here made XLA copy it when
  G = 1 (128 MB for a `[1, 8, 2048, 2048]` float32 bias).
  """
  if x is None:
    return None
  x = jnp.asarray(x)
  rank = len(batch_shape) + 3
  x = x.reshape((1,) * (rank - x.ndim) + x.shape)
  batch_part = x.shape[:len(batch_shape)]
  if all(size == 1 for size in batch_part):
    flat_batch = 1
  else:
    x = jnp.broadcast_to(x, tuple(batch_shape) + x.shape[len(batch_shape):])
    flat_batch = int(np.prod(batch_shape, dtype=np.int64))
  heads, rows, cols = x.shape[-3:]
  x = x.reshape(flat_batch, heads, rows, cols)
  pad_rows = padded_lengths[0] - rows if rows != 1 else 0
  pad_cols = padded_lengths[1] - cols if cols != 1 else 0
  if pad_rows or pad_cols:
    x = jnp.pad(x, ((0, 0),) * 2 + ((0, pad_rows), (0, pad_cols)),
                constant_values=fill)
  return x


def tile_of(plan: Plan, x: jax.Array | None, q_start,
            k_start) -> jax.Array | None:
  """Slice the tile at `(q_start, k_start)` of a `[B, N, T, S]` block-layout
  array as `[B, K, G, block_q, block_k]`, keeping axes of size 1."""
  if x is None:
    return None
  batch, heads, rows, cols = x.shape
  if rows != 1:
    x = jax.lax.dynamic_slice_in_dim(x, q_start, plan.block_q, axis=2)
  if cols != 1:
    x = jax.lax.dynamic_slice_in_dim(x, k_start, plan.block_k, axis=3)
  head_shape = (1, 1) if heads == 1 else (plan.num_kv_heads, plan.group_size)
  return x.reshape(batch, *head_shape, *x.shape[2:])
