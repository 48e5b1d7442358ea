"""Flax NNX positional modules for `MultiHeadAttention(position=...)`.

Each module is called as
`module(query, key, *, query_positions=None, key_positions=None)` with the
projected query `[B..., T, N, H]` and key `[B..., S, K, H]`, and returns
`PositionalTerms`: the query and key to attend with plus any `score_mod`,
sink logits or relative-position tables. Positions of None mean key s at
position s and query t at `S - T + t` (bottom-right, like the causal
mask). Integer `[T]`/`[B..., T]` and `[S]`/`[B..., S]` arrays replace
them, for packed sequences or a decoding cache.

The modules own parameters only; the mathematics is in `attention_jax`'s
`rope`, `alibi`, `t5_buckets`, `shaw` and `sinks` modules.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from attention_jax import rope as rope_lib
from attention_jax import t5_buckets
from attention_jax.nn import _positional_terms
from attention_jax.nn._positional_terms import PositionalTerms

default_table_init = nnx.initializers.normal(stddev=0.02)


class RotaryEmbedding(nnx.Module):
  """Rotary position embeddings (RoPE) of the query and the key.

  Args:
    base: frequency base; channel pair i turns by `base^(-2i / R)` per
      position.
    rotary_dim: R, the number of leading channels to rotate (even, at most
      H); None rotates all of them.
    pairing: `"half"` (GPT-NeoX, Hugging Face LLaMA) or `"interleaved"`
      (GPT-J, RoFormer).
  """

  def __init__(self, *, base: float = rope_lib.DEFAULT_BASE,
               rotary_dim: int | None = None, pairing: str = "half"):
    if pairing not in rope_lib.PAIRINGS:
      raise ValueError(
          f"`pairing` should be one of {rope_lib.PAIRINGS}, but got "
          f"{pairing!r}")
    self.base = base
    self.rotary_dim = rotary_dim
    self.pairing = pairing

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the rotated query and key."""
    return _positional_terms.rotary_terms(
        query, key, query_positions, key_positions, base=self.base,
        rotary_dim=self.rotary_dim, pairing=self.pairing)


class ALiBi(nnx.Module):
  """ALiBi linear biases with the slopes of Press et al. (2022); no
  parameters.

  Args:
    num_heads: N, the number of query heads.
  """

  def __init__(self, num_heads: int):
    if int(num_heads) <= 0:
      raise ValueError(
          f"`num_heads` should be a positive integer, but got {num_heads}")
    self.num_heads = int(num_heads)

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the ALiBi `score_mod`."""
    return _positional_terms.alibi_terms(
        query, key, query_positions, key_positions, num_heads=self.num_heads)


class T5RelativeBias(nnx.Module):
  """T5 relative position buckets with a learned bias per bucket and head.

  Args:
    num_heads: N, the number of query heads.
    num_buckets: buckets of the relative position (both directions
      together when bidirectional).
    max_distance: distance from which all longer ones share a bucket.
    bidirectional: whether keys after the query get their own buckets
      (encoders); False for causal decoders.
    table_init: initializer of the `table` `[num_buckets, N]`.
    param_dtype: parameter dtype.
    rngs: random streams for initialization.
  """

  def __init__(self, num_heads: int, *, num_buckets: int = 32,
               max_distance: int = 128, bidirectional: bool = True,
               table_init: nnx.Initializer = default_table_init,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    # Validate the bucket options now rather than at the first call.
    t5_buckets.t5_relative_position_bucket(
        jnp.zeros((), jnp.int32), bidirectional=bidirectional,
        num_buckets=num_buckets, max_distance=max_distance)
    self.bidirectional = bidirectional
    self.max_distance = max_distance
    self.table = nnx.Param(table_init(
        rngs.params(), (num_buckets, num_heads), param_dtype))

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the T5 bias `score_mod` and table."""
    return _positional_terms.t5_terms(
        query, key, query_positions, key_positions, table=self.table[...],
        bidirectional=self.bidirectional, max_distance=self.max_distance)


class ShawRelativePositions(nnx.Module):
  """Shaw et al. relative position embeddings of keys and values.

  Args:
    head_dim: H, the query/key head dimension.
    max_distance: k; relative positions are clipped to [-k, k].
    value_dim: H_v, the value head dimension; defaults to `head_dim`.
    use_keys: learn relative keys `relative_keys` `[2k+1, H]`.
    use_values: learn relative values `relative_values` `[2k+1, H_v]`.
    table_init: initializer of both tables.
    param_dtype: parameter dtype.
    rngs: random streams for initialization.
  """

  def __init__(self, head_dim: int, max_distance: int, *,
               value_dim: int | None = None, use_keys: bool = True,
               use_values: bool = True,
               table_init: nnx.Initializer = default_table_init,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if int(max_distance) < 1:
      raise ValueError(
          f"`max_distance` should be at least 1, but got {max_distance}")
    if not (use_keys or use_values):
      raise ValueError("at least one of `use_keys` and `use_values` should "
                       "be True")
    rows = 2 * int(max_distance) + 1
    value_dim = head_dim if value_dim is None else value_dim
    self.relative_keys = (nnx.Param(table_init(
        rngs.params(), (rows, head_dim), param_dtype)) if use_keys else None)
    self.relative_values = (nnx.Param(table_init(
        rngs.params(), (rows, value_dim), param_dtype)) if use_values
                            else None)

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the relative-position tables.

    The positions are used by the attention call itself
    (`MultiHeadAttention` passes them on).
    """
    del query_positions, key_positions
    return PositionalTerms(
        query=query, key=key,
        relative_keys=(None if self.relative_keys is None
                       else self.relative_keys[...]),
        relative_values=(None if self.relative_values is None
                         else self.relative_values[...]))


class AttentionSinks(nnx.Module):
  """Learned sink logits, one per query head, that absorb attention mass.

  Args:
    num_heads: N, the number of query heads.
    sink_init: initializer of `sinks` `[N]`; zeros by default.
    param_dtype: parameter dtype.
    rngs: random streams for initialization.
  """

  def __init__(self, num_heads: int, *,
               sink_init: nnx.Initializer = nnx.initializers.zeros_init(),
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.sinks = nnx.Param(sink_init(rngs.params(), (num_heads,),
                                     param_dtype))

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the sink logits."""
    _positional_terms.check_position_pair(query_positions, key_positions)
    _positional_terms.check_num_heads("AttentionSinks", query,
                                      self.sinks.shape[0])
    return PositionalTerms(query=query, key=key, sinks=self.sinks[...])
