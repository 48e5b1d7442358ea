"""A small causal transformer language model in Flax NNX.

The model is a decoder-only transformer: token embedding plus a learned
positional embedding, pre-LayerNorm blocks of multi-head causal
self-attention and a GELU MLP, a final LayerNorm and an output head. The
attention layer is one of the library's mechanisms (`ModelConfig.mechanism`,
see `attention_jax.training.mechanisms`) or, for comparison,
`flax.nnx.MultiHeadAttention` (`ModelConfig.attention="flax"`). Models whose
mechanism encodes relative positions have no absolute position embedding.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.training import mechanisms
from attention_jax.training.errors import UserInputError

ATTENTION_CHOICES = ("attention_jax", "flax")

# Small normal initial embeddings (standard deviation 0.02), a common choice in GPT-style models.
_EMBEDDING_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of a `TransformerLM`, stored as JSON next to its checkpoints."""

    vocab_size: int
    max_len: int
    width: int = 192
    num_layers: int = 4
    num_heads: int = 6
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    attention: str = "attention_jax"
    mechanism: str = "scaled"
    # Key/value heads of the "gqa" mechanism; None picks half the query heads.
    num_kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "width", "num_layers", "num_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserInputError(f"{name} must be a positive integer, but got {value!r}")
        if self.width % self.num_heads != 0:
            raise UserInputError(
                f"num_heads={self.num_heads} must divide width={self.width}; "
                "choose a head count that divides the width"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserInputError(f"dropout_rate must be in [0, 1), but got {self.dropout_rate}")
        if self.attention not in ATTENTION_CHOICES:
            raise UserInputError(
                f"attention must be one of {', '.join(ATTENTION_CHOICES)}, but got {self.attention!r}"
            )
        mechanisms.check_mechanism(self.mechanism, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads)
        if self.attention == "flax" and self.mechanism != "scaled":
            raise UserInputError(
                f"attention='flax' runs scaled dot-product attention only, but mechanism is {self.mechanism!r}; "
                "use attention='attention_jax' for other mechanisms"
            )

    @property
    def uses_absolute_positions(self) -> bool:
        return self.attention == "flax" or mechanisms.MECHANISMS[self.mechanism].absolute_positions

    @property
    def supports_cache(self) -> bool:
        """Whether `TransformerLM.decode` can run: the mechanism keeps a key/value cache."""
        return self.attention == "attention_jax" and mechanisms.MECHANISMS[self.mechanism].supports_cache

    def require_cache(self) -> None:
        """Raise UserInputError unless `supports_cache`."""
        if not self.supports_cache:
            raise UserInputError(
                "decoding with a cache needs attention='attention_jax' and a dot-product mechanism; this model "
                f"uses attention={self.attention!r}, mechanism={self.mechanism!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build a config from `to_dict` output, raising UserInputError on unknown or missing keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(f"model config has unknown keys {unknown}; expected keys from {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:
            raise UserInputError(f"model config is incomplete: {error}") from error

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self.to_dict(), file, indent=2)
            file.write("\n")

    @classmethod
    def load(cls, path: str) -> ModelConfig:
        with open(path, encoding="utf-8") as file:
            return cls.from_dict(json.load(file))


def _make_attention(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if config.attention == "flax":
        return nnx.MultiHeadAttention(
            num_heads=config.num_heads,
            in_features=config.width,
            qkv_features=config.width,
            out_features=config.width,
            dropout_rate=0.0,
            decode=False,
            rngs=rngs,
        )

    return mechanisms.make_attention(
        config.mechanism,
        width=config.width,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        max_len=config.max_len,
        rngs=rngs,
    )


class Block(nnx.Module):
    """A pre-LayerNorm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        hidden = config.mlp_ratio * config.width
        self.config = config
        self.attention_kind = config.attention
        self.mechanism = config.mechanism
        self.attention_norm = nnx.LayerNorm(config.width, rngs=rngs)
        self.attention = _make_attention(config, rngs)
        self.mlp_norm = nnx.LayerNorm(config.width, rngs=rngs)
        self.mlp_in = nnx.Linear(config.width, hidden, rngs=rngs)
        self.mlp_out = nnx.Linear(hidden, config.width, rngs=rngs)
        # Dropout keeps no random state: callers pass `rngs` when training with dropout.
        self.dropout = nnx.Dropout(config.dropout_rate)

    def attend(self, x: jax.Array, *, return_weights: bool = False, ring: dict | None = None):
        """Apply causal self-attention to `x` [B, T, D]; with `return_weights`, also return [B, N, T, T] weights.

        `ring` contains the keyword arguments of
        `attention_jax.distributed.ring_attention` when the sequence is
        split over devices; `x` is then in the ring's layout.
        """
        if ring is not None:
            from attention_jax.distributed import ring_attention

            layer = self.attention
            heads = ring_attention(
                layer.query(x), layer.key(x), layer.value(x), is_causal=True, scale=layer.scale, **ring
            )
            return layer.out(heads)
        if self.mechanism in ("basic", "additive"):
            return self.attention(x, return_weights=return_weights)
        if self.attention_kind == "attention_jax":
            return self.attention(x, is_causal=True, return_weights=return_weights)

        length = x.shape[-2]
        causal_mask = nnx.make_causal_mask(jnp.ones((1, length), dtype=jnp.int32))
        if not return_weights:
            return self.attention(x, mask=causal_mask, decode=False)
        capturing_attention = nnx.capture(self.attention, nnx.Intermediate)
        out, intermediates = capturing_attention(x, mask=causal_mask, decode=False, sow_weights=True)
        # Flax sows the weights as a tuple of one array.
        (weights,) = intermediates["attention_weights"].get_value()
        return out, weights

    def decode(self, x: jax.Array, cache):
        """Apply the block to new tokens `x` [B, T, D] with a key/value cache; return `(x, cache)`."""
        self.config.require_cache()
        attended, cache = self.attention(self.attention_norm(x), cache=cache)
        x = x + attended
        hidden = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))
        return x + self.mlp_out(hidden), cache

    def __call__(
        self,
        x: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        return_weights: bool = False,
        ring: dict | None = None,
    ):
        attended = self.attend(self.attention_norm(x), return_weights=return_weights, ring=ring)
        weights = None
        if return_weights:
            attended, weights = attended
        x = x + self.dropout(attended, deterministic=deterministic, rngs=rngs)

        hidden = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))
        x = x + self.dropout(self.mlp_out(hidden), deterministic=deterministic, rngs=rngs)
        if return_weights:
            return x, weights
        return x


class TransformerLM(nnx.Module):
    """A decoder-only transformer that maps tokens [B, T] to next-token logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.token_embedding = nnx.Embed(
            config.vocab_size, config.width, embedding_init=_EMBEDDING_INIT, rngs=rngs
        )
        self.position_embedding = nnx.data(
            nnx.Embed(config.max_len, config.width, embedding_init=_EMBEDDING_INIT, rngs=rngs)
            if config.uses_absolute_positions
            else None
        )
        self.embedding_dropout = nnx.Dropout(config.dropout_rate)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.LayerNorm(config.width, rngs=rngs)
        self.head = nnx.Linear(config.width, config.vocab_size, rngs=rngs)

    def _embed(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        length = tokens.shape[-1]
        if length > self.config.max_len:
            raise ValueError(
                f"`tokens` should have at most max_len={self.config.max_len} positions, "
                f"but got shape {tokens.shape}"
            )
        positions = jnp.arange(length) if positions is None else positions
        return self._with_positions(self.token_embedding(tokens), positions)

    def _with_positions(self, embedded: jax.Array, positions: jax.Array) -> jax.Array:
        if self.position_embedding is None:
            return embedded
        return embedded + self.position_embedding(positions)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        positions: jax.Array | None = None,
        ring: dict | None = None,
    ) -> jax.Array:
        """Return next-token logits [B, T, vocab_size] for `tokens` [B, T].

        With `deterministic=False` and a nonzero dropout rate, `rngs` must have a `dropout` stream.
        `positions` [T] are the tokens' positions (default 0..T-1). `ring`
        contains the keyword arguments of `attention_jax.distributed.ring_attention`
        for sequence-parallel attention, with `tokens` and `positions` in
        the ring's layout.
        """
        x = self.embedding_dropout(self._embed(tokens, positions), deterministic=deterministic, rngs=rngs)
        for block in self.blocks:
            x = block(x, deterministic=deterministic, rngs=rngs, ring=ring)
        return self.head(self.final_norm(x))

    def init_caches(self, batch_size: int) -> list:
        """Return one empty key/value cache per layer, each holding up to `max_len` tokens."""
        self.config.require_cache()
        return [
            block.attention.init_cache((batch_size,), self.config.max_len) for block in self.blocks
        ]

    def decode(self, tokens: jax.Array, caches: list) -> tuple[jax.Array, list]:
        """Return next-token logits [B, T, vocab_size] for new `tokens` [B, T] and the updated caches.

        The new tokens sit right after the cached ones, so their positions
        are the cache length plus 0..T-1.
        """
        positions = caches[0].length[:, None] + jnp.arange(tokens.shape[-1])
        x = self._with_positions(self.token_embedding(tokens), positions)
        updated = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.decode(x, cache)
            updated.append(cache)
        return self.head(self.final_norm(x)), updated

    def attention_weights(self, tokens: jax.Array) -> list[jax.Array]:
        """Return each layer's attention weights [B, N, T, T] on `tokens` [B, T], without dropout."""
        x = self._embed(tokens)
        weights = []
        for block in self.blocks:
            x, layer_weights = block(x, return_weights=True)
            weights.append(layer_weights)
        return weights


def count_parameters(model: nnx.Module) -> int:
    """Return the number of scalar parameters in `model`."""
    params = nnx.state(model, nnx.Param)
    return sum(leaf.size for leaf in jax.tree.leaves(params))
