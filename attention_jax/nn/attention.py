"""Flax NNX multi-head attention modules.

Thin wrappers that own the projections and call
`attention_jax.dot_product_attention`. Parameter names and shapes match
`flax.nnx.MultiHeadAttention` (`query`, `key`, `value` kernels
`[D, N or K, H]`, `out` kernel `[N, H, D_out]`), so weights can be copied
between the two.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from attention_jax import kv_cache
from attention_jax.nn import _cached
from attention_jax.nn import _options
from attention_jax.nn import _positional_terms

default_kernel_init = nnx.initializers.lecun_normal()


class MultiHeadAttention(nnx.Module):
  """Multi-head attention with grouped-query and multi-query support.

  Projects `inputs_q` to N query heads and `inputs_k`/`inputs_v` to K
  key/value heads of size `H = qkv_features // num_heads`, attends, and
  projects the concatenated heads to `out_features`.

  Args:
    num_heads: N, the number of query heads.
    in_features: feature size of `inputs_q`.
    qkv_features: total size of the query/key/value projections (N * H);
      defaults to `in_features`.
    out_features: output feature size; defaults to `in_features`.
    num_kv_heads: K, the number of key/value heads (must divide N); None
      means K = N. K = 1 is multi-query attention.
    in_kv_features: feature size of `inputs_k` and `inputs_v`; defaults to
      `in_features`.
    dropout_rate: attention-weight dropout probability.
    deterministic: default for the call's `deterministic` (dropout off).
    use_bias: whether the projections have biases.
    dtype: computation dtype of the projections (None infers it).
    param_dtype: parameter dtype.
    kernel_init: initializer of the projection kernels.
    bias_init: initializer of the projection biases.
    implementation: passed to `dot_product_attention`.
    scale: logit multiplier; None means `1 / sqrt(H)`, and 1.0 gives
      unscaled dot-product attention.
    position: a positional module from `attention_jax.nn.positional`
      (`RotaryEmbedding`, `ALiBi`, `T5RelativeBias`,
      `ShawRelativePositions`, `AttentionSinks`) or None. It receives the
      projected query and key with the call's `query_positions` and
      `key_positions`, and its terms (rotated query and key, `score_mod`,
      sinks or relative tables) enter the attention call.
    rngs: random streams for initialization and, with dropout, a `dropout`
      stream forked and stored for later calls.
  """

  def __init__(
      self,
      num_heads: int,
      in_features: int,
      qkv_features: int | None = None,
      out_features: int | None = None,
      *,
      num_kv_heads: int | None = None,
      in_kv_features: int | None = None,
      dropout_rate: float = 0.0,
      deterministic: bool | None = None,
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: nnx.Initializer = default_kernel_init,
      bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
      implementation: str | None = None,
      scale: float | None = None,
      position: nnx.Module | None = None,
      rngs: nnx.Rngs,
  ):
    qkv_features = in_features if qkv_features is None else qkv_features
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads <= 0 or qkv_features % num_heads:
      raise ValueError(
          f"`qkv_features` ({qkv_features}) should be divisible by "
          f"`num_heads` ({num_heads})")
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
      raise ValueError(
          f"`num_kv_heads` should divide `num_heads` ({num_heads}), but got "
          f"{num_kv_heads}")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(
          f"`dropout_rate` should be in [0, 1), but got {dropout_rate}")

    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self.in_features = in_features
    self.in_kv_features = (
        in_features if in_kv_features is None else in_kv_features)
    self.qkv_features = qkv_features
    self.out_features = in_features if out_features is None else out_features
    self.head_dim = qkv_features // num_heads
    self.dropout_rate = dropout_rate
    self.deterministic = deterministic
    self.implementation = implementation
    self.scale = None if scale is None else float(scale)
    self.position = position

    def projection(features_in, heads):
      return nnx.LinearGeneral(
          features_in, (heads, self.head_dim), use_bias=use_bias,
          dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
          bias_init=bias_init, rngs=rngs)

    self.query = projection(in_features, num_heads)
    self.key = projection(self.in_kv_features, num_kv_heads)
    self.value = projection(self.in_kv_features, num_kv_heads)
    self.out = nnx.LinearGeneral(
        (num_heads, self.head_dim), self.out_features, axis=(-2, -1),
        use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)
    self.rngs = rngs.dropout.fork() if dropout_rate > 0.0 else None

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
      rngs: nnx.Rngs | nnx.RngStream | None = None,
      return_weights: bool = False,
      sow_weights: bool = False,
      query_positions: ArrayLike | None = None,
      key_positions: ArrayLike | None = None,
      cache: kv_cache.KVCache | None = None,
  ):
    """Attend from `inputs_q` to `inputs_k` and `inputs_v`.

    Args:
      inputs_q: `[B..., T, in_features]`.
      inputs_k: `[B..., S, in_kv_features]`; defaults to `inputs_q`
        (self-attention).
      inputs_v: `[B..., S, in_kv_features]`; defaults to `inputs_k`.
      mask, bias, is_causal, query_seq_lengths, key_value_seq_lengths,
      local_window_size, query_segment_ids, key_segment_ids: as in
        `attention_jax.dot_product_attention`.
      deterministic: turn dropout off; overrides the constructor's value.
      rngs: random streams for dropout; defaults to the stream forked at
        construction.
      return_weights: also return the weights `[B..., N, T, S]`.
      sow_weights: store the weights as the `nnx.Intermediate`
        `attention_weights`, for inspection without changing the return
        value; collect them by calling the model through
        `nnx.capture(model, nnx.Intermediate)`.
      query_positions: integer `[T]` or `[B..., T]` positions of the queries
        for the `position` module; give `key_positions` too. None means
        query t at `S - T + t` (bottom-right, like the causal mask). Masks
        do not read positions.
      key_positions: integer `[S]` or `[B..., S]`; None means key s at s.
      cache: a `KVCache` from `init_cache` for causal self-attention while
        decoding. The new tokens' keys and values are appended, their
        queries sit at `length - T + t` and attend causally to the cache,
        and the call returns the updated cache as well. Attention over a
        cache is always causal, whatever the value of `is_causal`. `mask` and `bias`
        then broadcast to `[B..., N, T, C]`.

    Returns:
      `[B..., T, out_features]`, or `(output, weights)`; with a cache,
      `(that, new_cache)`.
    """
    cross_inputs = (inputs_k, inputs_v)
    inputs_k = inputs_q if inputs_k is None else inputs_k
    inputs_v = inputs_k if inputs_v is None else inputs_v
    _options.check_features("inputs_q", inputs_q, self.in_features)
    _options.check_features("inputs_k", inputs_k, self.in_kv_features)
    _options.check_features("inputs_v", inputs_v, self.in_kv_features)

    deterministic = _options.resolve_deterministic(
        self.dropout_rate, deterministic, self.deterministic)
    dropout_rng = None
    if not deterministic:
      stream = rngs if rngs is not None else self.rngs
      if isinstance(stream, nnx.Rngs):
        stream = stream.dropout
      if stream is None:
        raise ValueError(
            "dropout needs random numbers: pass `rngs` to the call")
      dropout_rng = stream()

    if cache is not None:
      return self._call_with_cache(
          inputs_q, cache, cross_inputs=cross_inputs, mask=mask,
          bias=bias, local_window_size=local_window_size,
          return_weights=return_weights, sow_weights=sow_weights,
          dropout_rng=dropout_rng, deterministic=deterministic,
          unsupported=dict(
              query_seq_lengths=query_seq_lengths,
              key_value_seq_lengths=key_value_seq_lengths,
              query_segment_ids=query_segment_ids,
              key_segment_ids=key_segment_ids,
              query_positions=query_positions, key_positions=key_positions))
    terms = _positional_terms.positional_terms(
        self.position, self.query(inputs_q), self.key(inputs_k),
        query_positions, key_positions)
    value = self.value(inputs_v)
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
      self.sow(nnx.Intermediate, "attention_weights", weights)

    out = self.out(heads)
    if return_weights:
      return out, weights
    return out

  def init_cache(self, batch_shape, capacity: int, *,
                  sliding_window: bool = False, dtype=jnp.float32):
    """Return an empty `KVCache` for this layer's K key/value heads.

    Args:
      batch_shape: B..., the leading batch axes of the inputs.
      capacity: C, the number of positions kept (the window length W for a
        sliding-window cache, which then needs `local_window_size`).
      sliding_window: reuse slots modulo C.
      dtype: dtype of the stored keys and values.
    """
    return kv_cache.init_cache(
        tuple(batch_shape), capacity, self.num_kv_heads, self.head_dim,
        dtype=dtype, sliding_window=sliding_window)

  def _call_with_cache(self, inputs_q, cache, *, cross_inputs, mask, bias,
                       local_window_size, return_weights, sow_weights,
                       dropout_rng, deterministic, unsupported):
    if any(inputs is not None for inputs in cross_inputs):
      raise ValueError(
          "a cache serves self-attention: pass only `inputs_q` with `cache`")
    given = sorted(name for name, value in unsupported.items()
                   if value is not None and value is not False)
    if given:
      raise ValueError(
          f"{', '.join(given)} cannot be combined with `cache`: the cache "
          "already makes attention causal and tracks lengths and positions")
    need_weights = return_weights or sow_weights
    heads, weights, cache = _cached.attend_with_cache(
        self, inputs_q, cache, mask=mask, bias=bias,
        local_window_size=local_window_size, return_weights=need_weights,
        implementation=self.implementation, scale=self.scale,
        dropout_rate=self.dropout_rate,
        dropout_rng=dropout_rng, deterministic=deterministic)
    if sow_weights:
      self.sow(nnx.Intermediate, "attention_weights", weights)
    out = self.out(heads)
    if return_weights:
      return (out, weights), cache
    return out, cache


class SelfAttention(MultiHeadAttention):
  """Multi-head attention of a sequence to itself.

  The same as `MultiHeadAttention` called with only `inputs_q`; the call
  takes one input. Constructor arguments are those of
  `MultiHeadAttention`.
  """

  def __call__(self, inputs: jax.Array, **kwargs):
    """Attend from `inputs` `[B..., T, in_features]` to itself.

    Keyword arguments are those of `MultiHeadAttention.__call__`.
    """
    return super().__call__(inputs, None, None, **kwargs)
