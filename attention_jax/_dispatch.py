"""Attention with its log-sum-exp on the reference or the chunked path.

Features that post-process attention with the log-sum-exp of the logits
(attention sinks, relative-value buckets) call `attention_with_residual`,
which picks the implementation like `dot_product_attention` and also
passes block sizes to the chunked path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import dot_product
from attention_jax.chunked import chunked_attention


def choose_implementation(implementation: str | None, query: jax.Array,
                          key: jax.Array, *, return_weights: bool) -> str:
  """Return "reference" or "chunked" as `dot_product_attention` would.

  These features need the log-sum-exp, which the cuDNN path does not
  return, so `implementation=None` never picks it here.
  """
  chosen = dot_product.choose_implementation(
      implementation, jnp.asarray(query), jnp.asarray(key),
      return_weights=return_weights)
  if chosen == "cudnn":
    raise ValueError(
        "implementation='cudnn' cannot return the log-sum-exp that this "
        "feature needs; use 'chunked', 'reference' or None")
  return chosen


def attention_with_residual(
    query, key, value, bias=None, mask=None, *,
    implementation: str,
    return_weights: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
    **options,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Return `(output, logsumexp, weights or None)`.

  Args:
    implementation: "reference" or "chunked" (already chosen).
    return_weights: also return the `[B..., N, T, S]` weights; reference
      path only.
    block_q, block_k: tile sizes of the chunked path (None for its
      defaults).
    **options: keyword arguments of `dot_product_attention`.
  """
  if implementation == "chunked":
    if return_weights:
      raise ValueError(
          "implementation='chunked' never builds the [B..., N, T, S] "
          "weights, so it cannot return them; use "
          "implementation='reference' with `return_weights=True`")
    out, logsumexp = chunked_attention(
        query, key, value, bias, mask, return_residual=True,
        block_q=block_q, block_k=block_k, **options)
    return out, logsumexp, None
  result = dot_product.dot_product_attention(
      query, key, value, bias, mask, implementation="reference",
      return_residual=True, return_weights=return_weights, **options)
  if return_weights:
    return result
  out, logsumexp = result
  return out, logsumexp, None
