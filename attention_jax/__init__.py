"""attention_jax: attention mechanisms for JAX and Flax.

Shape letters used throughout: B batch (any number of leading axes), T
query length, S key/value length, N query heads, K key/value heads (K
divides N), H head dimension (H_v for values).
"""

from attention_jax.additive import additive_attention
from attention_jax.additive import multiplicative_attention
from attention_jax.alibi import alibi_bias
from attention_jax.alibi import alibi_score_mod
from attention_jax.alibi import alibi_slopes
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
from attention_jax.rope import apply_rope
from attention_jax.rope import rope_frequencies
from attention_jax.scores import additive_scores
from attention_jax.scores import dot_product_scores
from attention_jax.scores import feedforward_scores
from attention_jax.scores import multiplicative_scores
from attention_jax.scores import scaled_dot_product_scores
from attention_jax.shaw import shaw_attention
from attention_jax.shaw import shaw_relative_key_logits
from attention_jax.shaw import shaw_score_mod
from attention_jax.sinks import apply_attention_sinks
from attention_jax.sinks import attention_sink_factor
from attention_jax.sinks import sink_attention
from attention_jax.softmax import masked_softmax
from attention_jax.t5_buckets import t5_relative_bias
from attention_jax.t5_buckets import t5_relative_position_bucket
from attention_jax.t5_buckets import t5_score_mod

__version__ = "0.1.0"

__all__ = [
    "additive_attention",
    "additive_scores",
    "alibi_bias",
    "alibi_score_mod",
    "alibi_slopes",
    "apply_attention_sinks",
    "apply_rope",
    "attention_dropout",
    "attention_sink_factor",
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
    "rope_frequencies",
    "scaled_dot_product_scores",
    "segment_mask",
    "shaw_attention",
    "shaw_relative_key_logits",
    "shaw_score_mod",
    "sink_attention",
    "sliding_window_mask",
    "t5_relative_bias",
    "t5_relative_position_bucket",
    "t5_score_mod",
]
