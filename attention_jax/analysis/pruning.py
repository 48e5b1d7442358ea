"""Head gates and structural head pruning for `attention_jax.nn.MultiHeadAttention`.

Michel, Levy and Neubig (2019, "Are Sixteen Heads Really Better than
One?") multiply each head's output by a gate before the output
projection. A gate of 0 removes the head. `prune_heads` then deletes the
removed heads' parameters, giving a smaller module with the same outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from attention_jax.dot_product import dot_product_attention
from attention_jax.nn import MultiHeadAttention


def gated_attention(
    attention: MultiHeadAttention,
    inputs: jax.Array,
    head_gates: ArrayLike | None = None,
    *,
    mask: ArrayLike | None = None,
    return_weights: bool = False,
):
  """Run self-attention of `attention` with each head's output scaled by a gate.

  Uses the module's `query`, `key`, `value` and `out` projections and
  `attention_jax.dot_product_attention`; dropout is off.

  Args:
    attention: a `MultiHeadAttention` without a `position` module.
    inputs: `[B..., T, D]`.
    head_gates: `[N]` gates multiplying each head's output `[B..., T, N,
      H_v]` before the output projection; None means all 1.
    mask: boolean mask broadcasting to `[B..., N, T, T]`.
    return_weights: also return the weights `[B..., N, T, T]`.

  Returns:
    `[B..., T, D_out]`, or `(output, weights)`.
  """
  if attention.position is not None:
    raise ValueError(
        "gated_attention supports modules without a `position` module, but got "
        f"{type(attention.position).__name__}")
  query = attention.query(inputs)
  key = attention.key(inputs)
  value = attention.value(inputs)
  weights = None
  if return_weights:
    heads, weights = dot_product_attention(
        query, key, value, mask=mask, implementation=attention.implementation,
        return_weights=True)
  else:
    heads = dot_product_attention(
        query, key, value, mask=mask, implementation=attention.implementation)
  if head_gates is not None:
    head_gates = jnp.asarray(head_gates, dtype=heads.dtype)
    if head_gates.shape != (attention.num_heads,):
      raise ValueError(
          f"`head_gates` should have shape [N] = ({attention.num_heads},), but got "
          f"{head_gates.shape}")
    heads = heads * head_gates[:, None]
  output = attention.out(heads)
  if return_weights:
    return output, weights
  return output


def _kept_indices(keep: ArrayLike, num_heads: int) -> np.ndarray:
  """Turn a boolean `[N]` mask or a list of head indices into sorted indices."""
  keep = np.asarray(keep)
  if keep.dtype == bool:
    if keep.shape != (num_heads,):
      raise ValueError(
          f"a boolean `keep` should have shape [N] = ({num_heads},), but got {keep.shape}")
    return np.flatnonzero(keep)
  indices = np.unique(keep.astype(int).reshape(-1))
  if indices.size and (indices.min() < 0 or indices.max() >= num_heads):
    raise ValueError(f"head indices should be in [0, {num_heads}), but got {keep.tolist()}")
  return indices


def prune_heads(attention: MultiHeadAttention, keep: ArrayLike) -> MultiHeadAttention:
  """Return a smaller copy of `attention` holding only the heads in `keep`.

  The query, key and value kernels `[D, N, H]` and biases `[N, H]` and the
  output kernel `[N, H, D_out]` are sliced along N; the output bias stays.
  The result's output equals `gated_attention` of the original with gate 1
  on kept heads and 0 on the others.

  Args:
    attention: a `MultiHeadAttention` with `num_kv_heads == num_heads` and no
      `position` module.
    keep: `[N]` booleans (True keeps the head) or a sequence of head indices.

  Raises:
    ValueError: for grouped-query modules, positional modules, or when no
      head is kept (a module needs at least one head).
  """
  if attention.num_kv_heads != attention.num_heads:
    raise ValueError(
        "prune_heads needs one key/value head per query head, but the module has "
        f"num_heads={attention.num_heads} and num_kv_heads={attention.num_kv_heads}")
  if attention.position is not None:
    raise ValueError("prune_heads does not support modules with a `position` module")
  indices = _kept_indices(keep, attention.num_heads)
  if indices.size == 0:
    raise ValueError(
        "`keep` keeps no head; gate the module with zeros instead of removing every head")

  use_bias = attention.query.bias is not None
  pruned = MultiHeadAttention(
      num_heads=int(indices.size), in_features=attention.in_features,
      qkv_features=int(indices.size) * attention.head_dim,
      out_features=attention.out_features, in_kv_features=attention.in_kv_features,
      dropout_rate=attention.dropout_rate, deterministic=attention.deterministic,
      use_bias=use_bias, implementation=attention.implementation,
      param_dtype=attention.query.kernel[...].dtype,
      rngs=nnx.Rngs(0, dropout=0))
  for name in ("query", "key", "value"):
    source, target = getattr(attention, name), getattr(pruned, name)
    target.kernel[...] = source.kernel[...][:, indices]
    if use_bias:
      target.bias[...] = source.bias[...][indices]
  pruned.out.kernel[...] = attention.out.kernel[...][indices]
  if use_bias:
    pruned.out.bias[...] = attention.out.bias[...]
  return pruned
