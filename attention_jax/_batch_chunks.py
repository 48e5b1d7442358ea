"""Run the chunked kernel over a large batch a few elements at a time.

A tile contains every head of every batch element it covers, so with a
large batch it outgrows the CPU caches and each pass over it slows down. On
a 2-core CPU, the forward pass over eight sequences of 2048 tokens (8 heads)
took about 450 ms one sequence at a time against 614 ms as one batch.
Sequences are independent, so a loop over batch chunks gives the same
result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import _tile_ranges as ranges
from attention_jax._blocks import Plan
from attention_jax._chunked_kernel import chunked_core

# Aux entries with a leading batch axis. `dropout_seeds` has none.
_PER_BATCH = ("mask", "offset", "query_lengths", "key_lengths",
              "query_segments", "key_segments", "key_reachable")


def batch_chunk(batch_size: int, num_heads: int, tile_area: int,
                tile_logits: int) -> int:
  """Return the largest divisor of `batch_size` whose tiles fit the budget.

  A tile of `c` batch elements has `c * num_heads * tile_area` logits, where
  `tile_area` is block_q * block_k. The result is at least 1.
  """
  largest = max(1, tile_logits // (num_heads * tile_area))
  chunk = min(batch_size, largest)
  while batch_size % chunk:
    chunk -= 1
  return chunk


def core_in_chunks(plan: Plan, chunk: int, query, key, value, bias, aux,
                   params, *, vectorize: bool = False):
  """Return `chunked_core(...)` computed `chunk` batch elements at a time.

  Arrays use the block layout (batch first). The kernel receives each chunk's
  first global batch index in `aux["batch_start"]`, so `score_mod`,
  `mask_mod` and dropout receive the same batch indices as in one call.
  With `vectorize` (and `chunk` 1), `jax.vmap` maps the kernel over the
  batch instead of a loop, so the batch stays an axis of its own in every
  tile (see `chunked._vectorizes_batch`).
  """
  batch_size = query.shape[0]
  if chunk >= batch_size:
    return chunked_core(plan, query, key, value, bias, aux, params)
  if vectorize and chunk != 1:
    raise ValueError(
        f"`chunk` should be 1 with `vectorize=True`, but got {chunk}")
  if vectorize:
    # Loop bounds and tile skipping use batch-wide extremes, computed here
    # once, so that they do not depend on the sequence that vmap maps.
    aux = dict(aux)
    for name in ranges.BOUNDED:
      if name in aux:
        aux[name + "_min"] = jnp.min(aux[name])
        aux[name + "_max"] = jnp.max(aux[name])
  count = batch_size // chunk

  def split(x):
    # With one sequence per chunk the loop runs over the batch axis itself:
    # a new size-1 axis made XLA copy every input into another layout.
    return x if chunk == 1 else x.reshape(count, chunk, *x.shape[1:])

  def join(x):
    return x[None] if chunk == 1 else x

  mapped = {"query": split(query), "key": split(key), "value": split(value),
            "start": jnp.arange(count, dtype=jnp.int32) * chunk}
  if bias is not None and bias.shape[0] == batch_size:
    mapped["bias"] = split(bias)
  for name in _PER_BATCH:
    if name in aux and aux[name].shape[0] == batch_size:
      mapped["aux_" + name] = split(aux[name])

  def one_chunk(part):
    part_aux = dict(aux)
    for name in _PER_BATCH:
      if "aux_" + name in part:
        part_aux[name] = join(part["aux_" + name])
    part_aux["batch_start"] = part["start"]
    part_bias = join(part["bias"]) if "bias" in part else bias
    out, logsumexp = chunked_core(
        plan, join(part["query"]), join(part["key"]), join(part["value"]),
        part_bias, part_aux, params)
    if chunk == 1:
      return out[0], logsumexp[0]
    return out, logsumexp

  if vectorize:
    out, logsumexp = jax.vmap(one_chunk)(mapped)
  else:
    out, logsumexp = jax.lax.map(one_chunk, mapped)
  if chunk == 1:
    return out, logsumexp
  return (out.reshape(batch_size, *out.shape[2:]),
          logsumexp.reshape(batch_size, *logsumexp.shape[2:]))
