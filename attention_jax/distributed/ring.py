"""Ring attention: exact attention over a sequence sharded across devices.

Shape letters: B batch, T queries, S keys, N query heads, K key/value
heads (K divides N), H head dimension, H_v value head dimension, P the
number of devices on the mesh axis that shards the sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import scores as scores_lib
from attention_jax.distributed import _ring_core
from attention_jax.distributed import layout as layout_lib


def _check_mesh_axis(argument: str, name, mesh: Mesh) -> int:
  """Return the size of mesh axis `name`, or raise naming `argument`."""
  if name not in mesh.axis_names:
    raise ValueError(
        f"`{argument}` should name an axis of `mesh`, one of "
        f"{tuple(mesh.axis_names)}, but got {name!r}")
  return int(mesh.shape[name])


def _check_divides(argument: str, size: int, axis_argument: str, axis: str,
                   axis_size: int) -> None:
  if size % axis_size:
    raise ValueError(
        f"{argument} should be divisible by the size {axis_size} of mesh "
        f"axis {axis!r} (`{axis_argument}`), but got {size}")


def _validate(query, key, value, lengths, *, mesh, axis_name, batch_axis_name,
              head_axis_name, is_causal, layout) -> int:
  """Validate the arguments of `ring_attention` and return P, the ring size."""
  scores_lib.check_query_key(query, key)
  _checks.check_value(key, value)
  for name, array, letters in (("query", query, "[B, T, N, H]"),
                               ("key", key, "[B, S, K, H]"),
                               ("value", value, "[B, S, K, H_v]")):
    if array.ndim != 4:
      raise ValueError(
          f"`{name}` should have shape {letters} with exactly one batch "
          f"axis, but got {array.shape}")
  if not isinstance(mesh, Mesh):
    raise TypeError(
        f"`mesh` should be a jax.sharding.Mesh, but got {type(mesh).__name__}")
  layout_lib.check_layout(layout)

  num_devices = _check_mesh_axis("axis_name", axis_name, mesh)
  named = [axis_name]
  for argument, name in (("batch_axis_name", batch_axis_name),
                         ("head_axis_name", head_axis_name)):
    if name is None:
      continue
    _check_mesh_axis(argument, name, mesh)
    if name in named:
      raise ValueError(
          f"`{argument}` should differ from the other mesh axes given "
          f"({', '.join(repr(n) for n in named)}), but got {name!r}")
    named.append(name)

  batch, query_length, num_heads, _ = query.shape
  key_length, num_kv_heads = key.shape[1], key.shape[2]
  layout_lib.check_divisible(f"`query` sequence length T (mesh axis "
                             f"{axis_name!r})", query_length, num_devices,
                             layout)
  layout_lib.check_divisible(f"`key` sequence length S (mesh axis "
                             f"{axis_name!r})", key_length, num_devices,
                             layout)
  if is_causal and query_length != key_length:
    raise ValueError(
        "ring attention with `is_causal=True` needs queries and keys of the "
        f"same sequence, T == S, but got T={query_length} and S={key_length}")
  if batch_axis_name is not None:
    _check_divides("`query` batch size B", batch, "batch_axis_name",
                   batch_axis_name, int(mesh.shape[batch_axis_name]))
  if head_axis_name is not None:
    head_devices = int(mesh.shape[head_axis_name])
    _check_divides("`query` head count N", num_heads, "head_axis_name",
                   head_axis_name, head_devices)
    _check_divides("`key` head count K", num_kv_heads, "head_axis_name",
                   head_axis_name, head_devices)
  if lengths is not None:
    _checks.check_integer("key_value_seq_lengths", lengths)
    _checks.check_exact_shape("key_value_seq_lengths", lengths, (batch,),
                              "[B]")
  return num_devices


def _ring_config(query, key, axis_name, num_devices, layout, is_causal,
                 scale) -> _ring_core.RingConfig:
  chunks = num_devices * layout_lib.chunks_per_device(layout)
  return _ring_core.RingConfig(
      axis_name=axis_name, num_devices=num_devices, layout=layout,
      is_causal=bool(is_causal),
      scale=None if scale is None else float(scale),
      query_chunk=query.shape[1] // chunks, key_chunk=key.shape[1] // chunks)


def _place(x: jax.Array, mesh: Mesh, spec: PartitionSpec) -> jax.Array:
  """Reshard `x` to `spec` when the mesh has explicit axes.

  `shard_map` reshards inputs itself on a mesh of `AxisType.Auto` axes, but
  rejects an input whose explicit sharding differs from its `in_specs`.
  """
  explicit = [name for name, kind in zip(mesh.axis_names, mesh.axis_types)
              if kind == AxisType.Explicit]
  if not explicit:
    return x
  return jax.sharding.reshard(x, NamedSharding(mesh, spec))


def _sharded_core(config: _ring_core.RingConfig, mesh: Mesh, *,
                  batch_axis_name, head_axis_name, has_lengths: bool,
                  count_blocks: bool = False):
  """Return the `shard_map` of the ring over global arrays."""
  sequence = PartitionSpec(batch_axis_name, config.axis_name, head_axis_name,
                           None)
  per_row = PartitionSpec(batch_axis_name, config.axis_name, head_axis_name)
  in_specs = (sequence, sequence, sequence)
  if has_lengths:
    in_specs += (PartitionSpec(batch_axis_name),)

  def local(query, key, value, lengths=None):
    if count_blocks:
      return _ring_core.count_computed_blocks(config, query, key, value,
                                              lengths)[None]
    return _ring_core.ring_core(config, query, key, value, lengths)

  out_specs = (PartitionSpec(config.axis_name) if count_blocks
               else (sequence, per_row))
  # NOTE: check_vma=False because the chunked kernel starts its loops from
  # carries that are not marked as varying over the mesh axis, which the
  # varying-manual-axes check rejects inside `lax.switch`. The ring's own
  # collectives are all inside its custom VJP, so no transpose depends on
  # the check.
  mapped = jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)

  def run(*operands):
    return mapped(*(_place(operand, mesh, spec)
                    for operand, spec in zip(operands, in_specs)))

  return run


def ring_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    mesh: Mesh,
    axis_name: str,
    is_causal: bool = False,
    key_value_seq_lengths: ArrayLike | None = None,
    scale: float | None = None,
    layout: layout_lib.Layout = "contiguous",
    batch_axis_name: str | None = None,
    head_axis_name: str | None = None,
    return_residual: bool = False,
):
  """Exact attention over a sequence sharded along one mesh axis.

  Query, key and value are sharded on their sequence axis over the P
  devices of `axis_name` (sequence parallelism). Each device keeps its
  query shard while the key/value shards travel around the ring with
  `lax.ppermute`. At each of the P steps a device attends to the key/value
  shard it has received, with the library's chunked attention, and merges
  the result into a running output with an online softmax. The scheme is
  that of Liu, Zaharia and Abbeel, "Ring Attention with Blockwise
  Transformers for Near-Infinite Context" (2023). A device stores its own
  shards, the shard in transit, one block's temporaries and, in the
  backward pass, gradient accumulators for the shard it works on, so
  memory per device falls as devices are added.

  Blocks that the causal mask hides entirely are skipped by `lax.switch`,
  not computed and discarded. Under a causal mask and with
  `layout="contiguous"`, that leaves device i with i + 1 blocks to compute, so device P - 1 sets the pace.
  With `layout="zigzag"` (see `to_zigzag`) every device computes the same
  number of blocks.

  The gradient is a custom VJP that runs the ring again, rotating key,
  value and their gradient accumulators, and recomputes each block's
  weights from the global log-sum-exp instead of storing them.

  Conventions match `attention_jax.dot_product_attention`: query head n
  reads key/value head `n // (N // K)`, and a query with no visible key
  (for example in a fully padded sequence) returns zeros and gets zero
  gradients.

  Args:
    query: `[B, T, N, H]`, in the order given by `layout`.
    key: `[B, S, K, H]` with K dividing N, in the same layout.
    value: `[B, S, K, H_v]`.
    mesh: the device mesh.
    axis_name: the mesh axis of size P that shards T and S.
    is_causal: hide keys after each query's position. Needs T == S and
      positions counted in the original order, which `layout` describes.
    key_value_seq_lengths: integer `[B]`; keys at original positions
      `s >= length` are padding.
    scale: logit multiplier; None means `1 / sqrt(H)`.
    layout: how the sequence axis is ordered across devices:
      `"contiguous"` (natural order) or `"zigzag"` (reordered by
      `to_zigzag` with P devices). The output comes back in the same
      layout.
    batch_axis_name: a mesh axis that also shards B (data parallelism), or
      None to replicate B over the other axes.
    head_axis_name: a mesh axis that also shards N and K (tensor
      parallelism), or None.
    return_residual: also return the log-sum-exp of the logits over
      visible keys, `[B, T, N]` (-inf for rows with no visible key); it is
      differentiable.

  Returns:
    The output `[B, T, N, H_v]` in the dtype of `value`, sharded like
    `query`, or `(output, logsumexp)` with `return_residual`.

  Raises:
    ValueError: for shapes that do not match the layouts above, an axis name
      that is not in `mesh`, a sequence length not divisible by P
      (`"contiguous"`) or 2P (`"zigzag"`), a batch or head count not
      divisible by its mesh axis, or a causal call with T != S.
    TypeError: for a non-floating query, key or value, non-integer lengths
      or a `mesh` that is not a `jax.sharding.Mesh`.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  lengths = (None if key_value_seq_lengths is None
             else jnp.asarray(key_value_seq_lengths))
  num_devices = _validate(
      query, key, value, lengths, mesh=mesh, axis_name=axis_name,
      batch_axis_name=batch_axis_name, head_axis_name=head_axis_name,
      is_causal=is_causal, layout=layout)
  config = _ring_config(query, key, axis_name, num_devices, layout,
                        is_causal, scale)
  sharded = _sharded_core(config, mesh, batch_axis_name=batch_axis_name,
                          head_axis_name=head_axis_name,
                          has_lengths=lengths is not None)
  operands = (query, key, value) + (() if lengths is None else (lengths,))
  out, logsumexp = sharded(*operands)
  if return_residual:
    return out, logsumexp
  return out


def _count_computed_blocks(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, mesh: Mesh,
    axis_name: str, is_causal: bool = False,
    layout: layout_lib.Layout = "contiguous",
) -> jax.Array:
  """Return how many (query chunk, key chunk) blocks each device computed.

  Runs the forward pass of `ring_attention` and counts, on each device, the
  `lax.switch` branches that attended rather than skipped. Returns integer
  `[P]` in mesh order along `axis_name`. Meant for tests and for checking
  the balance of a layout.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  num_devices = _validate(
      query, key, value, None, mesh=mesh, axis_name=axis_name,
      batch_axis_name=None, head_axis_name=None, is_causal=is_causal,
      layout=layout)
  config = _ring_config(query, key, axis_name, num_devices, layout,
                        is_causal, None)
  sharded = _sharded_core(config, mesh, batch_axis_name=None,
                          head_axis_name=None, has_lengths=False,
                          count_blocks=True)
  return sharded(query, key, value)
