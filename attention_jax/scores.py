"""Attention scores (logits) before masking and softmax.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads, K key/value heads, H head dimension, A hidden size of an
additive or feed-forward scorer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax.softmax import compute_dtype


def check_query_key(query: jax.Array, key: jax.Array) -> None:
  """Validate `query [B..., T, N, H]` against `key [B..., S, K, H]`."""
  _checks.check_floating("query", query)
  _checks.check_floating("key", key)
  _checks.check_rank("query", query, 3, "[B..., T, N, H]")
  _checks.check_rank("key", key, 3, "[B..., S, K, H]")
  *batch, _, num_heads, head_dim = query.shape
  if key.ndim != query.ndim or tuple(key.shape[:-3]) != tuple(batch):
    raise ValueError(
        f"`key` should have shape [B..., S, K, H] with B... = {tuple(batch)} "
        f"as in `query`, but got {key.shape}")
  num_kv_heads = key.shape[-2]
  if num_kv_heads == 0 or num_heads % num_kv_heads:
    raise ValueError(
        f"`key` should have shape [B..., S, K, H] with K dividing "
        f"N={num_heads}, but got {key.shape}")
  if key.shape[-1] != head_dim:
    raise ValueError(
        f"`key` should have shape [B..., S, K, H] with H={head_dim} as in "
        f"`query`, but got {key.shape}")


def default_scale(head_dim: int) -> float:
  """Return the default logit scale `1 / sqrt(H)`."""
  return 1.0 / math.sqrt(head_dim)


def dot_product_scores(query: ArrayLike, key: ArrayLike) -> jax.Array:
  """Return unscaled dot-product logits `q . k` with grouped-query mapping.

  Query head n is scored against key head `n // (N // K)`. Low-precision
  inputs are multiplied with float32 accumulation.

  Args:
    query: `[B..., T, N, H]`.
    key: `[B..., S, K, H]` with K dividing N.

  Returns:
    Logits `[B..., N, T, S]` in float32 (or float64 for float64 inputs).
  """
  query = jnp.asarray(query)
  key = jnp.asarray(key)
  check_query_key(query, key)
  *batch, query_length, num_heads, head_dim = query.shape
  key_length, num_kv_heads = key.shape[-3], key.shape[-2]
  dtype = jnp.promote_types(query.dtype, key.dtype)
  grouped = query.reshape(*batch, query_length, num_kv_heads,
                          num_heads // num_kv_heads, head_dim)
  logits = jnp.einsum(
      "...tkgh,...skh->...kgts", grouped.astype(dtype), key.astype(dtype),
      preferred_element_type=compute_dtype(dtype))
  return logits.reshape(*batch, num_heads, query_length, key_length)


def scaled_dot_product_scores(
    query: ArrayLike, key: ArrayLike, scale: float | None = None
) -> jax.Array:
  """Return `scale * q . k`, by default with `scale = 1 / sqrt(H)`.

  Args:
    query: `[B..., T, N, H]`.
    key: `[B..., S, K, H]` with K dividing N.
    scale: logit multiplier; None means `1 / sqrt(H)`.

  Returns:
    Logits `[B..., N, T, S]` in float32 (or float64 for float64 inputs).
  """
  logits = dot_product_scores(query, key)
  if scale is None:
    scale = default_scale(jnp.shape(query)[-1])
  return logits * jnp.asarray(scale, logits.dtype)


def additive_scores(
    query: ArrayLike,
    key: ArrayLike,
    query_kernel: ArrayLike,
    key_kernel: ArrayLike,
    score_vector: ArrayLike,
) -> jax.Array:
  """Return Bahdanau additive logits `v . tanh(W_q q + W_k k)` per head.

  This materializes a `[B..., T, S, N, A]` tensor, so it suits moderate
  lengths.

  Args:
    query: `[B..., T, N, H_q]`.
    key: `[B..., S, N, H_k]` (one key head per query head).
    query_kernel: `W_q`, `[N, H_q, A]`.
    key_kernel: `W_k`, `[N, H_k, A]`.
    score_vector: `v`, `[N, A]`.

  Returns:
    Logits `[B..., N, T, S]` in float32 (or float64 for float64 inputs).
  """
  query, key = jnp.asarray(query), jnp.asarray(key)
  query_kernel = jnp.asarray(query_kernel)
  key_kernel = jnp.asarray(key_kernel)
  score_vector = jnp.asarray(score_vector)
  check_per_head_inputs(query, key)
  *_, num_heads, query_dim = query.shape
  key_dim = key.shape[-1]
  hidden = _checks.shape_of(score_vector)[-1] if score_vector.ndim else 0
  _checks.check_floating("query_kernel", query_kernel)
  _checks.check_exact_shape("query_kernel", query_kernel,
                            (num_heads, query_dim, hidden), "[N, H_q, A]")
  _checks.check_exact_shape("key_kernel", key_kernel,
                            (num_heads, key_dim, hidden), "[N, H_k, A]")
  _checks.check_exact_shape("score_vector", score_vector,
                            (num_heads, hidden), "[N, A]")

  dtype = compute_dtype(jnp.result_type(query, key, query_kernel))
  projected_query = jnp.einsum("...tnh,nha->...tna", query, query_kernel,
                               preferred_element_type=dtype)
  projected_key = jnp.einsum("...snh,nha->...sna", key, key_kernel,
                             preferred_element_type=dtype)
  hidden_states = jnp.tanh(projected_query[..., :, None, :, :]
                           + projected_key[..., None, :, :, :])
  return jnp.einsum("...tsna,na->...nts", hidden_states,
                    score_vector.astype(dtype))


def multiplicative_scores(
    query: ArrayLike, key: ArrayLike, kernel: ArrayLike
) -> jax.Array:
  """Return Luong "general" logits `q . W k` per head.

  Args:
    query: `[B..., T, N, H_q]`.
    key: `[B..., S, N, H_k]` (one key head per query head).
    kernel: `W`, `[N, H_q, H_k]`.

  Returns:
    Logits `[B..., N, T, S]` in float32 (or float64 for float64 inputs).
  """
  query, key, kernel = jnp.asarray(query), jnp.asarray(key), jnp.asarray(kernel)
  check_per_head_inputs(query, key)
  num_heads, query_dim = query.shape[-2:]
  _checks.check_floating("kernel", kernel)
  _checks.check_exact_shape("kernel", kernel,
                            (num_heads, query_dim, key.shape[-1]),
                            "[N, H_q, H_k]")
  dtype = compute_dtype(jnp.result_type(query, key, kernel))
  transformed_key = jnp.einsum("nhk,...snk->...snh", kernel, key,
                               preferred_element_type=dtype)
  return jnp.einsum("...tnh,...snh->...nts", query.astype(dtype),
                    transformed_key)


def feedforward_scores(
    inputs: ArrayLike, kernel: ArrayLike, bias: ArrayLike,
    score_vector: ArrayLike,
) -> jax.Array:
  """Return feed-forward attention logits `v . tanh(W x_s + b)` per position.

  Each position of one sequence is scored on its own by a one-hidden-layer
  network (Raffel and Ellis, 2015, "Feed-forward networks with attention can
  solve some long-term memory problems").

  Args:
    inputs: `[B..., S, D]`.
    kernel: `W`, `[D, A]`.
    bias: `b`, `[A]`.
    score_vector: `v`, `[A]`.

  Returns:
    Logits `[B..., S]` in float32 (or float64 for float64 inputs).
  """
  inputs, kernel = jnp.asarray(inputs), jnp.asarray(kernel)
  bias, score_vector = jnp.asarray(bias), jnp.asarray(score_vector)
  _checks.check_floating("inputs", inputs)
  _checks.check_rank("inputs", inputs, 2, "[B..., S, D]")
  features = inputs.shape[-1]
  hidden = score_vector.shape[-1] if score_vector.ndim == 1 else -1
  _checks.check_exact_shape("score_vector", score_vector, (hidden,), "[A]")
  _checks.check_exact_shape("kernel", kernel, (features, hidden), "[D, A]")
  _checks.check_exact_shape("bias", bias, (hidden,), "[A]")
  dtype = compute_dtype(jnp.result_type(inputs, kernel))
  hidden_states = jnp.tanh(
      jnp.einsum("...sd,da->...sa", inputs, kernel,
                 preferred_element_type=dtype) + bias.astype(dtype))
  return jnp.einsum("...sa,a->...s", hidden_states, score_vector.astype(dtype))


def check_per_head_inputs(query: jax.Array, key: jax.Array) -> None:
  _checks.check_floating("query", query)
  _checks.check_floating("key", key)
  _checks.check_rank("query", query, 3, "[B..., T, N, H_q]")
  _checks.check_rank("key", key, 3, "[B..., S, N, H_k]")
  batch, num_heads = query.shape[:-3], query.shape[-2]
  if key.ndim != query.ndim or key.shape[:-3] != batch or (
      key.shape[-2] != num_heads):
    raise ValueError(
        f"`key` should have shape [B..., S, N, H_k] with B... = {batch} and "
        f"N={num_heads} as in `query`, but got {key.shape}")
