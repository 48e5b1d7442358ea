"""Default tile sizes of the chunked implementation.

Each constant below was chosen by timing on 2-core CPUs (8 heads, head dim
64, float32, T = S = 1024 to 4096 unless a comment gives other sizes). The
comments record what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from attention_jax import _cpu_cache

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
# A causal mask uses the default tiles when T fills whole query blocks, so
# that each diagonal square is computed in quarters (`Plan.split_diagonal`).
# Otherwise square blocks of about this size cover T, padded by fewer than
# two rows per block (`_even_split_blocks`), and their diagonal tiles are
# computed whole. Forward passes on a 2-core Xeon (8 heads, head dim 64):
# - whole blocks: at T = 4096, quarters took 116 ms against 127 ms with
#   (512, 512) blocks, and at 8192 428 against 476 ms;
# - otherwise: padding T to whole blocks of 1024 for quarters took 50 ms
#   against 39 ms with (500, 500) blocks at T = 2000, 133 against 125 ms
#   at 4000 and 197 against 171 ms with (470, 470) at 4700;
# - the rows past the last whole block of 1024 as a second call took 26
#   against 19 ms with (368, 368) blocks at 1100, and 51 against 41 ms
#   at 2100. From 4200 to 8200 the two were within 10% of each other,
#   either way. That second call was dropped.
# NOTE: these and the spread blocks of `_balanced` were timed with 8 heads
# and head dim 64 only.
CAUSAL_FALLBACK_BLOCKS = (512, 512)
# The backward pass of attention with the default (1024, 512) tiles runs
# with (512, 512) tiles instead. Its temporary buffers then stay under 32 MB
# at T = S = 2048 (B = 1, N = 8), the largest threshold above which glibc
# maps each allocation afresh, so that every call page-faults its buffers
# again. On a 2-core AMD EPYC, forward+backward took 193 to 205 ms against
# 221 to 223 ms with (512, 1024) tiles at 2048 (27 against 43 MB of
# buffers), and 759 to 771 ms against 821 to 825 ms at 4096. Causal
# attention was also faster with (512, 512) tiles in its backward pass.
# Without a causal mask, query blocks that would pad T beyond the forward
# pass's blocks take a divisor of those instead (`_backward_rows`). At
# T = S = 1100 (forward blocks of 550), backward tiles of (550, 367)
# against (367, 367), which pad T to 1101, ran forward+backward 1.01x to
# 1.08x as fast in three paired runs on that EPYC, and at 1300 (650
# against 434 rows) 1.02x and 1.05x.
BACKWARD_BLOCKS = (512, 512)
# Without a causal mask, a backward pass over more than one block of 1024
# keys takes tiles of about 256 queries by 1024 keys, both spread evenly
# (see `_backward_rows`), as many logits as (512, 512). On a 2-core Xeon
# (8 heads, head dim 64), paired forward+backward runs took 162 against
# 168 ms at T = S = 2048 (1.01x to 1.05x in seven runs), 642 against
# 663 ms at 4096, 60 against 71 ms at 1100 (tiles of 220 by 550) and 370
# against 378 ms at 3000, and were within 3% at 1536 (tiles of 256 or 384
# by 768). With 2 key/value heads at 2048 they took 148 against 155 ms,
# and with one 155 against 154 ms. In the profile, the products that
# contract over the head dimension took 1.8 against 2.25 ms per tile, and
# the query gradient's product 0.6 against 1.05 ms. (192, 1024),
# (384, 1024) and (256, 768) were 1% to 8% slower than (512, 512) at
# 2048. (256, 1024) with a single key block of 1024 (T = S = 1024) was
# 14% slower, and its profile showed the loop step fused differently. A
# mask that hides keys keeps (512, 512): with key lengths of 1500 of
# 2048, narrower key blocks skip more of the hidden keys, and (256, 1024)
# took 180 against 152 ms.
# That Xeon has 2 MB of L2 cache per core. On a 2-core AMD EPYC (Zen 4,
# 1 MB per core), the same tiles were slower than (512, 512): 0.88x to
# 0.98x as fast at 2048 in five paired runs, 0.92x at 1536, 0.98x at
# 3000 and 0.96x at 4096. There, (256, 512), (512, 256), (1024, 256) and
# (256, 768) ran 0.90x to 0.99x as fast. So the wide tiles apply only
# where each core has at least `WIDE_BACKWARD_MIN_L2_BYTES` of L2 cache
# (`_cpu_cache`).
# Left alone: at 1100, where they cover the keys in two blocks of 550,
# they were 1.10x as fast on that EPYC as well.
NON_CAUSAL_BACKWARD_BLOCKS = (256, 1024)
WIDE_BACKWARD_MIN_L2_BYTES = 2 * 1024 * 1024
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


class Tiles(NamedTuple):
  """The tiles of one chunked attention call."""

  block_q: int
  block_k: int
  # (block_q, block_k) of the backward pass, or None for the forward's.
  backward_blocks: tuple[int, int] | None


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


def _balanced(size: int, length: int) -> int:
  """Return the smallest block that covers `length` in as many blocks as `size`.

  At T = 1100, query blocks of 1024 pad T to 2048, and blocks of 550 do
  not pad it. So a query block of 1024 becomes 550, and a key block of 512
  over S = 1100 becomes 367, whose last block overlaps the one before it by
  1 key instead of 436. Without a mask on a 2-core Xeon (8 heads, head dim
  64), forward passes at T = S = 1100 took 28 ms with (550, 512) tiles
  against 57 ms with (1024, 512), and at 2100 77 ms with (700, 512)
  against 115 ms, where 704-row blocks, a multiple of 8, took 84 ms.
  """
  count = -(-length // size)
  return -(-length // count) if count > 1 else size


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
             window, num_heads: int, balance: bool = False
             ) -> tuple[int, int, tuple[int, int] | None]:
  """Return `(block_q, block_k, backward_blocks)` from `default`.

  With `balance`, default sizes are spread evenly over T and S
  (`_balanced`), and backward query blocks come from `_backward_rows`. A
  causal call that splits needs the sizes as they are.
  """
  default_q, default_k = default
  spread = _balanced if balance else lambda size, length: size
  own_backward = (block_q is None and block_k is None
                  and default == DEFAULT_BLOCKS and query_length >= default_q)
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
    block_k = spread(block_k, key_length)
  if block_q is None:
    block_q = spread(default_q, query_length)
  block_q = block_size("block_q", block_q, query_length)
  backward_blocks = None
  if own_backward:
    rows = BACKWARD_BLOCKS[0]
    if balance:
      rows = _backward_rows(block_q, query_length, rows)
    backward_blocks = (
        rows,
        block_size("block_k", spread(BACKWARD_BLOCKS[1], key_length),
                   key_length))
  return block_q, block_size("block_k", block_k, key_length), backward_blocks


def _even_split_blocks(default, query_length: int) -> tuple[int, int]:
  """Return square blocks that cover T with fewer than two padded rows each.

  As many blocks as `default`'s query block needs, of an even size, as
  the causal split requires.
  """
  size = min(_balanced(default[0], query_length), query_length)
  size += size % 2
  return size, size


def _backward_rows(block_q: int, query_length: int, size: int) -> int:
  """Return a backward query block of about `size` that adds no padding.

  Blocks of `size` spread evenly over T are kept when they cover no more
  rows than the forward pass's blocks of `block_q`. Otherwise the result
  is the divisor of `block_q` nearest to `size`, by ratio. At T = 2100
  (forward blocks of 700), spread blocks of 234 padded the queries to
  2106 rows, and that pad alone took 3 ms on a 2-core Xeon.
  Forward+backward then ran 0.95x as fast as with blocks of 420, and
  1.04x as fast with blocks of 350.
  """
  rows = _balanced(size, query_length)
  if -(-query_length // rows) * rows <= -(-query_length // block_q) * block_q:
    return rows
  divisors = [d for d in range(1, block_q + 1) if block_q % d == 0]
  return min(divisors, key=lambda d: max(d / size, size / d))


def wide_backward_tiles_fit() -> bool:
  """Return whether the host's L2 cache suits `NON_CAUSAL_BACKWARD_BLOCKS`.

  False where the cache size is unknown, which keeps `BACKWARD_BLOCKS`.
  """
  size = _cpu_cache.l2_bytes_per_core()
  return size is not None and size >= WIDE_BACKWARD_MIN_L2_BYTES


def choose(*, block_q: int | None, block_k: int | None, query_length: int,
           key_length: int, num_heads: int, window, is_causal: bool,
           hides_keys: bool, splits: Callable[[int, int, bool], bool]
           ) -> Tiles:
  """Return the tiles for the caller's block sizes (None for the default).

  `splits(block_q, block_k, padding)` returns whether a causal call with
  those blocks computes its diagonal squares on their own
  (`Plan.split_diagonal`), where `padding` allows padding T for it
  (`_blocks.padded_to_split`). A causal call with default sizes keeps the
  default tiles when T fills whole query blocks, and otherwise takes
  `_even_split_blocks`, padded by a few rows. Calls that do not split
  take blocks spread evenly over T and S (`_balanced`). Without a causal
  mask, the backward pass takes query blocks from `_backward_rows`, which
  pad T no further than the forward pass's. With no mask that hides keys
  (`hides_keys`, as `Plan.hides_keys`), it takes tiles of
  `NON_CAUSAL_BACKWARD_BLOCKS` over more than 1024 keys where
  `wide_backward_tiles_fit`.
  """
  default = _default_blocks(DEFAULT_BLOCKS, window, num_heads)
  lengths = (query_length, key_length, window, num_heads)
  if not is_causal:
    tiles = Tiles(*_resolve(default, block_q, block_k, *lengths,
                            balance=True))
    if (tiles.backward_blocks is not None and not hides_keys
        and key_length > NON_CAUSAL_BACKWARD_BLOCKS[1]
        and wide_backward_tiles_fit()):
      rows, keys = NON_CAUSAL_BACKWARD_BLOCKS
      tiles = tiles._replace(backward_blocks=(
          _backward_rows(tiles.block_q, query_length, rows),
          _balanced(keys, key_length)))
    return tiles
  if block_q is not None or block_k is not None:
    return Tiles(*_resolve(default, block_q, block_k, *lengths))
  resolved = _resolve(default, None, None, *lengths)
  if splits(*resolved[:2], False):
    return Tiles(*resolved)
  fallback = _default_blocks(CAUSAL_FALLBACK_BLOCKS, window, num_heads)
  even = _even_split_blocks(fallback, query_length)
  if splits(*even, True):
    return Tiles(*even, None)
  return Tiles(*_resolve(fallback, None, None, *lengths, balance=True))
