"""Pass the traced arrays that a hook closes over to the kernel explicitly.

The chunked kernel is a `jax.custom_vjp` whose plan, hooks included, is a
static argument, so a traced array that a hook closes over cannot stay
inside it. JAX raises an UnexpectedTracerError when the array is being
differentiated, and a TypeError under `jax.grad(jax.jit(f))`, where the
backward pass is traced after `jit`'s trace has ended. So each hook is
traced to a jaxpr here, and the traced arrays it closes over become kernel
inputs. Those of `score_mod` join its params, whose gradients the backward
pass computes when they are differentiated (as the reference path does).
Those of `mask_mod` travel with the other mask arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp


def tile_index_shapes(batch_size, num_kv_heads, group_size, block_q,
                      block_k) -> list[jax.ShapeDtypeStruct]:
  """Return the shapes of a hook's (batch, head, q_index, kv_index) on a tile.

  They match what `_chunked_tiles.tile_indices` and `batch_index` build.
  """
  return [
      jax.ShapeDtypeStruct((batch_size, 1, 1, 1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, num_kv_heads, group_size, 1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, 1, 1, block_q, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, 1, 1, 1, block_k), jnp.int32),
  ]


def _signature(args) -> tuple:
  return tuple((leaf.shape, str(leaf.dtype))
               for leaf in jax.tree.leaves(args))


def lift(hook: Callable, examples: Sequence[Sequence[Any]],
         name: str) -> tuple[Callable, tuple]:
  """Return `(converted, closed)` with `converted(*args, closed) == hook(*args)`.

  The hook is traced once for each argument list in `examples` (arrays or
  `jax.ShapeDtypeStruct`s), and `converted` accepts arguments of those
  shapes and dtypes only. `closed` contains the traced arrays the hook
  closes over, of any dtype. Arrays that are not traced stay constants of
  the traced hook. When it closes over none, `(hook, ())` is returned.

  Raises:
    ValueError: if the traces for different examples close over different
      arrays.
  """
  traces = {}
  closed = None
  for example in examples:
    jaxpr, out_shape = jax.make_jaxpr(hook, return_shape=True)(*example)
    traced = tuple(const for const in jaxpr.consts
                   if isinstance(const, jax.core.Tracer))
    if closed is not None and (
        len(traced) != len(closed)
        or any(a is not b for a, b in zip(traced, closed))):
      raise ValueError(
          f"`{name}` closed over different arrays for tiles of different "
          f"shapes ({len(closed)} and {len(traced)} arrays). Pass the "
          "arrays it needs through `score_mod_params`, or close over the "
          "same arrays for every tile.")
    closed = traced
    traces[_signature(example)] = (jaxpr, jax.tree.structure(out_shape))
  if not closed:
    return hook, ()

  def converted(*args):
    *args, values = args
    jaxpr, out_tree = traces[_signature(args)]
    values = iter(values)
    consts = [next(values) if isinstance(const, jax.core.Tracer) else const
              for const in jaxpr.consts]
    function = jex.core.jaxpr_as_fun(
        jex.core.ClosedJaxpr(jaxpr.jaxpr, consts))
    return out_tree.unflatten(function(*jax.tree.leaves(args)))

  return converted, closed


def lift_score_mod(
    score_mod: Callable | None,
    params: Any,
    *,
    batch_size: int,
    num_kv_heads: int,
    group_size: int,
    blocks: Sequence[tuple[int, int]],
) -> tuple[Callable | None, Any]:
  """Return `score_mod` and its params with the traced closure lifted.

  The hook is traced for tiles of each `(block_q, block_k)` in `blocks`.
  When it closes over traced arrays, the new hook takes
  `(params, closed)` as its params, where `closed` contains those arrays.
  """
  if score_mod is None:
    return None, params
  examples = []
  for block_q, block_k in dict.fromkeys(blocks):
    shapes = tile_index_shapes(batch_size, num_kv_heads, group_size,
                               block_q, block_k)
    score = jax.ShapeDtypeStruct(
        (batch_size, num_kv_heads, group_size, block_q, block_k),
        jnp.float32)
    extra = [] if params is None else [params]
    examples.append([score, *shapes, *extra])
  converted, closed = lift(score_mod, examples, "score_mod")
  if not closed:
    return score_mod, params

  def lifted(score, batch, head, q_index, kv_index, bundle):
    user_params, values = bundle
    extra = () if user_params is None else (user_params,)
    return converted(score, batch, head, q_index, kv_index, *extra, values)

  return lifted, (params, closed)


def lift_mask_mod(
    mask_mod: Callable | None,
    *,
    batch_size: int,
    num_kv_heads: int,
    group_size: int,
    blocks: Sequence[tuple[int, int]],
) -> tuple[Callable | None, tuple]:
  """Return `(mask_mod, closed)` with the traced closure lifted.

  When the hook closes over traced arrays, the new hook takes them as a
  fifth argument, `mask_mod(batch, head, q_index, kv_index, closed)`.
  """
  if mask_mod is None:
    return None, ()
  examples = [tile_index_shapes(batch_size, num_kv_heads, group_size,
                                block_q, block_k)
              for block_q, block_k in dict.fromkeys(blocks)]
  return lift(mask_mod, examples, "mask_mod")
