"""A BERT encoder in Flax NNX built on `attention_jax.nn.MultiHeadAttention`.

The layout follows the original BERT (Devlin et al., 2019) as implemented by
Hugging Face `BertModel`: word, position and token-type embeddings summed
and layer-normalized, then post-LayerNorm transformer layers. Each layer's
self-attention is a `MultiHeadAttention` whose `out` projection plays the
role of BERT's attention output dense layer. Optional per-head gates `[L, N]`
scale each head's output, for head importance and pruning.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from attention_jax.analysis.pruning import gated_attention
from attention_jax.analysis.pruning import prune_heads
from attention_jax.nn import MultiHeadAttention


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder; field names follow Hugging Face `BertConfig`."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_dict(cls, values: dict) -> "BertConfig":
    """Build a config from a Hugging Face `config.json` dict, ignoring other keys."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in values.items() if name in names})


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
    self.position_embeddings = nnx.Embed(
        config.max_position_embeddings, config.hidden_size, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(config.type_vocab_size, config.hidden_size, rngs=rngs)
    self.layer_norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    positions = jnp.arange(input_ids.shape[-1])
    hidden = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
              + self.token_type_embeddings(token_type_ids))
    return self.layer_norm(hidden)


class BertLayer(nnx.Module):
  """Self-attention and a GELU feed-forward block, each followed by residual + LayerNorm."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    size = config.hidden_size
    self.attention = MultiHeadAttention(
        config.num_attention_heads, size, size, size, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(size, epsilon=config.layer_norm_eps, rngs=rngs)
    self.intermediate = nnx.Linear(size, config.intermediate_size, rngs=rngs)
    self.output = nnx.Linear(config.intermediate_size, size, rngs=rngs)
    self.output_norm = nnx.LayerNorm(size, epsilon=config.layer_norm_eps, rngs=rngs)

  def __call__(
      self, hidden: jax.Array, mask: jax.Array, head_gates: jax.Array | None = None,
      return_weights: bool = False):
    """Apply the layer to `hidden` `[B, T, D]` with `mask` broadcasting to `[B, N, T, T]`."""
    attended = gated_attention(
        self.attention, hidden, head_gates, mask=mask, return_weights=return_weights)
    weights = None
    if return_weights:
      attended, weights = attended
    hidden = self.attention_norm(hidden + attended)
    # Hugging Face BERT's "gelu" is the exact, erf-based GELU.
    feed_forward = self.output(jax.nn.gelu(self.intermediate(hidden), approximate=False))
    hidden = self.output_norm(hidden + feed_forward)
    return hidden, weights


class BertEncoder(nnx.Module):
  """A BERT encoder returning the last hidden states (no pooler)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = BertEmbeddings(config, rngs=rngs)
    self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

  @property
  def gate_shape(self) -> tuple[int, int]:
    """`(L, N)`: the shape of `head_gates` for an unpruned model."""
    return (self.config.num_hidden_layers, self.config.num_attention_heads)

  def __call__(
      self,
      input_ids: ArrayLike,
      attention_mask: ArrayLike | None = None,
      token_type_ids: ArrayLike | None = None,
      *,
      head_gates: ArrayLike | None = None,
      return_weights: bool = False,
  ):
    """Encode token ids.

    Args:
      input_ids: `[B, T]` integer token ids.
      attention_mask: `[B, T]`, 1 (or True) at real tokens and 0 at padding;
        None means no padding. Padding keys are masked for every query.
      token_type_ids: `[B, T]`; None means all 0.
      head_gates: `[L, N]` gates multiplying each head's output; None means 1.
        Only for unpruned models, whose layers all have N heads.
      return_weights: also return a list of each layer's weights `[B, N, T, T]`.

    Returns:
      Hidden states `[B, T, D]`, or `(hidden, weights_per_layer)`.
    """
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, dtype=bool)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    key_mask = jnp.asarray(attention_mask, dtype=bool)[:, None, None, :]
    if head_gates is not None:
      head_gates = jnp.asarray(head_gates)
      if head_gates.shape != self.gate_shape:
        raise ValueError(
            f"`head_gates` should have shape [L, N] = {self.gate_shape}, but got "
            f"{head_gates.shape}")

    hidden = self.embeddings(input_ids, jnp.asarray(token_type_ids))
    all_weights = []
    for index, layer in enumerate(self.layers):
      gates = None if head_gates is None else head_gates[index]
      hidden, weights = layer(hidden, key_mask, gates, return_weights)
      all_weights.append(weights)
    if return_weights:
      return hidden, all_weights
    return hidden

  def prune_heads(self, keep: ArrayLike) -> None:
    """Remove heads in place: `keep` is `[L, N]` booleans, True for kept heads.

    Each layer's attention is replaced by a smaller module (see
    `attention_jax.analysis.pruning.prune_heads`); a layer must keep at
    least one head.
    """
    keep = jnp.asarray(keep, dtype=bool)
    if keep.shape != self.gate_shape:
      raise ValueError(f"`keep` should have shape [L, N] = {self.gate_shape}, but got {keep.shape}")
    for layer, layer_keep in zip(self.layers, keep):
      layer.attention = prune_heads(layer.attention, layer_keep)


def mean_pool(hidden: ArrayLike, attention_mask: ArrayLike) -> jax.Array:
  """Average `hidden` `[B, T, D]` over real tokens (`attention_mask` `[B, T]` nonzero)."""
  weights = jnp.asarray(attention_mask, dtype=jnp.asarray(hidden).dtype)[..., None]
  return jnp.sum(hidden * weights, axis=-2) / jnp.maximum(jnp.sum(weights, axis=-2), 1e-9)


def sentence_embeddings(hidden: ArrayLike, attention_mask: ArrayLike) -> jax.Array:
  """Mean-pool `hidden` `[B, T, D]` over real tokens, then L2-normalize: `[B, D]`."""
  pooled = mean_pool(hidden, attention_mask)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)
