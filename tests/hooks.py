"""Example `score_mod` and `mask_mod` hooks shared by the chunked tests."""

import jax.numpy as jnp


def distance_penalty(score, batch, head, q_index, kv_index):
  """Subtract a per-head slope times the distance, as ALiBi does."""
  del batch
  slope = 0.25 * (head + 1).astype(score.dtype)
  return score - slope * jnp.abs(q_index - kv_index).astype(score.dtype)


def stripes(batch, head, q_index, kv_index):
  """Hide every third diagonal."""
  del batch, head
  return (q_index + kv_index) % 3 != 0
