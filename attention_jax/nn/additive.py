"""Flax NNX modules for additive (Bahdanau) and basic feed-forward attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from attention_jax.additive import additive_attention
from attention_jax.basic import basic_attention
from attention_jax.nn import _options


def score_vector_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Initialize a score vector `v` with standard deviation `1 / sqrt(A)`."""
  return jax.random.normal(key, shape, dtype) / jnp.sqrt(
      jnp.asarray(shape[-1], dtype))


class AdditiveAttention(nnx.Module):
  """Bahdanau attention: weights `softmax(v . tanh(W_q q + W_k k))`.

  One head whose parameters are `query_kernel` `[1, D_q, A]`, `key_kernel`
  `[1, D_k, A]` and `score_vector` `[1, A]`, laid out for
  `attention_jax.additive_attention`.

  Args:
    query_features: D_q, feature size of the queries.
    key_features: D_k, feature size of the keys.
    hidden_features: A, size of the hidden scoring layer.
    param_dtype: parameter dtype.
    rngs: random streams for initialization.
  """

  def __init__(
      self, query_features: int, key_features: int, hidden_features: int,
      *, param_dtype=jnp.float32, rngs: nnx.Rngs,
  ):
    kernel_init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1)
    self.query_features = query_features
    self.key_features = key_features
    self.query_kernel = nnx.Param(kernel_init(
        rngs.params(), (1, query_features, hidden_features), param_dtype))
    self.key_kernel = nnx.Param(kernel_init(
        rngs.params(), (1, key_features, hidden_features), param_dtype))
    self.score_vector = nnx.Param(score_vector_init(
        rngs.params(), (1, hidden_features), param_dtype))

  def __call__(
      self, query: jax.Array, key: jax.Array, value: jax.Array | None = None,
      *, mask: ArrayLike | None = None, return_weights: bool = False,
      **options,
  ):
    """Attend from `query` `[B..., T, D_q]` to `key` `[B..., S, D_k]`.

    Args:
      query: `[B..., T, D_q]`.
      key: `[B..., S, D_k]`.
      value: `[B..., S, D_v]`; defaults to `key`.
      mask: boolean, broadcastable to `[B..., T, S]`.
      return_weights: also return the weights `[B..., T, S]`.
      **options: other keyword arguments of
        `attention_jax.additive_attention` (`is_causal`, lengths, window,
        dropout).

    Returns:
      `[B..., T, D_v]`, or `(output, weights)`.
    """
    value = key if value is None else value
    if mask is not None:
      mask = jnp.expand_dims(jnp.asarray(mask), -3)  # the single head axis
    _options.check_features("query", query, self.query_features)
    _options.check_features("key", key, self.key_features)
    result = additive_attention(
        query[..., None, :], key[..., None, :], value[..., None, :],
        self.query_kernel[...], self.key_kernel[...], self.score_vector[...],
        mask=mask, return_weights=return_weights, **options)
    if return_weights:
      out, weights = result
      return out[..., 0, :], weights[..., 0, :, :]
    return result[..., 0, :]


class BasicAttention(nnx.Module):
  """Feed-forward attention that pools a sequence into one vector.

  Each position is scored by `v . tanh(W x + b)`; the output is the
  softmax-weighted average of the inputs over the sequence.

  Args:
    in_features: D, the feature size.
    hidden_features: A, the size of the scoring layer.
    param_dtype: parameter dtype.
    rngs: random streams for initialization.
  """

  def __init__(
      self, in_features: int, hidden_features: int, *,
      param_dtype=jnp.float32, rngs: nnx.Rngs,
  ):
    self.in_features = in_features
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_features, hidden_features), param_dtype))
    self.bias = nnx.Param(jnp.zeros((hidden_features,), param_dtype))
    self.score_vector = nnx.Param(score_vector_init(
        rngs.params(), (hidden_features,), param_dtype))

  def __call__(
      self, inputs: jax.Array, *, mask: ArrayLike | None = None,
      values: jax.Array | None = None, is_causal: bool = False,
      return_weights: bool = False,
  ):
    """Pool `inputs` `[B..., S, D]` to `[B..., D]`.

    Args:
      inputs: `[B..., S, D]`.
      mask: boolean `[B..., S]`, True for positions that take part.
      values: optional `[B..., S, D_v]` to average instead of `inputs`.
      is_causal: pool every prefix, returning `[B..., S, D]`; see
        `attention_jax.basic_attention`.
      return_weights: also return the weights `[B..., S]` (`[B..., S, S]`
        with `is_causal`).
    """
    _options.check_features("inputs", inputs, self.in_features)
    return basic_attention(
        inputs, self.kernel[...], self.bias[...], self.score_vector[...],
        mask=mask, values=values, is_causal=is_causal,
        return_weights=return_weights)
