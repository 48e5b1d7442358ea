"""Additive (Bahdanau) and multiplicative (Luong "general") attention.

Both take their parameters explicitly, so they can be used inside any
framework; `attention_jax.nn` has modules that own them. Shape letters: B
batch (any number of leading axes), T queries, S keys, N heads, H_q / H_k /
H_v feature sizes, A hidden size of the additive scorer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _attend
from attention_jax import _checks
from attention_jax import dropout as dropout_lib
from attention_jax import scores as scores_lib
from attention_jax.softmax import masked_softmax


def _check_value(key: jax.Array, value: jax.Array) -> None:
  _checks.check_floating("value", value)
  if value.ndim != key.ndim or value.shape[:-1] != key.shape[:-1]:
    raise ValueError(
        "`value` should have shape [B..., S, N, H_v] with B..., S, N = "
        f"{key.shape[:-1]} as in `key`, but got {value.shape}")


def _attend_with_logits(
    logits_fn, query, key, value, *, mask, bias, dropout_rate, dropout_rng,
    deterministic, return_weights, mask_options,
):
  """Mask, normalize and apply logits from `logits_fn(key)`."""
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  # Check query against key before building masks, whose broadcasting
  # would otherwise fail first with a message that names neither.
  scores_lib.check_per_head_inputs(query, key)
  _check_value(key, value)
  _checks.check_dropout_rate(dropout_rate)
  *batch, query_length, num_heads, _ = query.shape
  key_length = key.shape[-3]
  if bias is not None:
    _checks.check_bias(bias, (*batch, num_heads, query_length, key_length))
  combined = _attend.build_mask(
      tuple(batch), num_heads, query_length, key_length, mask=mask,
      **mask_options)
  key, value = _attend.zero_unreachable_keys(combined, key, value)

  logits = logits_fn(query, key)
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(logits.dtype)
  weights = masked_softmax(logits, combined)
  weights = dropout_lib.attention_dropout(
      weights, dropout_rate, dropout_rng, deterministic=deterministic)
  out = _attend.weighted_values(weights, value)
  if return_weights:
    return out, weights.astype(query.dtype)
  return out


def additive_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    query_kernel: ArrayLike,
    key_kernel: ArrayLike,
    score_vector: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_offset: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    return_weights: bool = False,
):
  """Bahdanau attention: weights `softmax(v . tanh(W_q q + W_k k))`.

  Masks follow the conventions of `dot_product_attention`: boolean, True
  where attention is allowed, causal and window masks aligned bottom-right,
  and rows with no visible key return zeros.

  Args:
    query: `[B..., T, N, H_q]`.
    key: `[B..., S, N, H_k]`.
    value: `[B..., S, N, H_v]`.
    query_kernel: `W_q`, `[N, H_q, A]`.
    key_kernel: `W_k`, `[N, H_k, A]`.
    score_vector: `v`, `[N, A]`.
    mask, bias, is_causal, query_seq_lengths, key_value_seq_lengths,
    local_window_size, query_offset, dropout_rate, dropout_rng,
    deterministic: as in `dot_product_attention`.
    return_weights: also return the weights `[B..., N, T, S]`.

  Returns:
    The output `[B..., T, N, H_v]`, or `(output, weights)`.
  """
  def logits_fn(q, k):
    return scores_lib.additive_scores(q, k, query_kernel, key_kernel,
                                      score_vector)

  return _attend_with_logits(
      logits_fn, query, key, value, mask=mask, bias=bias,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      deterministic=deterministic, return_weights=return_weights,
      mask_options=dict(
          is_causal=is_causal, query_offset=query_offset,
          query_seq_lengths=query_seq_lengths,
          key_value_seq_lengths=key_value_seq_lengths,
          local_window_size=local_window_size))


def multiplicative_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    kernel: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_offset: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    return_weights: bool = False,
):
  """Luong "general" attention: weights `softmax(q . W k)`.

  Args:
    query: `[B..., T, N, H_q]`.
    key: `[B..., S, N, H_k]`.
    value: `[B..., S, N, H_v]`.
    kernel: `W`, `[N, H_q, H_k]`.
    mask, bias, is_causal, query_seq_lengths, key_value_seq_lengths,
    local_window_size, query_offset, dropout_rate, dropout_rng,
    deterministic: as in `dot_product_attention`.
    return_weights: also return the weights `[B..., N, T, S]`.

  Returns:
    The output `[B..., T, N, H_v]`, or `(output, weights)`.
  """
  def logits_fn(q, k):
    return scores_lib.multiplicative_scores(q, k, kernel)

  return _attend_with_logits(
      logits_fn, query, key, value, mask=mask, bias=bias,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng,
      deterministic=deterministic, return_weights=return_weights,
      mask_options=dict(
          is_causal=is_causal, query_offset=query_offset,
          query_seq_lengths=query_seq_lengths,
          key_value_seq_lengths=key_value_seq_lengths,
          local_window_size=local_window_size))
