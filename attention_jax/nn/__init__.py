"""Flax modules that wrap the functional core.

NNX modules are exported here; their Linen twins live in
`attention_jax.nn.linen` and `attention_jax.nn.linen_positional` under the
same names.
"""

from attention_jax.nn.additive import AdditiveAttention
from attention_jax.nn.additive import BasicAttention
from attention_jax.nn.attention import MultiHeadAttention
from attention_jax.nn.attention import SelfAttention
from attention_jax.nn.positional import ALiBi
from attention_jax.nn.positional import AttentionSinks
from attention_jax.nn.positional import PositionalTerms
from attention_jax.nn.positional import RotaryEmbedding
from attention_jax.nn.positional import ShawRelativePositions
from attention_jax.nn.positional import T5RelativeBias

__all__ = [
    "ALiBi",
    "AdditiveAttention",
    "AttentionSinks",
    "BasicAttention",
    "MultiHeadAttention",
    "PositionalTerms",
    "RotaryEmbedding",
    "SelfAttention",
    "ShawRelativePositions",
    "T5RelativeBias",
]
