"""The attention mechanisms a `TransformerLM` block can use, by name.

Each mechanism builds one attention layer for causal self-attention on
`[B, T, D]` inputs. The dot-product family (unscaled, scaled, grouped-query
and the relative-position variants) uses `attention_jax.nn.MultiHeadAttention`.
Basic feed-forward and additive attention have one head each, between a
value projection and an output projection. The relative-position
mechanisms carry position themselves, so a model that uses them has no
learned absolute position embedding.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from attention_jax import nn as ajnn
from attention_jax.training.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The model-level properties of one named mechanism."""

    description: str
    # Whether the model adds learned absolute position embeddings.
    absolute_positions: bool = True
    # Whether decoding can use a key/value cache; the others recompute.
    supports_cache: bool = True


MECHANISMS = {
    "basic": Mechanism("basic feed-forward attention: per-position scores v.tanh(Wx+b), causal prefix pooling",
                       supports_cache=False),
    "dot": Mechanism("unscaled dot-product attention (scale 1)"),
    "scaled": Mechanism("scaled dot-product multi-head attention (scale 1/sqrt(H))"),
    "additive": Mechanism("additive (Bahdanau) attention: v.tanh(W_q q + W_k k), one head", supports_cache=False),
    "gqa": Mechanism("grouped-query attention: query heads share fewer key/value heads"),
    "shaw": Mechanism("Shaw et al. relative position keys and values", absolute_positions=False),
    "t5": Mechanism("T5 relative position buckets with a learned bias per head", absolute_positions=False),
    "alibi": Mechanism("ALiBi linear distance biases", absolute_positions=False),
    "rope": Mechanism("rotary position embeddings (RoPE)", absolute_positions=False),
}
MECHANISM_CHOICES = tuple(MECHANISMS)

# Shaw et al. clip relative distances; 16 covers the local context a small model uses.
SHAW_MAX_DISTANCE = 16


def default_kv_heads(num_heads: int) -> int:
    """Return the key/value head count `gqa` uses when none is given: half the query heads, or 1."""
    return num_heads // 2 if num_heads % 2 == 0 and num_heads > 1 else 1


def check_mechanism(mechanism: str, *, num_heads: int, num_kv_heads: int | None) -> None:
    """Raise UserInputError for an unknown mechanism or a key/value head count it cannot use."""
    if mechanism not in MECHANISMS:
        raise UserInputError(f"mechanism must be one of {', '.join(MECHANISM_CHOICES)}, but got {mechanism!r}")
    if num_kv_heads is None:
        return
    if mechanism not in ("gqa",):
        raise UserInputError(f"num_kv_heads applies to mechanism='gqa' only, but mechanism is {mechanism!r}")
    if not isinstance(num_kv_heads, int) or isinstance(num_kv_heads, bool) or num_kv_heads < 1:
        raise UserInputError(f"num_kv_heads must be a positive integer, but got {num_kv_heads!r}")
    if num_heads % num_kv_heads != 0:
        raise UserInputError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")


class FeedForwardMixer(nnx.Module):
    """Causal basic feed-forward attention between a value and an output projection.

    Output position t averages the projected values of positions 0..t with
    weights `softmax(v . tanh(W x_s + b))`: the scores do not depend on the
    query position.
    """

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.scores = ajnn.BasicAttention(width, hidden, rngs=rngs)
        self.value = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_weights: bool = False):
        pooled, weights = self.scores(x, values=self.value(x), is_causal=True, return_weights=True)
        out = self.out(pooled)
        if return_weights:
            return out, weights[..., None, :, :]
        return out


class AdditiveMixer(nnx.Module):
    """Causal additive (Bahdanau) self-attention between a value and an output projection."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.attention = ajnn.AdditiveAttention(width, width, hidden, rngs=rngs)
        self.value = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_weights: bool = False):
        result = self.attention(x, x, self.value(x), is_causal=True, return_weights=return_weights)
        if return_weights:
            attended, weights = result
            return self.out(attended), weights[..., None, :, :]
        return self.out(result)


def make_attention(
    mechanism: str, *, width: int, num_heads: int, num_kv_heads: int | None, max_len: int, rngs: nnx.Rngs
) -> nnx.Module:
    """Return the attention layer of one block for `mechanism`.

    Every layer is called as `layer(x, is_causal=True)` on `[B, T, D]`
    except the basic and additive mixers, which are always causal.
    """
    head_dim = width // num_heads
    if mechanism == "basic":
        return FeedForwardMixer(width, width, rngs=rngs)
    if mechanism == "additive":
        return AdditiveMixer(width, max(16, width // 2), rngs=rngs)

    options = {}
    if mechanism == "dot":
        options["scale"] = 1.0
    elif mechanism == "gqa":
        options["num_kv_heads"] = default_kv_heads(num_heads) if num_kv_heads is None else num_kv_heads
    elif mechanism == "shaw":
        options["position"] = ajnn.ShawRelativePositions(head_dim, min(SHAW_MAX_DISTANCE, max_len - 1), rngs=rngs)
    elif mechanism == "t5":
        # T5 needs max_distance above its 16 exact causal buckets.
        options["position"] = ajnn.T5RelativeBias(
            num_heads, bidirectional=False, max_distance=max(max_len, 32), rngs=rngs
        )
    elif mechanism == "alibi":
        options["position"] = ajnn.ALiBi(num_heads)
    elif mechanism == "rope":
        options["position"] = ajnn.RotaryEmbedding()
    return ajnn.MultiHeadAttention(
        num_heads, width, qkv_features=width, out_features=width, dropout_rate=0.0, rngs=rngs, **options
    )
