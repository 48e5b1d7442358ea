"""attention_jax: attention mechanisms for JAX and Flax.

Shape letters used throughout: B batch (any number of leading axes), T
query length, S key/value length, N query heads, K key/value heads (K
divides N), H head dimension (H_v for values).
"""

from attention_jax.additive import additive_attention
from attention_jax.additive import multiplicative_attention
from attention_jax.basic import basic_attention
from attention_jax.chunked import chunked_attention
from attention_jax.dot_product import dot_product_attention
from attention_jax.dot_product import dot_product_attention_weights
from attention_jax.dropout import attention_dropout
from attention_jax.masks import causal_mask
from attention_jax.masks import combine_masks
from attention_jax.masks import padding_mask
from attention_jax.masks import segment_mask
from attention_jax.masks import sliding_window_mask
from attention_jax.scores import additive_scores
from attention_jax.scores import dot_product_scores
from attention_jax.scores import feedforward_scores
from attention_jax.scores import multiplicative_scores
from attention_jax.scores import scaled_dot_product_scores
from attention_jax.softmax import masked_softmax

__version__ = "0.1.0"

__all__ = [
    "additive_attention",
    "additive_scores",
    "attention_dropout",
    "basic_attention",
    "causal_mask",
    "chunked_attention",
    "combine_masks",
    "dot_product_attention",
    "dot_product_attention_weights",
    "dot_product_scores",
    "feedforward_scores",
    "masked_softmax",
    "multiplicative_attention",
    "multiplicative_scores",
    "padding_mask",
    "scaled_dot_product_scores",
    "segment_mask",
    "sliding_window_mask",
]
