"""Key/value caches for autoregressive decoding.

A cache is a pytree of fixed-size buffers plus the filled length of each
batch element, so it works under `jax.jit` with a static capacity and as the
carry of `lax.scan`. Query `t` of a step that appended T tokens sits at
absolute position `length - T + t`, which is the bottom-right causal
alignment used everywhere else in the library.

Two layouts:

* a linear cache (`sliding_window=False`) stores position p in slot p and
  at most `capacity` tokens;
* a sliding-window cache stores position p in slot `p % capacity`, a ring
  buffer that keeps the last `capacity` tokens and never overflows. Use it
  with a causal window, `local_window_size=(left, 0)`, and a capacity of at
  least `left + T` for steps of T tokens (`left + 1` for one token at a
  time).

Shape letters: B batch (any number of leading axes), C capacity, K
key/value heads, H head dimension (H_v for values), T new tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from attention_jax import _checks
from attention_jax.dot_product import dot_product_attention


class KVCache(NamedTuple):
  """Cached keys and values and the number of tokens each batch element holds.

  Attributes:
    key: `[B..., C, K, H]`.
    value: `[B..., C, K, H_v]`.
    length: int32 `[B...]`, tokens appended so far (for a ring buffer this
      may exceed C; only the last C are kept).
    is_ring: whether slots are reused modulo C (sliding-window cache). A
      Python bool, so it is static under `jit`.
  """

  key: jax.Array
  value: jax.Array
  length: jax.Array
  is_ring: bool = False

  @property
  def capacity(self) -> int:
    return self.key.shape[-3]


jax.tree_util.register_pytree_node(
    KVCache,
    lambda cache: ((cache.key, cache.value, cache.length), cache.is_ring),
    lambda is_ring, children: KVCache(*children, is_ring=is_ring))


def init_cache(
    batch_shape: tuple[int, ...],
    capacity: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    value_dim: int | None = None,
    dtype: DTypeLike = jnp.float32,
    sliding_window: bool = False,
) -> KVCache:
  """Return an empty cache.

  Args:
    batch_shape: B..., the leading batch axes.
    capacity: C, the number of slots. For a sliding-window cache this is the
      window length W.
    num_kv_heads: K. Grouped-query and multi-query models store only their
      K key/value heads.
    head_dim: H.
    value_dim: H_v; defaults to H.
    dtype: dtype of the stored keys and values.
    sliding_window: store positions modulo C (a ring buffer).
  """
  for name, size in (("capacity", capacity), ("num_kv_heads", num_kv_heads),
                     ("head_dim", head_dim)):
    if int(size) <= 0:
      raise ValueError(f"`{name}` should be a positive integer, but got {size}")
  value_dim = head_dim if value_dim is None else value_dim
  batch_shape = tuple(batch_shape)
  return KVCache(
      key=jnp.zeros((*batch_shape, capacity, num_kv_heads, head_dim), dtype),
      value=jnp.zeros((*batch_shape, capacity, num_kv_heads, value_dim),
                      dtype),
      length=jnp.zeros(batch_shape, jnp.int32),
      is_ring=bool(sliding_window))


def _check_new_entries(cache: KVCache, key: jax.Array, value: jax.Array):
  batch = cache.length.shape
  expected_key = (*batch, None, *cache.key.shape[-2:])
  if (key.ndim != cache.key.ndim or key.shape[:-3] != batch
      or key.shape[-2:] != cache.key.shape[-2:]):
    raise ValueError(
        "`key` should have shape [B..., T, K, H] = "
        f"{expected_key} to match the cache, but got {key.shape}")
  if value.shape[:-1] != key.shape[:-1] or (
      value.shape[-1] != cache.value.shape[-1]):
    raise ValueError(
        "`value` should have shape [B..., T, K, H_v] = "
        f"{(*key.shape[:-1], cache.value.shape[-1])} to match the cache, but "
        f"got {value.shape}")
  if not cache.is_ring and key.shape[-3] > cache.capacity:
    raise ValueError(
        f"cannot append {key.shape[-3]} tokens to a cache of capacity "
        f"{cache.capacity}; create the cache with a larger `capacity`")


def _check_no_overflow(cache: KVCache, new_length: jax.Array) -> None:
  # NOTE: lengths are data, so this check runs only outside `jit` and
  # `scan`. Traced lengths pass unchecked, and then `dynamic_update_slice`
  # clamps an overflowing write so that it overwrites the last slots.
  if cache.is_ring or isinstance(new_length, jax.core.Tracer):
    return
  longest = int(np.max(np.asarray(new_length)))
  if longest > cache.capacity:
    raise ValueError(
        f"the cache overflows: a batch element would hold {longest} tokens "
        f"but the capacity is {cache.capacity}; create the cache with a "
        "larger `capacity` or use a sliding-window cache")


def _write(buffer: jax.Array, entries: jax.Array, starts: jax.Array,
           is_ring: bool) -> jax.Array:
  """Write `entries [B..., T, ...]` into `buffer [B..., C, ...]` at `starts`."""
  batch = starts.shape
  flat_buffer = buffer.reshape((-1,) + buffer.shape[len(batch):])
  flat_entries = entries.reshape((-1,) + entries.shape[len(batch):])
  flat_starts = starts.reshape(-1)
  capacity = buffer.shape[len(batch)]

  def write_one(slots, new, start):
    if is_ring:
      # Position p goes to slot p % C; when T > C only the last C survive,
      # which `.at[].set` guarantees because later indices win.
      indices = (start + jnp.arange(new.shape[0])) % capacity
      return slots.at[indices].set(new.astype(slots.dtype))
    return jax.lax.dynamic_update_slice_in_dim(
        slots, new.astype(slots.dtype), start, axis=0)

  written = jax.vmap(write_one)(flat_buffer, flat_entries, flat_starts)
  return written.reshape(buffer.shape)


def append(cache: KVCache, key: ArrayLike, value: ArrayLike) -> KVCache:
  """Append T new tokens to every batch element.

  Args:
    cache: the cache.
    key: `[B..., T, K, H]`.
    value: `[B..., T, K, H_v]`.

  Returns:
    The updated cache; each `length` grows by T.

  Raises:
    ValueError: for shapes that do not match the cache, or when a linear
      cache would overflow (checked when lengths are concrete).
  """
  key, value = jnp.asarray(key), jnp.asarray(value)
  _check_new_entries(cache, key, value)
  new_length = cache.length + key.shape[-3]
  _check_no_overflow(cache, new_length)
  return KVCache(
      key=_write(cache.key, key, cache.length, cache.is_ring),
      value=_write(cache.value, value, cache.length, cache.is_ring),
      length=new_length, is_ring=cache.is_ring)


def prefill(
    cache: KVCache, key: ArrayLike, value: ArrayLike,
    lengths: ArrayLike | None = None,
) -> KVCache:
  """Fill an empty cache with prompts of possibly different lengths.

  Args:
    cache: an empty cache (as returned by `init_cache`).
    key: `[B..., P, K, H]`, prompts padded on the right to P tokens.
    value: `[B..., P, K, H_v]`.
    lengths: int `[B...]`, the true prompt lengths; defaults to P. The next
      `append` overwrites the padding.

  Returns:
    The filled cache.
  """
  key = jnp.asarray(key)
  if cache.is_ring and lengths is not None and (
      key.shape[-3] > cache.capacity):
    raise ValueError(
        f"cannot prefill {key.shape[-3]} padded tokens into a sliding-window "
        f"cache of capacity {cache.capacity}: the padding would overwrite "
        "real tokens; prefill at most capacity tokens")
  updated = append(cache, key, value)
  if lengths is None:
    return updated
  _checks.check_integer("lengths", lengths)
  _checks.check_exact_shape("lengths", lengths, cache.length.shape, "[B...]")
  lengths = jnp.asarray(lengths, jnp.int32)
  _check_no_overflow(cache, lengths)
  return updated._replace(length=cache.length + lengths)


def slot_positions(cache: KVCache) -> jax.Array:
  """Return the absolute position stored in each slot, int32 `[B..., C]`.

  Slots not yet written hold -1.
  """
  slots = jnp.arange(cache.capacity, dtype=jnp.int32)
  length = cache.length[..., None]
  if not cache.is_ring:
    return jnp.where(slots < length, slots, -1)
  # The newest position written to slot j is the largest p < length with
  # p % C == j.
  newest = length - 1 - jnp.mod(length - 1 - slots, cache.capacity)
  return jnp.where(newest >= 0, newest, -1)


def new_query_positions(cache: KVCache, query_length: int,
                        query_lengths: ArrayLike | None = None) -> jax.Array:
  """Return the positions `[B..., T]` of the T newest tokens of `cache`."""
  first = cache.length - (query_length if query_lengths is None
                          else jnp.asarray(query_lengths, jnp.int32))
  return first[..., None] + jnp.arange(query_length, dtype=jnp.int32)


def ring_mask(
    cache: KVCache, query_length: int, window: tuple[int, int] | None,
    query_lengths: ArrayLike | None = None,
) -> jax.Array:
  """Return the `[B..., 1, T, C]` mask of the T newest queries over a cache.

  A ring buffer stores positions out of order, so the mask is built from
  each slot's position. It stays small because C is the window length.
  """
  query_positions = new_query_positions(cache, query_length, query_lengths)
  key_positions = slot_positions(cache)
  distance = key_positions[..., None, :] - query_positions[..., :, None]
  allowed = (key_positions[..., None, :] >= 0) & (distance <= 0)
  if window is not None:
    allowed &= (distance >= -window[0]) & (distance <= window[1])
  if query_lengths is not None:
    real = jnp.arange(query_length) < jnp.asarray(query_lengths)[..., None]
    allowed &= real[..., :, None]
  return allowed[..., None, :, :]


def check_ring_window(cache: KVCache, query_length: int,
                      window: tuple[int, int] | None) -> None:
  """Raise unless a sliding-window cache still stores every query's keys."""
  if not cache.is_ring:
    return
  if window is None:
    raise ValueError(
        "a sliding-window cache needs `local_window_size`, because it "
        "keeps only the last capacity tokens")
  if window[0] + query_length > cache.capacity:
    raise ValueError(
        f"the first of {query_length} queries looks {window[0]} positions "
        f"back, but the sliding-window cache keeps only {cache.capacity}; "
        f"use a capacity of at least left + T = "
        f"{window[0] + query_length}")


def cached_attention(
    query: ArrayLike,
    cache: KVCache,
    *,
    scale: float | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_lengths: ArrayLike | None = None,
    **options,
) -> jax.Array:
  """Attend from the T newest tokens to everything in the cache.

  The tokens must already be appended, so query `t` of batch element `b`
  sits at position `length[b] - T + t` and attends to cached keys at or
  before its position (and within `local_window_size`, if given).

  Args:
    query: `[B..., T, N, H]` with K dividing N.
    cache: the cache after appending the same T tokens.
    scale: logit multiplier; None means `1 / sqrt(H)`.
    local_window_size: `(left, right)` window in positions. Required with a
      sliding-window cache, whose capacity must be at least `left + T` so
      that every query's window is still stored.
    query_lengths: int `[B...]`; only the first `query_lengths` of the T
      queries are real (the rest return zeros), as when prefilling prompts
      of different lengths.
    **options: other keyword arguments of `dot_product_attention` (bias,
      `score_mod`, `mask_mod`, `implementation`, dropout).

  Returns:
    `[B..., T, N, H_v]`.
  """
  query = jnp.asarray(query)
  _checks.check_rank("query", query, 3, "[B..., T, N, H]")
  batch = cache.length.shape
  if query.shape[:-3] != batch:
    raise ValueError(
        f"`query` should have shape [B..., T, N, H] with B... = {batch} as "
        f"in the cache, but got {query.shape}")
  query_length = query.shape[-3]
  window = _checks.normalize_window(local_window_size)
  check_ring_window(cache, query_length, window)

  first_position = cache.length - query_length
  if query_lengths is not None:
    _checks.check_integer("query_lengths", query_lengths)
    _checks.check_exact_shape("query_lengths", query_lengths, batch, "[B...]")
    # Padded queries sit past the real ones: the real tokens end at
    # first_position + query_lengths - 1, as written by `prefill`.
    first_position = cache.length - jnp.asarray(query_lengths, jnp.int32)
  if not cache.is_ring:
    return dot_product_attention(
        query, cache.key, cache.value, scale=scale, is_causal=True,
        query_offset=first_position, key_value_seq_lengths=cache.length,
        local_window_size=window, query_seq_lengths=query_lengths, **options)

  mask = ring_mask(cache, query_length, window, query_lengths)
  user_mask = options.pop("mask", None)
  if user_mask is not None:
    mask = mask & user_mask
  return dot_product_attention(
      query, cache.key, cache.value, mask=mask, scale=scale, **options)
