"""Pass the floating-point arrays a `score_mod` closes over as its params.

The chunked kernel is a `jax.custom_vjp` whose plan, hooks included, is a
static argument. A hook that closes over an array being differentiated
(a learned scale, say) made JAX raise an UnexpectedTracerError from inside
the kernel. `lift_closure` moves the traced floating-point arrays a hook
closes over into its params, where the kernel's backward pass computes
their gradients when they are differentiated, as the reference path does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _is_traced_float(value) -> bool:
  """Return whether `value` is a traced floating-point array.

  Every such array is lifted, because inside `jax.jit` it is not yet known
  whether an outer `jax.grad` will differentiate it. The kernel's backward
  pass computes gradients only for the params being differentiated, so a
  lifted array that is not costs nothing there.
  """
  return (isinstance(value, jax.core.Tracer)
          and jnp.issubdtype(jnp.result_type(value), jnp.inexact))


def _tile_arguments(batch_size, num_kv_heads, group_size, block_q, block_k):
  """Return the shapes of `score_mod`'s arguments on one `[block_q, block_k]` tile.

  They match what `_chunked_tiles.tile_indices` and `batch_index` build.
  """
  return [
      jax.ShapeDtypeStruct(
          (batch_size, num_kv_heads, group_size, block_q, block_k),
          jnp.float32),
      jax.ShapeDtypeStruct((batch_size, 1, 1, 1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, num_kv_heads, group_size, 1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, 1, 1, block_q, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, 1, 1, 1, block_k), jnp.int32),
  ]


def lift_closure(
    score_mod: Callable | None,
    params: Any,
    *,
    batch_size: int,
    num_kv_heads: int,
    group_size: int,
    blocks: tuple[tuple[int, int], ...],
) -> tuple[Callable | None, Any, bool]:
  """Return `(score_mod, params, lifted)`.

  The hook is traced once for each `(block_q, block_k)` in `blocks`, with
  the argument shapes of a `[batch_size, num_kv_heads, group_size, block_q,
  block_k]` tile, and the returned hook accepts only those shapes. When the
  hook closes over no traced floating-point array, it is returned unchanged
  with `lifted` False. Otherwise the new hook takes
  `(params, closed)` as its params, where `closed` is the tuple of those
  arrays; other arrays stay closed over.

  NOTE: a traced integer array stays closed over too. That works under
  `jax.jit(jax.grad(f))` but not under `jax.grad(jax.jit(f))`, where the
  backward pass is traced after `jit`'s trace has ended and JAX fails with
  a TypeError about a DynamicJaxprTracer constant. Passing the array
  through `score_mod_params` works in both.

  Raises:
    ValueError: if the traces for different blocks close over different
      arrays.
  """
  if score_mod is None:
    return score_mod, params, False
  converted = {}
  consts = None
  for block_q, block_k in dict.fromkeys(blocks):
    example = _tile_arguments(batch_size, num_kv_heads, group_size, block_q,
                              block_k)
    if params is not None:
      example.append(params)
    function, found = jax.closure_convert(score_mod, *example)
    if consts is not None and (
        len(found) != len(consts)
        or any(a is not b for a, b in zip(found, consts))):
      raise ValueError(
          "`score_mod` closed over different arrays for tiles of different "
          f"shapes ({len(consts)} and {len(found)} arrays). Pass the arrays "
          "it needs through `score_mod_params`.")
    consts = found
    converted[example[0].shape] = function
  is_float = [_is_traced_float(const) for const in consts]
  if not any(is_float):
    return score_mod, params, False
  others = tuple(const for const, flag in zip(consts, is_float) if not flag)
  floats = tuple(const for const, flag in zip(consts, is_float) if flag)

  def lifted(score, batch, head, q_index, kv_index, bundle):
    user_params, closed = bundle
    closed, others_left = iter(closed), iter(others)
    merged = [next(closed) if flag else next(others_left)
              for flag in is_float]
    extra = () if user_params is None else (user_params,)
    return converted[score.shape](score, batch, head, q_index, kv_index,
                                  *extra, *merged)

  return lifted, (params, floats), True
