"""Self-attention over a key/value cache, shared by the NNX module.

The new tokens' keys and values are appended to the cache, then their
queries attend to everything cached. Positions follow the cache: the T new
tokens sit at `length - T + t`, so RoPE rotates them there before their
keys are stored, and ALiBi, T5 and sink terms see the cached positions.
"""

from __future__ import annotations

import jax.numpy as jnp

from attention_jax import _checks
from attention_jax import kv_cache
from attention_jax import masks as masks_lib
from attention_jax.nn import _positional_terms
from attention_jax.nn.positional import RotaryEmbedding
from attention_jax.rope import apply_rope


def attend_with_cache(module, inputs, cache: kv_cache.KVCache, *, mask,
                      bias, local_window_size, return_weights, **options):
  """Return `(heads [B..., T, N, H_v], weights or None, new cache)`.

  Args:
    module: a `MultiHeadAttention`.
    inputs: `[B..., T, D]`, the new tokens (self-attention).
    cache: the cache before these tokens.
    mask, bias: extra `[B..., N, T, C]`-broadcastable mask and bias.
    local_window_size: `(left, right)`; required with a sliding-window
      cache.
    return_weights: also return the `[B..., N, T, C]` weights.
    **options: dropout and implementation arguments of the attention call.
  """
  query_length = inputs.shape[-2]
  window = _checks.normalize_window(local_window_size)
  kv_cache.check_ring_window(cache, query_length, window)
  if inputs.shape[:-2] != cache.length.shape:
    raise ValueError(
        f"`inputs_q` should have shape [B..., T, D] with B... = "
        f"{cache.length.shape} as in the cache, but got {inputs.shape}")

  positions = cache.length[..., None] + jnp.arange(query_length,
                                                   dtype=jnp.int32)
  query = module.query(inputs)
  key = module.key(inputs)
  position = module.position
  if isinstance(position, RotaryEmbedding):
    # Keys are stored rotated, so each is rotated once, at its own position.
    rope = dict(base=position.base, rotary_dim=position.rotary_dim,
                pairing=position.pairing)
    query = apply_rope(query, positions, **rope)
    key = apply_rope(key, positions, **rope)
    position = None
  cache = kv_cache.append(cache, key, module.value(inputs))

  key_positions = kv_cache.slot_positions(cache)
  if position is None:
    terms = _positional_terms.PositionalTerms(query=query, key=cache.key)
    query_positions = key_positions = None
  else:
    terms = _positional_terms.positional_terms(
        position, query, cache.key, positions, key_positions)
    query_positions = positions

  if cache.is_ring:
    mask = masks_lib.combine_masks(
        mask, kv_cache.ring_mask(cache, query_length, window))
    mask_options = {}
  else:
    mask_options = dict(
        is_causal=True, query_offset=cache.length - query_length,
        key_value_seq_lengths=cache.length, local_window_size=window)
  heads, weights = _positional_terms.attend(
      terms, cache.value, bias, mask, query_positions=query_positions,
      key_positions=key_positions, return_weights=return_weights,
      **mask_options, **options)
  return heads, weights, cache
