"""Train a tiny attention classifier with optax and attention regularizers.

The loss adds, to the task's cross-entropy, an entropy penalty and an L2
penalty on the attention weights and a z-loss on the output logits. The
weights come from the same forward pass: the attention module sows them
(`sow_weights=True`) and `nnx.capture` returns them next to the output.

The task: given a padded sequence of tokens, tell whether the marker token
0 occurs among the real tokens. Run it with

  python examples/regularized_training.py
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attention_jax.analysis import diagnostics
from attention_jax.analysis import regularizers
from attention_jax.nn import MultiHeadAttention

VOCAB_SIZE = 11
MARKER = 0


class Classifier(nnx.Module):
  """Embedding, one self-attention layer, mean pooling over real tokens and a linear head."""

  def __init__(self, width: int = 16, num_heads: int = 2, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB_SIZE, width, rngs=rngs)
    self.attention = MultiHeadAttention(num_heads, width, rngs=rngs)
    self.head = nnx.Linear(width, 2, rngs=rngs)

  def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Return logits `[B, 2]` for tokens `[B, T]` with `lengths` `[B]` real tokens."""
    hidden = self.embed(tokens)
    real = jnp.arange(tokens.shape[-1]) < lengths[:, None]
    hidden = hidden + self.attention(hidden, mask=real[:, None, None, :], sow_weights=True)
    pooled = jnp.sum(hidden * real[..., None], axis=1) / lengths[:, None]
    return self.head(pooled)


@dataclasses.dataclass(frozen=True)
class PenaltyWeights:
  """Coefficients of the regularizers added to the cross-entropy."""

  entropy: float = 1e-2
  l2: float = 1e-2
  z_loss: float = 1e-4


def make_batch(rng: np.random.Generator, batch_size: int = 32, length: int = 7):
  """Sample tokens `[B, T]`, lengths `[B]` and labels `[B]` (1 when the marker occurs)."""
  tokens = rng.integers(1, VOCAB_SIZE, size=(batch_size, length))
  lengths = rng.integers(2, length + 1, size=batch_size)
  has_marker = rng.random(batch_size) < 0.5
  positions = (rng.random(batch_size) * lengths).astype(int)
  tokens[has_marker, positions[has_marker]] = MARKER
  return jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(has_marker.astype(np.int32))


def loss_with_penalties(model: Classifier, tokens, lengths, labels, weights: PenaltyWeights):
  """Return the regularized loss and a dict of its terms, from one forward pass."""
  logits, intermediates = nnx.capture(model, nnx.Intermediate)(tokens, lengths)
  attention_weights = intermediates["attention"]["attention_weights"][0]
  real = jnp.arange(tokens.shape[-1]) < lengths[:, None]
  key_mask = real[:, None, None, :]
  terms = {
      "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
      "entropy": regularizers.entropy_penalty(attention_weights, key_mask, normalized=True),
      "l2": regularizers.l2_attention_penalty(attention_weights, key_mask),
      "z_loss": regularizers.logit_z_loss(logits),
  }
  total = (terms["cross_entropy"] + weights.entropy * terms["entropy"]
           + weights.l2 * terms["l2"] + weights.z_loss * terms["z_loss"])
  mean_entropy = jnp.mean(diagnostics.normalized_attention_entropy(attention_weights, key_mask))
  return total, {**terms, "mean_normalized_entropy": mean_entropy}


def train(steps: int = 60, seed: int = 0, weights: PenaltyWeights = PenaltyWeights()) -> list[dict[str, float]]:
  """Train for `steps` Adam steps and return each step's loss terms."""
  model = Classifier(rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens, lengths, labels):
    (loss, terms), grads = nnx.value_and_grad(loss_with_penalties, has_aux=True)(
        model, tokens, lengths, labels, weights)
    optimizer.update(model, grads)
    return {"loss": loss, **terms}

  rng = np.random.default_rng(seed)
  history = []
  for _ in range(steps):
    record = step(model, optimizer, *make_batch(rng))
    history.append({name: float(value) for name, value in record.items()})
  return history


if __name__ == "__main__":
  history = train(steps=200)
  for index in (0, len(history) // 2, len(history) - 1):
    print(f"step {index}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[index].items()))
