"""Flax Linen twins of the NNX modules, for codebases still on Linen.

Each module has the parameters of its NNX twin under the same names and
calls the same core function. `MultiHeadAttention` matches the parameter
layout of `flax.linen.MultiHeadDotProductAttention` (`query`, `key`,
`value`, `out`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax.additive import additive_attention
from attention_jax.basic import basic_attention
from attention_jax.nn import _options
from attention_jax.nn import _positional_terms
from attention_jax.nn.additive import score_vector_init


class MultiHeadAttention(nn.Module):
  """Linen multi-head attention; see `attention_jax.nn.MultiHeadAttention`.

  Attributes:
    num_heads: N, the number of query heads.
    qkv_features: total projection size N * H; defaults to the input size.
    out_features: output size; defaults to the input size.
    num_kv_heads: K, key/value heads dividing N; None means N.
    dropout_rate: attention-weight dropout probability (uses the `dropout`
      RNG stream).
    deterministic: default for the call's `deterministic`.
    use_bias: whether the projections have biases.
    dtype: computation dtype of the projections.
    param_dtype: parameter dtype.
    implementation: passed to `dot_product_attention`.
    scale: logit multiplier; None means `1 / sqrt(H)`.
    position: a Linen positional module from
      `attention_jax.nn.linen_positional`, or None; its parameters live
      under `position`. See `attention_jax.nn.MultiHeadAttention`.
  """

  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  num_kv_heads: int | None = None
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  implementation: str | None = None
  scale: float | None = None
  position: nn.Module | None = None

  @nn.compact
  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_k: jax.Array | None = None,
      inputs_v: jax.Array | None = None,
      *,
      mask: ArrayLike | None = None,
      bias: ArrayLike | None = None,
      is_causal: bool = False,
      query_seq_lengths: ArrayLike | None = None,
      key_value_seq_lengths: ArrayLike | None = None,
      local_window_size: int | tuple[int, int] | None = None,
      query_segment_ids: ArrayLike | None = None,
      key_segment_ids: ArrayLike | None = None,
      deterministic: bool | None = None,
      return_weights: bool = False,
      sow_weights: bool = False,
      query_positions: ArrayLike | None = None,
      key_positions: ArrayLike | None = None,
  ):
    """Attend from `inputs_q` `[B..., T, D]` to `inputs_k`/`inputs_v`.

    Arguments are those of `attention_jax.nn.MultiHeadAttention.__call__`;
    dropout draws from the `dropout` RNG stream. `sow_weights` stores the
    weights in the `intermediates` collection as `attention_weights`.
    """
    inputs_k = inputs_q if inputs_k is None else inputs_k
    inputs_v = inputs_k if inputs_v is None else inputs_v
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    out_features = self.out_features or inputs_q.shape[-1]
    num_kv_heads = self.num_kv_heads or self.num_heads
    if qkv_features % self.num_heads:
      raise ValueError(
          f"`qkv_features` ({qkv_features}) should be divisible by "
          f"`num_heads` ({self.num_heads})")
    if self.num_heads % num_kv_heads:
      raise ValueError(
          f"`num_kv_heads` should divide `num_heads` ({self.num_heads}), but "
          f"got {num_kv_heads}")
    head_dim = qkv_features // self.num_heads

    def projection(name, heads):
      return nn.DenseGeneral(
          (heads, head_dim), use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
          bias_init=self.bias_init, name=name)

    terms = _positional_terms.positional_terms(
        self.position, projection("query", self.num_heads)(inputs_q),
        projection("key", num_kv_heads)(inputs_k), query_positions,
        key_positions)
    value = projection("value", num_kv_heads)(inputs_v)

    deterministic = _options.resolve_deterministic(
        self.dropout_rate, deterministic, self.deterministic)
    dropout_rng = None if deterministic else self.make_rng("dropout")
    need_weights = return_weights or sow_weights
    heads, weights = _positional_terms.attend(
        terms, value, bias, mask, query_positions=query_positions,
        key_positions=key_positions, return_weights=need_weights,
        implementation=self.implementation, scale=self.scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids,
        dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
        deterministic=deterministic)
    if sow_weights:
      self.sow("intermediates", "attention_weights", weights)

    out = nn.DenseGeneral(
        out_features, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name="out")(heads)
    if return_weights:
      return out, weights
    return out


class SelfAttention(MultiHeadAttention):
  """Linen multi-head attention of a sequence to itself."""

  @nn.compact
  def __call__(self, inputs: jax.Array, **kwargs):  # type: ignore[override]
    """Attend from `inputs` `[B..., T, D]` to itself."""
    return super().__call__(inputs, None, None, **kwargs)


class AdditiveAttention(nn.Module):
  """Linen Bahdanau attention; see `attention_jax.nn.AdditiveAttention`.

  Attributes:
    hidden_features: A, the size of the hidden scoring layer.
    param_dtype: parameter dtype.
  """

  hidden_features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, query: jax.Array, key: jax.Array, value: jax.Array | None = None,
      *, mask: ArrayLike | None = None, return_weights: bool = False,
      **options,
  ):
    """Attend from `query` `[B..., T, D_q]` to `key` `[B..., S, D_k]`."""
    value = key if value is None else value
    if mask is not None:
      mask = jnp.expand_dims(jnp.asarray(mask), -3)
    kernel_init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1)
    query_kernel = self.param(
        "query_kernel", kernel_init,
        (1, query.shape[-1], self.hidden_features), self.param_dtype)
    key_kernel = self.param(
        "key_kernel", kernel_init,
        (1, key.shape[-1], self.hidden_features), self.param_dtype)
    score_vector = self.param(
        "score_vector", score_vector_init, (1, self.hidden_features),
        self.param_dtype)
    result = additive_attention(
        query[..., None, :], key[..., None, :], value[..., None, :],
        query_kernel, key_kernel, score_vector, mask=mask,
        return_weights=return_weights, **options)
    if return_weights:
      out, weights = result
      return out[..., 0, :], weights[..., 0, :, :]
    return result[..., 0, :]


class BasicAttention(nn.Module):
  """Linen feed-forward attention pooling; see
  `attention_jax.nn.BasicAttention`.

  Attributes:
    hidden_features: A, the size of the scoring layer.
    param_dtype: parameter dtype.
  """

  hidden_features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, inputs: jax.Array, *, mask: ArrayLike | None = None,
      values: jax.Array | None = None, return_weights: bool = False,
  ):
    """Pool `inputs` `[B..., S, D]` to `[B..., D]`."""
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (inputs.shape[-1], self.hidden_features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(),
                      (self.hidden_features,), self.param_dtype)
    score_vector = self.param(
        "score_vector", score_vector_init, (self.hidden_features,),
        self.param_dtype)
    return basic_attention(
        inputs, kernel, bias, score_vector, mask=mask, values=values,
        return_weights=return_weights)
