"""Dot-product attention: the drop-in replacement for
`jax.nn.dot_product_attention`.

Shape letters: B batch (any number of leading axes, including none), T
queries, S keys, N query heads, K key/value heads (K divides N), H head
dimension, H_v value head dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import _attend
from attention_jax import _checks
from attention_jax import _cudnn
from attention_jax import dropout as dropout_lib
from attention_jax import scores as scores_lib
from attention_jax.chunked import chunked_attention
from attention_jax.softmax import masked_softmax

Implementation = Literal["reference", "xla", "chunked", "cudnn"]
IMPLEMENTATIONS: tuple[str, ...] = ("reference", "xla", "chunked", "cudnn")

# `implementation=None` uses the chunked path from this many query-key pairs
# (T * S) up. NOTE: on a shared 2-core x86-64 CPU (float32, 6 heads, head
# dim 32, T = S from 16 to 512, forward and forward+backward) the chunked
# path was as fast as the reference path or faster at every size measured,
# so the threshold only keeps tiny problems on the simpler path.
CHUNKED_MIN_PAIRS = 16 * 16


def _drop_leading_unit_axes(x: ArrayLike | None, rank: int):
  """Drop leading size-1 axes of `x` beyond `rank` dimensions.

  `jax.nn.dot_product_attention` takes 4-D masks and biases for rank-3
  inputs, for example `[1, N, T, S]`, so those are accepted here too. Axes
  larger than 1 are kept for the broadcast check to reject.
  """
  if x is None:
    return None
  shape = _checks.shape_of(x)
  extra = len(shape) - rank
  if extra <= 0 or any(size != 1 for size in shape[:extra]):
    return x
  return jnp.reshape(jnp.asarray(x), shape[extra:])


def _validated_mask(
    query: jax.Array, key: jax.Array, bias: ArrayLike | None,
    mask: ArrayLike | None, **mask_options,
) -> jax.Array | None:
  """Validate query, key, bias and masks; return the combined mask."""
  scores_lib.check_query_key(query, key)
  *batch, query_length, num_heads, _ = query.shape
  key_length = key.shape[-3]
  if bias is not None:
    _checks.check_bias(bias, (*batch, num_heads, query_length, key_length))
  return _attend.build_mask(
      tuple(batch), num_heads, query_length, key_length, mask=mask,
      **mask_options)


def _reference_indices(batch_shape, num_heads, query_length, key_length):
  """Return broadcastable (batch, head, q_index, kv_index) for
  `[B..., N, T, S]`; the batch index is flat over all batch axes."""
  flat_batch = 1
  for size in batch_shape:
    flat_batch *= size
  batch = jnp.arange(flat_batch, dtype=jnp.int32).reshape(
      *batch_shape, 1, 1, 1)
  heads = jnp.arange(num_heads, dtype=jnp.int32)[:, None, None]
  q_index = jnp.arange(query_length, dtype=jnp.int32)[:, None]
  k_index = jnp.arange(key_length, dtype=jnp.int32)
  return batch, heads, q_index, k_index


def _logits(
    query: jax.Array, key: jax.Array, bias: ArrayLike | None,
    scale: float | None, *, logits_soft_cap: float | None = None,
    score_mod: Callable | None = None, score_mod_params=None,
) -> jax.Array:
  logits = scores_lib.scaled_dot_product_scores(query, key, scale)
  indices = None
  if score_mod is not None:
    indices = _reference_indices(logits.shape[:-3], *logits.shape[-3:])
  return _attend.modify_logits(
      logits, None if bias is None else jnp.asarray(bias),
      logits_soft_cap=logits_soft_cap, score_mod=score_mod, indices=indices,
      score_mod_params=score_mod_params)


def _with_mask_mod(
    combined: jax.Array | None, mask_mod: Callable | None,
    shape: tuple[int, ...],
) -> jax.Array | None:
  if mask_mod is None:
    return combined
  allowed = _attend.evaluate_mask_mod(
      mask_mod, _reference_indices(shape[:-3], *shape[-3:]))
  _checks.check_broadcastable("mask_mod(...)", allowed, shape,
                              "[B..., N, T, S]")
  return allowed if combined is None else combined & allowed


def _full_shape(query: jax.Array, key: jax.Array) -> tuple[int, ...]:
  *batch, query_length, num_heads, _ = query.shape
  return (*batch, num_heads, query_length, key.shape[-3])


def choose_implementation(
    implementation: str | None, query: jax.Array, key: jax.Array, *,
    return_weights: bool,
) -> str:
  """Return "reference", "chunked" or "cudnn", or raise for an impossible
  request.

  `implementation=None` gives "reference" or "chunked" here;
  `dot_product_attention` first checks whether cuDNN can run the request.
  """
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"`implementation` should be one of {IMPLEMENTATIONS} or None, but "
        f"got {implementation!r}")
  if implementation == "chunked":
    if return_weights:
      raise ValueError(
          "implementation='chunked' never builds the [B..., N, T, S] "
          "weights, so it cannot return them; use "
          "implementation='reference' with `return_weights=True`")
    return "chunked"
  if implementation in ("reference", "xla"):
    return "reference"
  if implementation == "cudnn":
    return "cudnn"
  if return_weights:
    return "reference"
  pairs = query.shape[-3] * key.shape[-3]
  return "chunked" if pairs >= CHUNKED_MIN_PAIRS else "reference"


def _use_cudnn(implementation: str | None, query: jax.Array, key: jax.Array,
               value: jax.Array, *, is_causal: bool,
               window: tuple[int, int] | None, options: dict) -> bool:
  """Return whether to delegate to cuDNN, and raise when "cudnn" cannot run.

  `window` is the normalized `(left, right)` window or None, and `options`
  are the other arguments of `dot_product_attention`, by name.
  """
  unavailable = _cudnn.unavailable_reason()
  if unavailable is not None and implementation is None:
    return False
  reasons = _cudnn.unsupported_features(
      query, key, value, is_causal=is_causal, window=window, **options)
  if unavailable is not None:
    unsupported = ("" if not reasons else
                   " It would also need " + "; ".join(reasons) + ".")
    raise ValueError(
        f"implementation='cudnn' needs an NVIDIA GPU, but {unavailable}."
        f"{unsupported} Use implementation=None to pick the fastest path "
        "available here.")
  if reasons and implementation == "cudnn":
    raise ValueError(
        "implementation='cudnn' cannot run this request. It needs "
        + "; ".join(reasons) + ". Use implementation=None to pick a path "
        "that supports every requested feature.")
  return not reasons


def dot_product_attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    query_offset: ArrayLike | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    logits_soft_cap: float | None = None,
    score_mod: Callable | None = None,
    score_mod_params=None,
    mask_mod: Callable | None = None,
) -> jax.Array:
  """Compute attention weights `softmax(scale * q . k + bias)` over keys.

  Arguments have the meaning they have in `dot_product_attention`.

  Returns:
    Weights `[B..., N, T, S]` in the dtype of `query`; rows with no visible
    key are all zeros.
  """
  query, key = jnp.asarray(query), jnp.asarray(key)
  bias = _drop_leading_unit_axes(bias, query.ndim)
  mask = _drop_leading_unit_axes(mask, query.ndim)
  _checks.check_dropout_rate(dropout_rate)
  _checks.check_soft_cap(logits_soft_cap)
  combined = _validated_mask(
      query, key, bias, mask, is_causal=is_causal,
      query_offset=query_offset, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids)
  combined = _with_mask_mod(combined, mask_mod, _full_shape(query, key))
  (key,) = _attend.zero_unreachable_keys(combined, key)
  logits = _logits(query, key, bias, scale, logits_soft_cap=logits_soft_cap,
                   score_mod=score_mod, score_mod_params=score_mod_params)
  weights = masked_softmax(logits, combined)
  weights = dropout_lib.attention_dropout(
      weights, dropout_rate, dropout_rng, deterministic=deterministic)
  return weights.astype(query.dtype)


def dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: Implementation | None = None,
    return_residual: bool = False,
    query_offset: ArrayLike | None = None,
    query_segment_ids: ArrayLike | None = None,
    key_segment_ids: ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = False,
    return_weights: bool = False,
    logits_soft_cap: float | None = None,
    score_mod: Callable | None = None,
    score_mod_params=None,
    mask_mod: Callable | None = None,
):
  r"""Scaled dot-product attention with grouped-query heads.

  For each head computes

  .. math::
    \mathrm{softmax}\left(\mathrm{scale} \cdot QK^T + \mathrm{bias}\right) V

  over the keys that every mask allows. Query head n reads key/value head
  `n // (N // K)`: K = N is multi-head, 1 < K < N grouped-query and K = 1
  multi-query attention.

  The positional arguments and the keyword arguments up to
  `return_residual` mean what they mean in `jax.nn.dot_product_attention`,
  with two differences:

  * A query row that no key may attend to returns zeros (and zero
    gradients), not NaN or an average of all values.
  * Causal and window masks align bottom-right: with T != S, query `t` sits
    at key position `S - T + t` (set `query_offset` to change that).
    `jax.nn` aligns them top-left. For T == S the two agree.

  Masked keys are removed with `where`, never by adding a large negative
  number, so a masked logit or key that is huge, infinite or NaN does not
  leak into the output. Logits and softmax are computed in float32 for
  bfloat16 and float16 inputs; the output has the dtype of `value`.

  Args:
    query: `[B..., T, N, H]`.
    key: `[B..., S, K, H]` with K dividing N.
    value: `[B..., S, K, H_v]`.
    bias: added to the logits; broadcastable to `[B..., N, T, S]`.
    mask: boolean, True where a query may attend to a key; broadcastable to
      `[B..., N, T, S]`.
    scale: logit multiplier; None means `1 / sqrt(H)`, 1.0 gives unscaled
      dot-product attention.
    is_causal: hide keys after each query's position.
    query_seq_lengths: integer `[B...]`; queries at `t >= length` are
      padding and return zeros.
    key_value_seq_lengths: integer `[B...]`; keys at `s >= length` are
      padding.
    local_window_size: `(left, right)`: the query at position p may attend to keys
      in `[p - left, p + right]`. One int `w` means `(w, w)`.
    implementation: `"reference"` (or its alias `"xla"`) materializes the
      `[B..., N, T, S]` weights; `"chunked"` computes attention block by
      block with memory linear in T and S (see `chunked_attention`);
      `"cudnn"` runs cuDNN's fused kernel through `jax.nn` on an NVIDIA
      GPU, for float16 and bfloat16 inputs without a bias, explicit mask,
      lengths, segments, offset, dropout, soft-capping, hooks or returned
      residual or weights, and for causal and window masks only with
      T == S (it raises for any other request). None picks cuDNN where
      it can run the request, otherwise the chunked path for
      `T * S >= CHUNKED_MIN_PAIRS` and the reference path below that, and
      always the reference path when `return_weights` requests the
      weights.
    return_residual: also return the log-sum-exp of the logits over visible
      keys, `[B..., T, N]` (`-inf` for rows with no visible key).
    query_offset: absolute position of the first query (scalar or integer
      `[B...]`) for the causal and window masks; defaults to `S - T`.
    query_segment_ids: integer `[B..., T]`; with `key_segment_ids`
      (`[B..., S]`) restricts attention to equal ids, for packed sequences.
    key_segment_ids: see `query_segment_ids`.
    dropout_rate: probability of dropping each attention weight.
    dropout_rng: PRNG key for dropout; None turns dropout off.
    deterministic: turn dropout off (use at inference).
    return_weights: also return the weights `[B..., N, T, S]` (after
      dropout) in the dtype of `query`.
    logits_soft_cap: if set, logits become `cap * tanh(logits / cap)`
      before the bias and `score_mod`.
    score_mod: `score_mod(score, batch, head, q_index, kv_index)` returns
      modified logits; the indices are broadcastable int32 arrays and
      `batch` is flat over all batch axes.
    score_mod_params: a pytree of arrays passed to `score_mod` as a sixth
      argument, for learned tables; gradients flow into it on every path.
    mask_mod: `mask_mod(batch, head, q_index, kv_index)` returns a boolean
      array, True where attention is allowed.

  Returns:
    The output `[B..., T, N, H_v]`; with `return_residual` or
    `return_weights`, a tuple of the output followed by the residual and
    then the weights, in that order, for the ones requested.

  Raises:
    ValueError: for shapes that do not match the layouts above, an unknown
      `implementation` or an invalid window or dropout rate.
    TypeError: for a non-floating query, key, value or bias, a non-boolean
      mask or non-integer lengths, offsets or segment ids.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  bias = _drop_leading_unit_axes(bias, query.ndim)
  mask = _drop_leading_unit_axes(mask, query.ndim)
  scores_lib.check_query_key(query, key)
  _checks.check_value(key, value)
  _checks.check_dropout_rate(dropout_rate)
  _checks.check_soft_cap(logits_soft_cap)
  chosen = choose_implementation(
      implementation, query, key, return_weights=return_weights)
  if implementation in (None, "cudnn"):
    options = dict(
        bias=bias, mask=mask, query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        query_offset=query_offset, query_segment_ids=query_segment_ids,
        key_segment_ids=key_segment_ids,
        dropout_rate=(0.0 if deterministic or dropout_rng is None
                      else dropout_rate),
        return_residual=return_residual, return_weights=return_weights,
        logits_soft_cap=logits_soft_cap, score_mod=score_mod,
        score_mod_params=score_mod_params, mask_mod=mask_mod)
    window = _checks.normalize_window(local_window_size)
    if _use_cudnn(implementation, query, key, value, is_causal=is_causal,
                  window=window, options=options):
      return _cudnn.attention(query, key, value, scale=scale,
                              is_causal=is_causal, window=window)
  if chosen == "chunked":
    return chunked_attention(
        query, key, value, bias, mask, scale=scale, is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size, return_residual=return_residual,
        query_offset=query_offset, query_segment_ids=query_segment_ids,
        key_segment_ids=key_segment_ids, logits_soft_cap=logits_soft_cap,
        score_mod=score_mod, score_mod_params=score_mod_params,
        mask_mod=mask_mod, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng, deterministic=deterministic)

  combined = _validated_mask(
      query, key, bias, mask, is_causal=is_causal,
      query_offset=query_offset, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size,
      query_segment_ids=query_segment_ids, key_segment_ids=key_segment_ids)
  combined = _with_mask_mod(combined, mask_mod, _full_shape(query, key))
  key, value = _attend.zero_unreachable_keys(combined, key, value)

  logits = _logits(query, key, bias, scale, logits_soft_cap=logits_soft_cap,
                   score_mod=score_mod, score_mod_params=score_mod_params)
  weights, logsumexp = masked_softmax(logits, combined, return_logsumexp=True)
  weights = dropout_lib.attention_dropout(
      weights, dropout_rate, dropout_rng, deterministic=deterministic)
  out = _attend.weighted_values(weights, value)

  extras = []
  if return_residual:
    extras.append(jnp.swapaxes(logsumexp, -1, -2))
  if return_weights:
    extras.append(weights.astype(query.dtype))
  if extras:
    return (out, *extras)
  return out
