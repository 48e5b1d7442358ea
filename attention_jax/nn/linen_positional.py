"""Flax Linen twins of the positional modules in `attention_jax.nn.positional`.

Each module has the parameters of its NNX twin under the same names and
returns the same `PositionalTerms`; pass one as `position` to
`attention_jax.nn.linen.MultiHeadAttention`. Sizes that the NNX modules
take in the constructor (heads, head dimensions) are read from the query
here, as is usual in Linen.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax import rope as rope_lib
from attention_jax import t5_buckets
from attention_jax.nn import _positional_terms
from attention_jax.nn._positional_terms import PositionalTerms

default_table_init = nn.initializers.normal(stddev=0.02)


class RotaryEmbedding(nn.Module):
  """Linen RoPE; see `attention_jax.nn.positional.RotaryEmbedding`.

  Attributes:
    base: frequency base.
    rotary_dim: R, the number of leading channels to rotate; None for all.
    pairing: `"half"` or `"interleaved"`.
  """

  base: float = rope_lib.DEFAULT_BASE
  rotary_dim: int | None = None
  pairing: str = "half"

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the rotated query and key."""
    return _positional_terms.rotary_terms(
        query, key, query_positions, key_positions, base=self.base,
        rotary_dim=self.rotary_dim, pairing=self.pairing)


class ALiBi(nn.Module):
  """Linen ALiBi; see `attention_jax.nn.positional.ALiBi`. No parameters;
  the number of heads is read from the query."""

  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the ALiBi `score_mod`."""
    return _positional_terms.alibi_terms(
        query, key, query_positions, key_positions,
        num_heads=query.shape[-2])


class T5RelativeBias(nn.Module):
  """Linen T5 bias; see `attention_jax.nn.positional.T5RelativeBias`.

  Attributes:
    num_buckets: buckets of the relative position.
    max_distance: distance from which all longer ones share a bucket.
    bidirectional: whether keys after the query get their own buckets.
    table_init: initializer of `table` `[num_buckets, N]`.
    param_dtype: parameter dtype.
  """

  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  table_init: Any = default_table_init
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the T5 bias `score_mod` and table."""
    t5_buckets.t5_relative_position_bucket(
        jnp.zeros((), jnp.int32), bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    table = self.param("table", self.table_init,
                       (self.num_buckets, query.shape[-2]), self.param_dtype)
    return _positional_terms.t5_terms(
        query, key, query_positions, key_positions, table=table,
        bidirectional=self.bidirectional, max_distance=self.max_distance)


class ShawRelativePositions(nn.Module):
  """Linen Shaw et al. relative positions; see
  `attention_jax.nn.positional.ShawRelativePositions`.

  Attributes:
    max_distance: k; relative positions are clipped to [-k, k].
    value_dim: H_v; defaults to the query's head dimension H.
    use_keys: learn `relative_keys` `[2k+1, H]`.
    use_values: learn `relative_values` `[2k+1, H_v]`.
    table_init: initializer of both tables.
    param_dtype: parameter dtype.
  """

  max_distance: int
  value_dim: int | None = None
  use_keys: bool = True
  use_values: bool = True
  table_init: Any = default_table_init
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the relative-position tables."""
    del query_positions, key_positions  # used by the attention call
    if int(self.max_distance) < 1:
      raise ValueError(
          f"`max_distance` should be at least 1, but got {self.max_distance}")
    if not (self.use_keys or self.use_values):
      raise ValueError("at least one of `use_keys` and `use_values` should "
                       "be True")
    rows = 2 * int(self.max_distance) + 1
    head_dim = query.shape[-1]
    value_dim = head_dim if self.value_dim is None else self.value_dim
    relative_keys = relative_values = None
    if self.use_keys:
      relative_keys = self.param("relative_keys", self.table_init,
                                 (rows, head_dim), self.param_dtype)
    if self.use_values:
      relative_values = self.param("relative_values", self.table_init,
                                   (rows, value_dim), self.param_dtype)
    return PositionalTerms(query=query, key=key, relative_keys=relative_keys,
                           relative_values=relative_values)


class AttentionSinks(nn.Module):
  """Linen attention sinks; see `attention_jax.nn.positional.AttentionSinks`.

  Attributes:
    sink_init: initializer of `sinks` `[N]`; zeros by default.
    param_dtype: parameter dtype.
  """

  sink_init: Any = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, *,
               query_positions: ArrayLike | None = None,
               key_positions: ArrayLike | None = None) -> PositionalTerms:
    """Return the query and key with the sink logits."""
    _positional_terms.check_position_pair(query_positions, key_positions)
    sinks = self.param("sinks", self.sink_init, (query.shape[-2],),
                       self.param_dtype)
    return PositionalTerms(query=query, key=key, sinks=sinks)
