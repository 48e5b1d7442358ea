"""Flax modules that wrap the functional core.

NNX modules are exported here; their Linen twins live in
`attention_jax.nn.linen` under the same names.
"""

from attention_jax.nn.additive import AdditiveAttention
from attention_jax.nn.additive import BasicAttention
from attention_jax.nn.attention import MultiHeadAttention
from attention_jax.nn.attention import SelfAttention

__all__ = [
    "AdditiveAttention",
    "BasicAttention",
    "MultiHeadAttention",
    "SelfAttention",
]
