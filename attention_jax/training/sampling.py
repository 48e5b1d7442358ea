"""Temperature sampling from a `TransformerLM` by recomputing the full context for each token."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.training.model import TransformerLM


def top_k_logits(logits: jax.Array, top_k: int | None) -> jax.Array:
    """Keep the `top_k` largest logits of the last axis and set the rest to -inf."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    threshold = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits >= threshold, logits, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _next_token(state, context, length, key, temperature, *, graphdef, top_k):
    """Sample the token after the first `length` tokens of `context` [max_len]."""
    logits = nnx.merge(graphdef, state)(context[None, :])[0]
    last = jax.lax.dynamic_index_in_dim(logits, length - 1, keepdims=False)
    return jax.random.categorical(key, top_k_logits(last / temperature, top_k))


def sample_tokens(
    model: TransformerLM,
    prompt: np.ndarray,
    *,
    num_tokens: int,
    temperature: float,
    seed: int,
    top_k: int | None = None,
) -> np.ndarray:
    """Return `num_tokens` ids sampled after the 1-D `prompt`, with softmax temperature `temperature`.

    With `top_k`, only the `top_k` most likely tokens are sampled.

    Each new token runs the model on the last `max_len` tokens, without a
    key/value cache, so one token costs a full forward pass. The context
    is padded to `max_len` so that a single compiled function serves every
    length; causal attention keeps the padding from affecting earlier
    positions.
    """
    if len(prompt) == 0:
        raise ValueError("`prompt` should have at least one token")
    if not temperature > 0:
        raise ValueError(f"`temperature` should be positive, but got {temperature}")
    max_len = model.config.max_len
    graphdef, state = nnx.split(model)

    tokens = [int(token) for token in np.asarray(prompt).ravel()]
    root_key = jax.random.key(seed)
    for index in range(num_tokens):
        context = tokens[-max_len:]
        padded = np.zeros(max_len, dtype=np.int32)
        padded[: len(context)] = context
        token = _next_token(
            state,
            padded,
            len(context),
            jax.random.fold_in(root_key, index),
            temperature,
            graphdef=graphdef,
            top_k=top_k,
        )
        tokens.append(int(token))
    return np.asarray(tokens[len(prompt):], dtype=np.int32)
