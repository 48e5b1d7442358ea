"""The per-device body of ring attention and its custom VJP.

Everything here runs inside `jax.shard_map`, on one device's shards:
query `[B, C * T_c, N, H]`, key `[B, C * S_c, K, H]` and value
`[B, C * S_c, K, H_v]`, where C is the number of chunks per device and
T_c, S_c the chunk lengths. Key and value shards travel around the ring
with `lax.ppermute`, one hop per step. Each (query chunk, key chunk) block
is computed by the library's chunked attention with `return_residual=True`
and merged into a running (output, log-sum-exp) pair with an online
softmax.

The backward pass rotates key, value and their gradient accumulators. A
block's weights are `exp(logit - lse)`, with the lse taken over all keys.
So the chunked kernel's backward tile loop, given the global output and lse
as residuals, returns the block's exact share of the gradients without
running the block's forward pass again. Memory stays at one block.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.distributed import _schedule
from attention_jax.distributed import layout as layout_lib
from attention_jax.chunked import chunked_attention_gradients
from attention_jax.dot_product import dot_product_attention


@dataclasses.dataclass(frozen=True)
class RingConfig:
  """Static settings of one ring attention call."""

  axis_name: str
  num_devices: int
  layout: str
  is_causal: bool
  scale: float | None
  query_chunk: int  # T_c
  key_chunk: int  # S_c

  @property
  def chunks(self) -> int:
    return layout_lib.chunks_per_device(self.layout)

  def kinds(self) -> np.ndarray:
    return _schedule.block_kinds(self.num_devices, self.layout,
                                 self.is_causal)


def _accumulator_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _split(x: jax.Array, pieces: int) -> list[jax.Array]:
  """Split the sequence axis (axis 1) into `pieces` equal chunks."""
  return jnp.split(x, pieces, axis=1)


def _rotate(config: RingConfig, x: jax.Array) -> jax.Array:
  """Send `x` to the next device on the ring and receive the previous one's."""
  size = config.num_devices
  pairs = [(device, (device + 1) % size) for device in range(size)]
  return jax.lax.ppermute(x, config.axis_name, perm=pairs)


def _block_lengths(lengths, key_start, key_chunk: int):
  """Return the key lengths `[B]` counted from the start of one key chunk."""
  if lengths is None:
    return None
  return jnp.clip(lengths - key_start, 0, key_chunk).astype(lengths.dtype)


def _attend_block(config: RingConfig, kind: int, query, key, value, lengths):
  """Return `(out [B, T_c, N, H_v], lse [B, T_c, N])` of one block."""
  return dot_product_attention(
      query, key, value, scale=config.scale,
      is_causal=kind == _schedule.DIAGONAL, key_value_seq_lengths=lengths,
      implementation="chunked", return_residual=True)


def _weight(part_lse: jax.Array, total_lse: jax.Array) -> jax.Array:
  """Return `exp(part_lse - total_lse)`, or 0 where the total is -inf."""
  seen = total_lse > -jnp.inf
  return jnp.where(seen, jnp.exp(part_lse - jnp.where(seen, total_lse, 0.0)),
                   0.0)


def _merge(out, lse, block_out, block_lse):
  """Merge one block's (output, log-sum-exp) into the running pair."""
  new_lse = jnp.logaddexp(lse, block_lse.astype(lse.dtype))
  out = (_weight(lse, new_lse)[..., None] * out
         + _weight(block_lse, new_lse)[..., None] * block_out.astype(out.dtype))
  return out, new_lse


def _run_kind(possible: np.ndarray, kind: jax.Array, branches: dict,
              *operands):
  """Run the branch for `kind`, compiling only the kinds in `possible`.

  `possible` lists the kinds that this block takes on any device and step.
  A block with a single possible kind is called directly, with no
  `lax.switch`.
  """
  present = sorted(int(k) for k in np.unique(possible))
  if len(present) == 1:
    return branches[present[0]](*operands)
  position = np.zeros(3, np.int32)
  position[present] = np.arange(len(present), dtype=np.int32)
  index = jnp.asarray(position)[kind]
  return jax.lax.switch(index, [branches[k] for k in present], *operands)


def _tables(config: RingConfig):
  """Return this device's index and the schedule tables.

  Returns `(device, static_kinds, kinds, key_starts)`: the block kinds as
  a NumPy `[P, P, C, C]` and as a device array, and the first original
  position of every chunk, int32 `[P, C]` indexed by owner and chunk.
  """
  device = jax.lax.axis_index(config.axis_name)
  static_kinds = config.kinds()
  chunk_ids = layout_lib.device_chunk_ids(config.num_devices, config.layout)
  key_starts = jnp.asarray(chunk_ids * config.key_chunk, jnp.int32)
  return device, static_kinds, jnp.asarray(static_kinds), key_starts


def _forward(config: RingConfig, query, key, value, lengths):
  """Return the local `(out, lse, computed_blocks)` of ring attention."""
  size, chunks = config.num_devices, config.chunks
  device, static_kinds, kinds, key_starts = _tables(config)
  accumulator = _accumulator_dtype(value.dtype)
  batch, _, num_heads, _ = query.shape
  lse_shape = (batch, config.query_chunk, num_heads)
  out_shape = lse_shape + (value.shape[-1],)
  value_dtype = value.dtype

  def skip(query, key, value, lengths):
    del query, key, value, lengths
    return (jnp.zeros(out_shape, value_dtype),
            jnp.full(lse_shape, -jnp.inf, accumulator), jnp.int32(0))

  def compute(kind):
    def run(query, key, value, lengths):
      out, lse = _attend_block(config, kind, query, key, value, lengths)
      return out, lse.astype(accumulator), jnp.int32(1)
    return run

  branches = {_schedule.SKIP: skip, _schedule.FULL: compute(_schedule.FULL),
              _schedule.DIAGONAL: compute(_schedule.DIAGONAL)}
  queries = _split(query, chunks)

  def step(index, carry):
    key, value, outs, lses, computed = carry
    # Send the shard on before using it, so the transfer can overlap the
    # computation. The last step sends it back to its owner, unused.
    next_key, next_value = _rotate(config, key), _rotate(config, value)
    owner = (device - index) % size
    keys, values = _split(key, chunks), _split(value, chunks)
    outs, lses = list(outs), list(lses)
    for a in range(chunks):
      for b in range(chunks):
        block_lengths = _block_lengths(lengths, key_starts[owner, b],
                                       config.key_chunk)
        out, lse, done = _run_kind(
            static_kinds[:, :, a, b], kinds[device, index, a, b], branches,
            queries[a], keys[b], values[b], block_lengths)
        outs[a], lses[a] = _merge(outs[a], lses[a], out, lse)
        computed = computed + done
    return next_key, next_value, tuple(outs), tuple(lses), computed

  init = (key, value,
          tuple(jnp.zeros(out_shape, accumulator) for _ in range(chunks)),
          tuple(jnp.full(lse_shape, -jnp.inf, accumulator)
                for _ in range(chunks)),
          jnp.int32(0))
  _, _, outs, lses, computed = jax.lax.fori_loop(0, size, step, init)
  out = jnp.concatenate(outs, axis=1).astype(value.dtype)
  return out, jnp.concatenate(lses, axis=1), computed


def _backward_blocks(config: RingConfig, kind: int, query, key, value,
                     lengths, out, lse, d_out, d_lse):
  """Return `(dq, dk, dv)` of one block from the global output and lse."""
  return chunked_attention_gradients(
      query, key, value, out, lse, d_out, d_lse, scale=config.scale,
      is_causal=kind == _schedule.DIAGONAL, key_value_seq_lengths=lengths)


def _backward(config: RingConfig, residuals, cotangents):
  query, key, value, lengths, out, lse = residuals
  d_out, d_lse = cotangents
  size, chunks = config.num_devices, config.chunks
  device, static_kinds, kinds, key_starts = _tables(config)
  accumulator = _accumulator_dtype(value.dtype)
  query_grad_dtype = _accumulator_dtype(query.dtype)

  def skip(query, key, value, *unused):
    del unused
    return (jnp.zeros_like(query), jnp.zeros_like(key),
            jnp.zeros_like(value))

  def compute(kind):
    return functools.partial(_backward_blocks, config, kind)

  branches = {_schedule.SKIP: skip, _schedule.FULL: compute(_schedule.FULL),
              _schedule.DIAGONAL: compute(_schedule.DIAGONAL)}
  queries = _split(query, chunks)
  outs = _split(out.astype(accumulator), chunks)
  lses = _split(lse, chunks)
  d_outs = _split(d_out.astype(accumulator), chunks)
  d_lses = _split(d_lse.astype(lse.dtype), chunks)

  def step(index, carry):
    key, value, d_key, d_value, d_queries = carry
    next_key, next_value = _rotate(config, key), _rotate(config, value)
    owner = (device - index) % size
    keys, values = _split(key, chunks), _split(value, chunks)
    d_keys, d_values = _split(d_key, chunks), _split(d_value, chunks)
    d_queries = list(d_queries)
    for a in range(chunks):
      for b in range(chunks):
        block_lengths = _block_lengths(lengths, key_starts[owner, b],
                                       config.key_chunk)
        dq, dk, dv = _run_kind(
            static_kinds[:, :, a, b], kinds[device, index, a, b], branches,
            queries[a], keys[b], values[b], block_lengths, outs[a], lses[a],
            d_outs[a], d_lses[a])
        d_queries[a] = d_queries[a] + dq.astype(query_grad_dtype)
        d_keys[b] = d_keys[b] + dk.astype(accumulator)
        d_values[b] = d_values[b] + dv.astype(accumulator)
    # The accumulators travel with their shard, so after the last step they
    # arrive back at the device that owns it.
    d_key = _rotate(config, jnp.concatenate(d_keys, axis=1))
    d_value = _rotate(config, jnp.concatenate(d_values, axis=1))
    return next_key, next_value, d_key, d_value, tuple(d_queries)

  init = (key, value, jnp.zeros(key.shape, accumulator),
          jnp.zeros(value.shape, accumulator),
          tuple(jnp.zeros(chunk.shape, query_grad_dtype) for chunk in queries))
  _, _, d_key, d_value, d_queries = jax.lax.fori_loop(0, size, step, init)
  d_query = jnp.concatenate(d_queries, axis=1)
  return (d_query.astype(query.dtype), d_key.astype(key.dtype),
          d_value.astype(value.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def ring_core(config: RingConfig, query, key, value, lengths):
  """Return the local `(out [B, C * T_c, N, H_v], lse [B, C * T_c, N])`.

  `lengths` is the integer `[B]` of key/value lengths, or None.
  """
  out, lse, _ = _forward(config, query, key, value, lengths)
  return out, lse


def _core_forward(config, query, key, value, lengths):
  out, lse, _ = _forward(config, query, key, value, lengths)
  return (out, lse), (query, key, value, lengths, out, lse)


def _core_backward(config, residuals, cotangents):
  d_query, d_key, d_value = _backward(config, residuals, cotangents)
  return d_query, d_key, d_value, None


ring_core.defvjp(_core_forward, _core_backward)


def count_computed_blocks(config: RingConfig, query, key, value, lengths):
  """Return how many blocks this device computed, an int32 scalar `[]`.

  The count is summed from inside the `lax.switch` branches that ran, so
  it measures what the forward pass did, not what the schedule intends.
  """
  return _forward(config, query, key, value, lengths)[2]
