"""Random test inputs with distinct sizes for every axis.

Every axis gets its own size so that a swapped axis changes a shape or a
value and cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np

BATCH = (2,)
QUERY_LENGTH = 7  # T
KEY_LENGTH = 11  # S
NUM_HEADS = 6  # N
NUM_KV_HEADS = 3  # K
HEAD_DIM = 5  # H
VALUE_DIM = 13  # H_v
# Two leading batch axes whose sizes differ from every other axis.
MULTI_BATCH = (2, 4)


def attention_inputs(
    seed: int,
    *,
    batch: tuple[int, ...] = BATCH,
    query_length: int = QUERY_LENGTH,
    key_length: int = KEY_LENGTH,
    num_heads: int = NUM_HEADS,
    num_kv_heads: int = NUM_KV_HEADS,
    head_dim: int = HEAD_DIM,
    value_dim: int = VALUE_DIM,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Return standard-normal query `[B..., T, N, H]`, key `[B..., S, K, H]`
  and value `[B..., S, K, H_v]`."""
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((*batch, query_length, num_heads, head_dim))
  key = rng.standard_normal((*batch, key_length, num_kv_heads, head_dim))
  value = rng.standard_normal((*batch, key_length, num_kv_heads, value_dim))
  return query.astype(dtype), key.astype(dtype), value.astype(dtype)


def random_mask(seed: int, shape: tuple[int, ...],
                density: float = 0.6) -> np.ndarray:
  """Return a boolean array that is True with probability `density`."""
  return np.random.default_rng(seed).random(shape) < density


def random_normal(seed: int, shape: tuple[int, ...],
                  dtype=np.float32) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
