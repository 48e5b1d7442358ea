"""Dropout on attention weights with an explicit PRNG key.

Whether a weight is dropped depends only on the key and the weight's
position `(batch, head, q_index, kv_index)`, through a counter-based hash.
Every implementation therefore drops the same weights for the same key,
whatever its block sizes, and the chunked path can regenerate a tile's
dropout mask in the backward pass instead of storing it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _checks

_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio, spreads consecutive indices


def _mix(x: jax.Array) -> jax.Array:
  """Scramble uint32 values (the "lowbias32" integer hash by C. Wellons)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def dropout_seeds(rng: jax.Array) -> jax.Array:
  """Return the two uint32 hash seeds that a PRNG key stands for."""
  return jax.random.bits(rng, (2,), jnp.uint32)


def keep_mask(
    seeds: jax.Array, rate: float, batch: jax.Array, head: jax.Array,
    q_index: jax.Array, kv_index: jax.Array,
) -> jax.Array:
  """Return True where a weight is kept, for broadcastable integer indices.

  Each weight is kept with probability `1 - rate` (rounded to a multiple of
  2**-32). The hash is not cryptographic; it only has to look random to a
  network being trained.

  Args:
    seeds: uint32 `[2]` from `dropout_seeds`.
    rate: drop probability in [0, 1).
    batch, head, q_index, kv_index: broadcastable integer index arrays.
  """
  as_u32 = lambda x: jnp.asarray(x).astype(jnp.uint32)
  row = _mix(seeds[0] ^ as_u32(batch))
  row = _mix(row ^ as_u32(head))
  row = _mix(row + as_u32(q_index) * jnp.uint32(_GOLDEN))
  column = _mix(seeds[1] + as_u32(kv_index) * jnp.uint32(_GOLDEN))
  bits = _mix(row ^ column)
  threshold = min(int(round((1.0 - rate) * 2.0**32)), 2**32 - 1)
  return bits < jnp.uint32(threshold)


def position_indices(shape: tuple[int, ...]):
  """Return broadcastable (batch, head, q_index, kv_index) for `[B..., N, T, S]`.

  Arrays of lower rank are treated as having leading axes of size 1; the
  batch index is flat over all leading batch axes.
  """
  shape = (1,) * max(0, 3 - len(shape)) + tuple(shape)
  *batch_shape, heads, queries, keys = shape
  flat = 1
  for size in batch_shape:
    flat *= size
  batch = jnp.arange(flat, dtype=jnp.int32).reshape(*batch_shape, 1, 1, 1)
  return (batch, jnp.arange(heads, dtype=jnp.int32)[:, None, None],
          jnp.arange(queries, dtype=jnp.int32)[:, None],
          jnp.arange(keys, dtype=jnp.int32))


def attention_dropout(
    weights: jax.Array,
    rate: float,
    rng: jax.Array | None,
    *,
    deterministic: bool = False,
) -> jax.Array:
  """Zero each weight with probability `rate` and rescale the rest.

  Dropout is off when `deterministic` is True, `rng` is None or `rate` is 0,
  so inference never drops weights. Kept weights are divided by
  `1 - rate`, which keeps the expected output unchanged.

  Args:
    weights: attention weights, typically `[B..., N, T, S]`.
    rate: drop probability in [0, 1).
    rng: a PRNG key, or None to turn dropout off.
    deterministic: turn dropout off regardless of `rng`.
  """
  _checks.check_dropout_rate(rate)
  if deterministic or rng is None or rate == 0.0:
    return weights
  keep = keep_mask(dropout_seeds(rng), rate,
                   *position_indices(weights.shape))
  keep = keep.reshape(weights.shape)
  keep_prob = 1.0 - rate
  return jnp.where(keep, weights / keep_prob, jnp.zeros_like(weights))
