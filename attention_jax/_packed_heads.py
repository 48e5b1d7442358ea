"""Tile products that read key and value blocks as they lie in memory.

A key block `[B, bk, K, H]` is `[B, bk, K * H]` without a copy. Query rows
placed block-diagonally, `[B, K * G * bq, K * H]` with zeros outside each
row's own key/value head, multiply it in one plain matrix product whose
logits are the tile's `[B * K, G * bq, bk]`. The weights times the value
block give every head's values for every row, and each row keeps those of
its own head.

This does K times the arithmetic of the per-head products, but needs no
transposing copy of the key and value blocks, which is what a tile with
few query rows spends its time on (`Plan.packs_heads`). One difference:
the zeros meet every head's key entries, so a key that is not finite in
one head at a visible position gives that position a NaN logit in every
head, not only in its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax._blocks import Plan

F32 = jnp.float32


def logits(plan: Plan, q_rows: jax.Array, k_block: jax.Array) -> jax.Array:
  """Return the unscaled logits `[B * K, G * bq, bk]` in float32.

  Args:
    q_rows: `[B * K, G * bq, H]`.
    k_block: `[B, bk, K * H]`.
  """
  heads = plan.num_kv_heads
  rows = q_rows.reshape(-1, heads, q_rows.shape[1], q_rows.shape[2])
  eye = jnp.eye(heads, dtype=q_rows.dtype)
  diagonal = jnp.einsum("bkrh,kj->bkrjh", rows, eye)
  diagonal = diagonal.reshape(rows.shape[0], heads * rows.shape[2], -1)
  products = jnp.einsum("brc,bsc->brs", diagonal, k_block,
                        preferred_element_type=F32)
  return products.reshape(-1, q_rows.shape[1], k_block.shape[1])


def weighted_values(plan: Plan, weights: jax.Array,
                    v_block: jax.Array) -> jax.Array:
  """Return each row's weighted sum of its own head's values.

  Args:
    weights: `[B * K, G * bq, bk]`.
    v_block: `[B, bk, K * H_v]`.

  Returns:
    `[B * K, G * bq, H_v]` in float32.
  """
  heads = plan.num_kv_heads
  batch = v_block.shape[0]
  rows = weights.shape[1]
  every = jnp.einsum("brs,bsc->brc",
                     weights.reshape(batch, heads * rows, -1), v_block,
                     preferred_element_type=F32)
  every = every.reshape(batch, heads, rows, heads, -1)
  # A selection, not a product with an identity matrix: another head's
  # values may be infinite where this head's weights are 0.
  own = jnp.diagonal(every, axis1=1, axis2=3)
  return jnp.moveaxis(own, -1, 1).reshape(batch * heads, rows, -1)
