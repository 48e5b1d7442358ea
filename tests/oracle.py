"""Float64 NumPy reference implementations used as the test oracle.

Written from the definitions, independently of `attention_jax` and
`jax.nn`: masks are built element by element from positions, the
grouped-query head mapping is an explicit index array, and the additive,
multiplicative and feed-forward scorers loop over positions.

Shape letters: B batch (any number of leading axes), T queries, S keys,
N query heads, K key/value heads, H head dimension, H_v value head dimension.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def to_float64(x) -> np.ndarray:
  """Convert an array (including bfloat16) to a float64 NumPy array."""
  return np.asarray(np.asarray(x).astype(np.float32), dtype=np.float64)


def kv_head_index(num_heads: int, num_kv_heads: int) -> np.ndarray:
  """Return, for each query head n, its key/value head n // (N // K)."""
  return np.arange(num_heads) // (num_heads // num_kv_heads)


def normalize_window(window) -> tuple[int, int] | None:
  if window is None:
    return None
  if isinstance(window, int):
    return (window, window)
  left, right = window
  return (left, right)


def attention_mask(
    batch_shape: tuple[int, ...],
    num_heads: int,
    query_length: int,
    key_length: int,
    *,
    mask=None,
    is_causal: bool = False,
    query_offset=None,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size=None,
    query_segment_ids=None,
    key_segment_ids=None,
) -> np.ndarray:
  """Return the boolean mask `[B..., N, T, S]`, True where attention is allowed.

  The query at index t sits at position `S - T + t`, or at
  `query_offset + t` when an offset (scalar or `[B...]`) is given.
  """
  full_shape = (*batch_shape, num_heads, query_length, key_length)
  allowed = np.ones(full_shape, dtype=bool)
  if mask is not None:
    allowed &= np.broadcast_to(np.asarray(mask, dtype=bool), full_shape)
  window = normalize_window(local_window_size)

  for batch_index in itertools.product(*(range(size) for size in batch_shape)):
    if query_offset is None:
      offset = key_length - query_length
    else:
      offset = int(np.broadcast_to(query_offset, batch_shape)[batch_index])
    for t in range(query_length):
      position = offset + t
      for s in range(key_length):
        visible = True
        if is_causal and s > position:
          visible = False
        if window is not None and not (
            position - window[0] <= s <= position + window[1]):
          visible = False
        if query_seq_lengths is not None and (
            t >= np.asarray(query_seq_lengths)[batch_index]):
          visible = False
        if key_value_seq_lengths is not None and (
            s >= np.asarray(key_value_seq_lengths)[batch_index]):
          visible = False
        if query_segment_ids is not None and (
            np.asarray(query_segment_ids)[batch_index][t]
            != np.asarray(key_segment_ids)[batch_index][s]):
          visible = False
        if not visible:
          allowed[batch_index + (slice(None), t, s)] = False
  return allowed


def masked_softmax(logits, allowed=None, axis: int = -1):
  """Return `(weights, logsumexp)` of a softmax over `axis`.

  Entries that are not allowed, or whose logit is -inf, get weight 0 and are
  left out of the log-sum-exp. A row with no such entry gets zero weights
  and a log-sum-exp of -inf.
  """
  logits = to_float64(logits)
  visible = logits > -np.inf
  if allowed is not None:
    visible &= np.broadcast_to(allowed, logits.shape)
  with np.errstate(invalid="ignore", over="ignore"):
    row_max = np.max(np.where(visible, logits, -np.inf), axis=axis,
                     keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exponentials = np.where(visible, np.exp(np.where(visible, logits, 0.0)
                                            - row_max), 0.0)
  total = np.sum(exponentials, axis=axis, keepdims=True)
  weights = np.where(total > 0, exponentials / np.where(total > 0, total, 1.0),
                     0.0)
  with np.errstate(divide="ignore"):
    logsumexp = np.squeeze(np.log(total) + row_max, axis=axis)
  return weights, logsumexp


def dot_product_logits(query, key, *, scale=None, bias=None) -> np.ndarray:
  """Return `scale * q . k + bias`, shape `[B..., N, T, S]`."""
  query, key = to_float64(query), to_float64(key)
  num_heads, head_dim = query.shape[-2:]
  key = key[..., kv_head_index(num_heads, key.shape[-2]), :]
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  logits = scale * np.einsum("...tnh,...snh->...nts", query, key)
  if bias is not None:
    logits = logits + to_float64(bias)
  return logits


def weighted_values(weights, value) -> np.ndarray:
  """Return `sum_s weights[..., n, t, s] * value[..., s, n // (N // K), :]`.

  Shapes: weights `[B..., N, T, S]`, value `[B..., S, K, H_v]`, result
  `[B..., T, N, H_v]`.
  """
  weights, value = to_float64(weights), to_float64(value)
  num_heads = weights.shape[-3]
  value = value[..., kv_head_index(num_heads, value.shape[-2]), :]
  return np.einsum("...nts,...snv->...tnv", weights, value)


def dot_product_attention(query, key, value, *, scale=None, bias=None,
                          allowed=None):
  """Return `(output, weights, logsumexp)` of scaled dot-product attention.

  Shapes: output `[B..., T, N, H_v]`, weights `[B..., N, T, S]`,
  logsumexp `[B..., T, N]`.
  """
  logits = dot_product_logits(query, key, scale=scale, bias=bias)
  weights, logsumexp = masked_softmax(logits, allowed)
  return (weighted_values(weights, value), weights,
          np.swapaxes(logsumexp, -1, -2))


def additive_logits(query, key, query_kernel, key_kernel, score_vector):
  """Return Bahdanau logits `v_n . tanh(W_q,n^T q + W_k,n^T k)`.

  Shapes: query `[B..., T, N, H_q]`, key `[B..., S, N, H_k]`, result
  `[B..., N, T, S]`.
  """
  query, key = to_float64(query), to_float64(key)
  query_kernel, key_kernel = to_float64(query_kernel), to_float64(key_kernel)
  score_vector = to_float64(score_vector)
  *batch, query_length, num_heads, _ = query.shape
  key_length = key.shape[-3]
  logits = np.zeros((*batch, num_heads, query_length, key_length))
  for index in itertools.product(*(range(size) for size in batch)):
    for n in range(num_heads):
      for t in range(query_length):
        for s in range(key_length):
          hidden = np.tanh(query[index][t, n] @ query_kernel[n]
                           + key[index][s, n] @ key_kernel[n])
          logits[index + (n, t, s)] = hidden @ score_vector[n]
  return logits


def multiplicative_logits(query, key, kernel):
  """Return Luong "general" logits `q^T W_n k`, `[B..., N, T, S]`."""
  query, key, kernel = to_float64(query), to_float64(key), to_float64(kernel)
  *batch, query_length, num_heads, _ = query.shape
  key_length = key.shape[-3]
  logits = np.zeros((*batch, num_heads, query_length, key_length))
  for index in itertools.product(*(range(size) for size in batch)):
    for n in range(num_heads):
      for t in range(query_length):
        for s in range(key_length):
          logits[index + (n, t, s)] = (
              query[index][t, n] @ kernel[n] @ key[index][s, n])
  return logits


def feedforward_logits(inputs, kernel, bias, score_vector):
  """Return feed-forward logits `v . tanh(W^T x_s + b)`, `[B..., S]`."""
  inputs, kernel = to_float64(inputs), to_float64(kernel)
  bias, score_vector = to_float64(bias), to_float64(score_vector)
  logits = np.zeros(inputs.shape[:-1])
  for index in np.ndindex(*inputs.shape[:-1]):
    logits[index] = np.tanh(inputs[index] @ kernel + bias) @ score_vector
  return logits


def pool(weights, values):
  """Return `sum_s weights[..., s] * values[..., s, :]`."""
  return np.einsum("...s,...sd->...d", to_float64(weights), to_float64(values))


def rope(x, positions, *, base=10000.0, rotary_dim=None, pairing="half"):
  """Rotate channel pairs of `x` `[B..., L, N, H]` by `positions` `[L]` or
  `[B..., L]`, one pair and one position at a time.

  Pair i (of R / 2) turns by `position * base^(-2i / R)`. The "half"
  pairing pairs channel i with i + R/2; "interleaved" pairs 2i with 2i + 1.
  Channels from R on are copied unchanged.
  """
  x = to_float64(x)
  head_dim = x.shape[-1]
  rotary_dim = head_dim if rotary_dim is None else rotary_dim
  positions = np.broadcast_to(np.asarray(positions), x.shape[:-2])
  result = x.copy()
  for index in np.ndindex(*x.shape[:-2]):
    position = float(positions[index])
    for n in range(x.shape[-2]):
      for i in range(rotary_dim // 2):
        angle = position * base ** (-2.0 * i / rotary_dim)
        if pairing == "half":
          first, second = i, i + rotary_dim // 2
        else:
          first, second = 2 * i, 2 * i + 1
        a, b = x[index][n, first], x[index][n, second]
        result[index + (n, first)] = a * math.cos(angle) - b * math.sin(angle)
        result[index + (n, second)] = b * math.cos(angle) + a * math.sin(angle)
  return result


def default_positions(query_length: int, key_length: int, query_offset=None):
  """Return `(query_positions, key_positions)` in the offset form: key s at
  s and query t at `offset + t`, with offset `S - T` unless given (scalar
  or `[B...]`)."""
  if query_offset is None:
    query_offset = key_length - query_length
  offset = np.asarray(query_offset)
  query = offset[..., None] + np.arange(query_length)
  return query, np.arange(key_length)


def relative_positions(batch_shape, query_positions, key_positions):
  """Return `key position - query position` as `[B..., 1, T, S]`."""
  query = np.broadcast_to(np.asarray(query_positions),
                          (*batch_shape, np.shape(query_positions)[-1]))
  key = np.broadcast_to(np.asarray(key_positions),
                        (*batch_shape, np.shape(key_positions)[-1]))
  distance = np.zeros((*batch_shape, 1, query.shape[-1], key.shape[-1]),
                      dtype=np.int64)
  for index in np.ndindex(*batch_shape):
    for t in range(query.shape[-1]):
      for s in range(key.shape[-1]):
        distance[index + (0, t, s)] = key[index][s] - query[index][t]
  return distance


def alibi_bias(slopes, distance):
  """Return `-slope_n * |distance|`, `[B..., N, T, S]` from `[B..., 1, T,
  S]` distances."""
  slopes = to_float64(slopes)
  return -slopes[:, None, None] * np.abs(distance).astype(np.float64)


def t5_bucket(relative_position: int, *, bidirectional: bool,
              num_buckets: int, max_distance: int) -> int:
  """Return the T5 bucket of one `key position - query position`."""
  n = -int(relative_position)
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      bucket += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact)
                          / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


def t5_bias(table, distance, *, bidirectional: bool, max_distance: int):
  """Return `table[bucket(distance), n]` as `[B..., N, T, S]`."""
  table = to_float64(table)
  num_buckets, num_heads = table.shape
  bias = np.zeros(distance.shape[:-3] + (num_heads,) + distance.shape[-2:])
  for index in np.ndindex(*distance.shape):
    bucket = t5_bucket(distance[index], bidirectional=bidirectional,
                       num_buckets=num_buckets, max_distance=max_distance)
    for n in range(num_heads):
      bias[index[:-3] + (n,) + index[-2:]] = table[bucket, n]
  return bias


def shaw_attention(query, key, value, relative_keys, relative_values,
                   distance, *, scale=None, allowed=None):
  """Return the output `[B..., T, N, H_v]` of Shaw et al. attention.

  For each pair, `r = clip(distance, -k, k) + k` indexes the tables;
  `logit = scale * q . (k + a_K[r])` and `out_t = sum_s p_ts (v_s +
  a_V[r])`. `distance` is `[B..., 1, T, S]`; a None table adds nothing.
  """
  query, key, value = to_float64(query), to_float64(key), to_float64(value)
  *batch, query_length, num_heads, head_dim = query.shape
  key_length = key.shape[-3]
  kv_heads = kv_head_index(num_heads, key.shape[-2])
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  table_rows = (relative_keys if relative_keys is not None
                else relative_values).shape[0]
  max_distance = (table_rows - 1) // 2
  distance = np.broadcast_to(distance, (*batch, 1, query_length, key_length))
  logits = np.zeros((*batch, num_heads, query_length, key_length))
  for index in np.ndindex(*batch):
    for n in range(num_heads):
      for t in range(query_length):
        for s in range(key_length):
          row = int(np.clip(distance[index][0, t, s], -max_distance,
                            max_distance)) + max_distance
          k_vector = key[index][s, kv_heads[n]].copy()
          if relative_keys is not None:
            k_vector += to_float64(relative_keys)[row]
          logits[index + (n, t, s)] = scale * query[index][t, n] @ k_vector
  weights, _ = masked_softmax(logits, allowed)
  out = weighted_values(weights, value)
  if relative_values is None:
    return out
  relative_values = to_float64(relative_values)
  for index in np.ndindex(*batch):
    for n in range(num_heads):
      for t in range(query_length):
        for s in range(key_length):
          row = int(np.clip(distance[index][0, t, s], -max_distance,
                            max_distance)) + max_distance
          weight = weights[index + (n, t, s)]
          out[index + (t, n)] += weight * relative_values[row]
  return out


def sink_attention(query, key, value, sinks, *, scale=None, allowed=None):
  """Return `(output, weights)` of attention whose softmax over each row
  also includes the head's sink logit, which has no value.

  The sink is appended as an extra, always visible column, and its weight
  is dropped after the softmax.
  """
  logits = dot_product_logits(query, key, scale=scale)
  visible = np.ones(logits.shape, dtype=bool)
  if allowed is not None:
    visible = np.broadcast_to(allowed, logits.shape)
  sink_column = np.broadcast_to(
      to_float64(sinks)[:, None, None], logits.shape[:-1] + (1,))
  extended = np.concatenate([logits, sink_column], axis=-1)
  extended_visible = np.concatenate(
      [visible, np.ones(sink_column.shape, dtype=bool)], axis=-1)
  weights, _ = masked_softmax(extended, extended_visible)
  weights = weights[..., :-1]
  return weighted_values(weights, value), weights
