"""Default tile sizes of the chunked implementation.

Each constant below was chosen by timing on 2-core CPUs (8 heads, head dim
64, float32, T = S = 1024 to 4096 unless a comment gives other sizes). The
comments record what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

# Large tiles amortize the fixed cost of each loop step. Without a mask,
# 1024 queries per tile ran about 10% faster than 512 on a 2-core Xeon
# (forward at 4096: 200 ms against 224 ms, jax.jit matmul at about 260
# GFLOP/s). On a 2-core AMD EPYC (1 MB of L2 cache per core), 512 queries
# were about 4% faster instead (226 against 235 ms), within that machine's
# noise. When T is shorter than a query block (decoding), key blocks grow
# to keep the tile area, because a loop step costs far more than a few
# small matrix rows.
DEFAULT_BLOCKS = (1024, 512)
# A window leaves masked tiles along both of its edges, and smaller tiles
# compute less of them. On a 2-core Xeon at T = S = 4096, forward passes
# with (512, 512) tiles took 89 against 114 ms with (1024, 512) for a
# (1023, 0) window, 94 against 117 ms for (511, 511) and 121 against
# 137 ms for (2047, 0). Windows narrower than 512 keys ran fastest with
# (512, 256) tiles: 55 against 61 ms with (256, 256) for (255, 0), and
# 76 against 89 ms for (255, 255). Forward+backward at 4096 took 322
# against 346 ms for (1023, 0), and the same time for (255, 0). Once
# causal windows got the causal split, (1024, 512) and (1024, 1024) tiles
# were still 13% and 19% slower than (512, 512) for (1023, 0).
WINDOW_BLOCKS = (512, 512)
NARROW_WINDOW_BLOCKS = (512, 256)
# A causal mask uses the default tiles when each diagonal square can be
# computed in quarters (`Plan.split_diagonal`). On a 2-core
# Xeon, the causal forward pass at 4096 then took 153 to 159 ms against 168
# to 177 ms with unsplit (512, 512) tiles, and it was faster at 512 to 2048
# too. Otherwise (512, 512) tiles compute less of the masked triangle than
# wider ones: unsplit (1024, 512) tiles took 169 to 172 ms at 4096.
CAUSAL_FALLBACK_BLOCKS = (512, 512)
# The backward pass of attention with the default (1024, 512) tiles runs
# with (512, 512) tiles instead. Its temporary buffers then stay under 32 MB
# at T = S = 2048 (B = 1, N = 8), the largest threshold above which glibc
# maps each allocation afresh, so that every call page-faults its buffers
# again. On a 2-core AMD EPYC, forward+backward took 193 to 205 ms against
# 221 to 223 ms with (512, 1024) tiles at 2048 (27 against 43 MB of
# buffers), and 759 to 771 ms against 821 to 825 ms at 4096. Causal
# attention was also faster with (512, 512) tiles in its backward pass.
BACKWARD_BLOCKS = (512, 512)
# Query blocks shrink (down to 256) while a tile would contain more logits
# than this, so that tiles of many heads stay near 16 MB in float32. With 64
# heads in one tile, 256 to 1024 queries timed the same. A large batch is
# instead split into chunks that run one after another (`_batch_chunks`).
TILE_LOGITS = 8 * 1024 * 512
MIN_DEFAULT_BLOCK_Q = 256
# Forward tiles with at most this many query rows (all heads together)
# multiply all key/value heads at once (`Plan.packs_heads`). Decoding over
# 4096 keys with 8 heads on a 2-core Xeon in steps of 1, 2, 4 and 8 tokens
# (8 to 64 rows), packed tiles ran 1.34, 1.60, 1.14 and 0.86 times as fast
# as unpacked ones. Over 32768 keys, 2 and 4 tokens ran 2.48 and
# 1.82 times as fast. With 32 heads and 8 key/value heads, 1 token ran
# 1.27 times as fast and 2 tokens (64 rows) 0.75 times.
PACKED_HEADS_MAX_ROWS = 32
# Such tiles under a window read about 8 key blocks per window width.
# Their key blocks are copied out of the cache, and smaller copies ran
# faster than the extra loop steps cost. Per step, decoding one token with
# 8 heads on a 2-core Xeon:
# - a (1023, 0) window took 0.77 ms in blocks of 128 keys, 1.04 ms in 512
#   and 1.44 ms in 1024 (the earlier default);
# - (255, 0) took 0.13 ms in blocks of 64, against 0.34 ms in 256;
# - (4095, 0) took 2.5 ms in 512 and 2.2 ms in 1024, against 3.1 ms in 4096.
DECODING_WINDOW_BLOCKS = 8
MIN_DECODING_WINDOW_BLOCK_K = 64


# A causal call whose T is neither a multiple of the query block nor within
# `_blocks.MAX_SPLIT_PADDING` of one can run as two calls
# (`attention_jax/_row_split.py`): the first whole query blocks with the
# causal split, the rows after them on their own. These are the largest
# shares of T for those rows, with the default query block and then with
# the causal fallback's. Paired forward passes on a 2-core Xeon (8 heads,
# head dim 64, float32), two calls against one:
# - default blocks (1024): 1.12x to 1.30x at T = 1100, 2100, 2200, 3200,
#   3300 and 4200, 1.07x to 1.11x at 2300 and 4500 (rows left: 2% to 11%),
#   but 1.02x at 3500 (12%) and 0.95x at 4700 (13%). There one call splits
#   too, with padded (512, 512) tiles (and (1024, 512) at 4700);
# - fallback blocks (512), where nothing splits: 1.31x at 1800 and 1.00x
#   at 1200 (15% left), but 0.80x at 1300 (21%), 0.92x at 700 (27%) and
#   0.62x at 1500 (32%).
# Forward+backward gained 1.10x to 1.86x where the forward pass gained,
# and lost 0.91x at 4700. More figures: benchmarks/README.md.
# NOTE: timed only with 8 heads and head dim 64.
MAX_TAIL_SHARES = (1 / 8, 1 / 6)


class Tiles(NamedTuple):
  """The tiles of one chunked attention call."""

  block_q: int
  block_k: int
  # (block_q, block_k) of the backward pass, or None for the forward's.
  backward_blocks: tuple[int, int] | None
  # With a value M, the call runs as two (`_row_split`): query rows [0, M)
  # with the causal split, and the rows after them on their own. The block
  # sizes above are then unused.
  split_rows: int | None = None


def _default_blocks(blocks, window, num_heads: int) -> tuple[int, int]:
  """Return the default `(block_q, block_k)` for one batch element."""
  if window is not None:
    narrow = window[0] + window[1] < DEFAULT_BLOCKS[1]
    blocks = NARROW_WINDOW_BLOCKS if narrow else WINDOW_BLOCKS
  block_q, block_k = blocks
  while (block_q > MIN_DEFAULT_BLOCK_Q
         and num_heads * block_q * block_k > TILE_LOGITS):
    block_q //= 2
  return block_q, block_k


def block_size(name: str, value: int, length: int) -> int:
  """Return a validated block size, at most `length` (and at least 1)."""
  if int(value) <= 0:
    raise ValueError(f"`{name}` should be a positive integer, but got {value}")
  # A block longer than the sequence only adds padding.
  return int(min(int(value), max(length, 1)))


def _window_keys(window) -> int:
  """Return the smallest power of two at least as wide as `window`."""
  return 1 << (window[0] + window[1]).bit_length()


def _resolve(default, block_q, block_k, query_length: int, key_length: int,
             window, num_heads: int
             ) -> tuple[int, int, tuple[int, int] | None]:
  default_q, default_k = default
  backward_blocks = None
  if (block_q is None and block_k is None and default == DEFAULT_BLOCKS
      and query_length >= default_q):
    backward_blocks = (BACKWARD_BLOCKS[0],
                       block_size("block_k", BACKWARD_BLOCKS[1], key_length))
  if block_k is None:
    rows = min(default_q if block_q is None else block_q, query_length)
    block_k = max(default_k, default_q * default_k // max(rows, 1))
    if window is not None:
      # Key blocks much wider than the window cannot be skipped. One query
      # attending to the last 1024 of 32768 keys took 52.5 ms in a single
      # key block of 32768 and 1.7 ms in blocks of 1024 (2-core Xeon).
      widest = max(default_k, _window_keys(window))
      if num_heads * rows <= PACKED_HEADS_MAX_ROWS:
        widest = max(MIN_DECODING_WINDOW_BLOCK_K,
                     _window_keys(window) // DECODING_WINDOW_BLOCKS)
      block_k = min(block_k, widest)
  block_q = block_size("block_q", default_q if block_q is None else block_q,
                       query_length)
  return block_q, block_size("block_k", block_k, key_length), backward_blocks


def choose(*, block_q: int | None, block_k: int | None, query_length: int,
           key_length: int, num_heads: int, window, is_causal: bool,
           splits: Callable[[int, int, int, int], bool],
           rows_may_split: bool = False) -> Tiles:
  """Return the tiles for the caller's block sizes (None for the default).

  `splits(block_q, block_k, query_length, key_length)` returns whether a
  causal call with those blocks and lengths can compute its diagonal
  squares in quarters (after padding, see `_blocks.padded_to_split`). A
  call that can always does, so a causal call takes the first default
  that allows it. With `rows_may_split` and default sizes, a causal call
  that no default lets split runs as two calls when the rows after the
  last whole query block are few enough (`MAX_TAIL_SHARES`).
  """
  defaults = [_default_blocks(DEFAULT_BLOCKS, window, num_heads)]
  defaulted = block_q is None and block_k is None
  if is_causal and defaulted:
    defaults.append(
        _default_blocks(CAUSAL_FALLBACK_BLOCKS, window, num_heads))
  for default, share in zip(defaults, MAX_TAIL_SHARES):
    resolved = _resolve(default, block_q, block_k, query_length, key_length,
                        window, num_heads)
    if not is_causal or splits(*resolved[:2], query_length, key_length):
      break
    rows = query_length - query_length % resolved[0]
    tail = query_length - rows
    if (rows_may_split and defaulted and rows
        and tail <= share * query_length):
      head = choose(block_q=None, block_k=None, query_length=rows,
                    key_length=key_length - tail, num_heads=num_heads,
                    window=window, is_causal=True, splits=splits)
      if splits(head.block_q, head.block_k, rows, key_length - tail):
        return Tiles(*resolved, split_rows=rows)
  return Tiles(*resolved)
