"""Attention sinks: a learned per-head logit that joins every softmax.

Each head n has one extra logit `sink_n` that enters the softmax
normalizer of every query row but contributes no value, so it absorbs
attention mass. The weights become `exp(logit_ts - logaddexp(lse_t,
sink_n))`, with `lse_t` the log-sum-exp over the visible keys, and sum to
less than 1. Given the output and log-sum-exp of ordinary attention,
the sink only rescales each row:

  out_sink = out * exp(lse - logaddexp(lse, sink)) = out * sigmoid(lse - sink)

so both implementations compute it the same way, from the log-sum-exp
that `return_residual=True` returns, and gradients reach the sink, the
query and the key on both paths.

A fully masked row (no visible key) has `lse = -inf`: all of its mass goes
to the sink, so its output is zero and so are its gradients, as for any
fully masked row.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads, H_v value head dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax import _dispatch


def _check_sinks(sinks: ArrayLike, num_heads: int) -> jax.Array:
  _checks.check_floating("sinks", sinks)
  shape = _checks.shape_of(sinks)
  if shape != (num_heads,):
    raise ValueError(
        f"`sinks` should have shape [N] with N={num_heads} query heads, but "
        f"got {shape}")
  return jnp.asarray(sinks)


def attention_sink_factor(logsumexp: ArrayLike, sinks: ArrayLike) -> jax.Array:
  """Return the mass each row keeps for its keys, `sigmoid(lse - sink)`.

  Args:
    logsumexp: `[B..., T, N]`, the log-sum-exp over visible keys (`-inf`
      for rows without one).
    sinks: `[N]` sink logits.

  Returns:
    float32 `[B..., T, N]` in [0, 1]; 0 for rows without a visible key.
  """
  logsumexp = jnp.asarray(logsumexp)
  sinks = _check_sinks(sinks, logsumexp.shape[-1])
  return jax.nn.sigmoid(logsumexp.astype(jnp.float32)
                        - sinks.astype(jnp.float32))


def apply_attention_sinks(
    out: ArrayLike, logsumexp: ArrayLike, sinks: ArrayLike
) -> jax.Array:
  """Rescale attention outputs as if each row's softmax had a sink logit.

  Args:
    out: `[B..., T, N, H_v]`, the output of attention without sinks.
    logsumexp: `[B..., T, N]`, its log-sum-exp (`return_residual=True`).
    sinks: `[N]` sink logits.

  Returns:
    `[B..., T, N, H_v]` in the dtype of `out`.
  """
  out = jnp.asarray(out)
  factor = attention_sink_factor(logsumexp, sinks)
  return (out.astype(jnp.float32) * factor[..., None]).astype(out.dtype)


def sink_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    sinks: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    implementation: str | None = None,
    return_weights: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
    **options,
):
  """Dot-product attention with one sink logit per head.

  Args:
    query: `[B..., T, N, H]`.
    key: `[B..., S, K, H]`.
    value: `[B..., S, K, H_v]`.
    sinks: `[N]` sink logits, one per query head (learned parameters).
    bias, mask: as in `dot_product_attention`.
    implementation: `"reference"`, `"xla"`, `"chunked"` or None, as in
      `dot_product_attention`.
    return_weights: also return the weights `[B..., N, T, S]` (reference
      path), which sum to `sigmoid(lse - sink)` per row instead of 1.
    block_q, block_k: tile sizes of the chunked path.
    **options: other keyword arguments of `dot_product_attention`
      (`scale`, `is_causal`, masks, `score_mod`, dropout, ...), except
      `return_residual`.

  Returns:
    The output `[B..., T, N, H_v]`, or `(output, weights)`.
  """
  query = jnp.asarray(query)
  _checks.check_rank("query", query, 3, "[B..., T, N, H]")
  _check_sinks(sinks, query.shape[-2])
  chosen = _dispatch.choose_implementation(
      implementation, query, key, return_weights=return_weights)
  out, logsumexp, weights = _dispatch.attention_with_residual(
      query, key, value, bias, mask, implementation=chosen,
      return_weights=return_weights, block_q=block_q, block_k=block_k,
      **options)
  factor = attention_sink_factor(logsumexp, sinks)
  out = (out.astype(jnp.float32) * factor[..., None]).astype(out.dtype)
  if not return_weights:
    return out
  row_factor = jnp.swapaxes(factor, -1, -2)[..., None]
  return out, (weights.astype(jnp.float32) * row_factor).astype(weights.dtype)
