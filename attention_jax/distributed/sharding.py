"""Sharding rules for the attention modules on a named device mesh.

Data parallelism splits the batch over a `"data"` mesh axis. Tensor
parallelism splits attention heads over a `"model"` axis: each device
stores and applies the projections of its own heads, and the output
projection's sum over heads becomes one all-reduce. The rules only place
arrays. `jax.jit` then partitions the computation to match, so a sharded
module computes what the unsharded one computes.

Parameter rules, by the names that `attention_jax.nn.MultiHeadAttention`
and its Linen twin give their projections:

| parameter | shape | spec |
| --- | --- | --- |
| `query`, `key`, `value` kernel | `[D, N or K, H]` | `(None, model, None)` |
| `query`, `key`, `value` bias | `[N or K, H]` | `(model, None)` |
| `out` kernel | `[N, H, D_out]` | `(model, None, None)` |
| anything else | | replicated |

A heads axis that the model axis does not divide stays replicated, for
example the single key/value head of multi-query attention on a model axis
of size 2.

Both attention paths keep heads and batch sharded through the attention
step (compiled HLO on 8 CPU devices, jax 0.10.2). The chunked path's loop
over batch chunks would make XLA gather the batch, so it is used only when
JAX sees a single device.

With more than one device, the chunked kernel is mapped over the batch
with `jax.vmap`, so that batch and key/value heads stay separate axes of
every tile and both stay sharded (see `chunked._vectorizes_batch`).

NOTE: segment ids, a dense mask or `mask_mod` keep the merged
batch-and-heads layout. With key/value heads sharded over the model axis
and more than one sequence per device, XLA then gathers each key/value
block over the model axis inside the chunked loop (observed with B = 8 on
a 4 x 2 mesh).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from attention_jax.nn.attention import MultiHeadAttention

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_AXIS = "model"

# (projection name, parameter name, rank) -> position of the heads axis.
HEAD_AXIS_RULES: dict[tuple[str, str, int], int] = {
    ("query", "kernel", 3): 1,
    ("key", "kernel", 3): 1,
    ("value", "kernel", 3): 1,
    ("query", "bias", 2): 0,
    ("key", "bias", 2): 0,
    ("value", "bias", 2): 0,
    ("out", "kernel", 3): 0,
}


def _key_name(entry: Any) -> Hashable:
  """Return the plain name of one `jax.tree_util` path entry."""
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return getattr(entry, attribute)
  return entry


def _axis_size(mesh: Mesh | None, axis: str) -> int | None:
  if mesh is None:
    return None
  if axis not in mesh.axis_names:
    raise ValueError(
        f"`model_axis` should name an axis of `mesh`, one of "
        f"{tuple(mesh.axis_names)}, but got {axis!r}")
  return int(mesh.shape[axis])


def parameter_spec(path: tuple[Hashable, ...], shape: tuple[int, ...], *,
                   model_axis: str = MODEL_AXIS,
                   model_axis_size: int | None = None) -> PartitionSpec:
  """Return the `PartitionSpec` of one parameter under the rules above.

  Args:
    path: the parameter's names from the root, ending in the projection
      and parameter names, for example `("layer", "query", "kernel")`.
    shape: the parameter's shape.
    model_axis: the mesh axis that shards heads.
    model_axis_size: the size of that axis; a heads axis it does not divide
      stays replicated. None skips the check.

  Returns:
    A spec with `model_axis` on the heads axis, or `PartitionSpec()`
    (replicated) for parameters that no rule matches.
  """
  if len(path) < 2:
    return PartitionSpec()
  rule = (path[-2], path[-1], len(shape))
  head_axis = HEAD_AXIS_RULES.get(rule)
  if head_axis is None:
    return PartitionSpec()
  if model_axis_size is not None and shape[head_axis] % model_axis_size:
    logger.debug("replicating %s: %d heads do not split over %d devices",
                 "/".join(map(str, path)), shape[head_axis], model_axis_size)
    return PartitionSpec()
  spec = [None] * len(shape)
  spec[head_axis] = model_axis
  return PartitionSpec(*spec)


def _attention_paths(module: nnx.Module) -> set[tuple[Hashable, ...]]:
  return {tuple(path) for path, child in nnx.iter_modules(module)
          if isinstance(child, MultiHeadAttention)}


def parameter_specs(tree: Any, *, mesh: Mesh | None = None,
                    model_axis: str = MODEL_AXIS) -> Any:
  """Return a `PartitionSpec` for every array of a module's state.

  Args:
    tree: an NNX module, an `nnx.State`, or a Linen parameter dict. For a
      module, only parameters of its `MultiHeadAttention` submodules (and
      subclasses such as `SelfAttention`) get a heads rule. For a state or
      dict, every parameter whose last two names and rank match a rule
      does.
    mesh: the mesh, used to check that `model_axis` exists and to leave
      heads it does not divide replicated. None skips both.
    model_axis: the mesh axis that shards heads.

  Returns:
    A tree of the structure of `nnx.state(tree)` (or of `tree`) with a
    `PartitionSpec` in place of each array; NNX variables keep their type
    and hold the spec as their value, as `nnx.get_partition_spec` returns.
  """
  model_axis_size = _axis_size(mesh, model_axis)
  attention_paths = None
  if isinstance(tree, nnx.Module):
    attention_paths = _attention_paths(tree)
    tree = nnx.state(tree)

  def spec_of(path, leaf):
    names = tuple(_key_name(entry) for entry in path)
    value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    if not hasattr(value, "shape"):
      spec = PartitionSpec()
    elif (attention_paths is not None
          and names[:-2] not in attention_paths):
      spec = PartitionSpec()
    else:
      spec = parameter_spec(names, tuple(value.shape), model_axis=model_axis,
                            model_axis_size=model_axis_size)
    return leaf.replace(spec) if isinstance(leaf, nnx.Variable) else spec

  return jax.tree_util.tree_map_with_path(
      spec_of, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def activation_spec(ndim: int = 3, *, data_axis: str | None = DATA_AXIS,
                    sequence_axis: str | None = None) -> PartitionSpec:
  """Return the spec of an activation `[B, T, ...]` of rank `ndim`.

  The batch axis goes to `data_axis` and, for sequence parallelism, the
  sequence axis to `sequence_axis`. Feature axes stay replicated.
  """
  if ndim < 2:
    raise ValueError(
        f"`ndim` should be at least 2 for an activation [B, T, ...], but got "
        f"{ndim}")
  return PartitionSpec(data_axis, sequence_axis, *([None] * (ndim - 2)))


def shard_activations(x: jax.Array, mesh: Mesh, *,
                      data_axis: str | None = DATA_AXIS,
                      sequence_axis: str | None = None) -> jax.Array:
  """Place an activation `[B, T, ...]` on `mesh` with `activation_spec`."""
  spec = activation_spec(x.ndim, data_axis=data_axis,
                         sequence_axis=sequence_axis)
  return jax.device_put(x, NamedSharding(mesh, spec))


def shard_module(module: nnx.Module, mesh: Mesh, *,
                 model_axis: str = MODEL_AXIS) -> nnx.Module:
  """Place an NNX module's state on `mesh` by `parameter_specs`, in place.

  After this, `jax.jit` (or `nnx.jit`) runs the module sharded: each
  device stores its own heads' projections, and XLA inserts the
  collectives. Variables that no rule matches (other parameters, dropout
  random state) are replicated on every device of `mesh`.

  Returns:
    `module` itself, for chaining.

  Raises:
    ValueError: if `model_axis` is not an axis of `mesh` or has
      `AxisType.Explicit`. Explicit sharding requires an output sharding
      for every operation that contracts or reshapes a sharded heads axis,
      and the attention code gives none, so make the mesh with
      `axis_types=(AxisType.Auto,) * rank`.
  """
  _axis_size(mesh, model_axis)
  axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[model_axis]
  if axis_type == AxisType.Explicit:
    raise ValueError(
        f"mesh axis {model_axis!r} (`model_axis`) should have "
        "AxisType.Auto, but got AxisType.Explicit, the default of "
        "jax.make_mesh; create the mesh with "
        "jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))")
  state = nnx.state(module)
  specs = parameter_specs(module, mesh=mesh, model_axis=model_axis)
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)
  nnx.update(module, jax.device_put(state, shardings))
  return module
