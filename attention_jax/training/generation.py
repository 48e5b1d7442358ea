"""Text generation from a `TransformerLM` with per-layer key/value caches.

The prompt fills the caches in one pass; each new token then costs one
step over a single position. The model's learned positions end at
`max_len`, so when the caches are full the last half of the context is
encoded again into fresh caches and generation continues from there.
Models whose mechanism keeps no cache (basic and additive attention)
recompute the context for every token instead.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.training.model import TransformerLM
from attention_jax.training.sampling import sample_tokens, top_k_logits

logger = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _prefill(state, tokens, key, temperature, *, graphdef, top_k):
    """Encode `tokens` [1, P] into fresh caches and sample the token after them."""
    model = nnx.merge(graphdef, state)
    logits, caches = model.decode(tokens, model.init_caches(1))
    last = top_k_logits(logits[0, -1] / temperature, top_k)
    return jax.random.categorical(key, last), caches


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _step(state, caches, token, key, temperature, *, graphdef, top_k):
    """Append one token to the caches and sample the next one."""
    model = nnx.merge(graphdef, state)
    logits, caches = model.decode(token.reshape(1, 1), caches)
    last = top_k_logits(logits[0, -1] / temperature, top_k)
    return jax.random.categorical(key, last), caches


def generate(
    model: TransformerLM,
    prompt: np.ndarray,
    *,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Return `num_tokens` ids sampled after the 1-D `prompt`.

    Args:
      model: a trained model; one without cache support (see
        `ModelConfig.supports_cache`) samples by recomputing the context.
      prompt: token ids, at least one.
      num_tokens: how many tokens to sample.
      temperature: softmax temperature (positive).
      top_k: sample only among the `top_k` most likely tokens; None for all.
      seed: seed of the sampling PRNG key.
    """
    prompt = np.asarray(prompt, dtype=np.int32).ravel()
    if prompt.size == 0:
        raise ValueError("`prompt` should have at least one token")
    if not temperature > 0:
        raise ValueError(f"`temperature` should be positive, but got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"`top_k` should be a positive integer or None, but got {top_k}")
    if not model.config.supports_cache:
        logger.info("Mechanism %r keeps no key/value cache: recomputing the context for each token",
                    model.config.mechanism)
        return sample_tokens(model, prompt, num_tokens=num_tokens, temperature=temperature, seed=seed, top_k=top_k)
    max_len = model.config.max_len
    graphdef, state = nnx.split(model)
    keys = jax.random.split(jax.random.key(seed), max(num_tokens, 1))
    temperature = jnp.float32(temperature)

    tokens = list(prompt[-(max_len - 1):])
    generated: list[int] = []
    caches = None
    for index in range(num_tokens):
        if caches is None or len(tokens) >= max_len:
            # (Re)encode the context; keep half of it once the caches are full.
            context = tokens if caches is None else tokens[-(max_len // 2):]
            token, caches = _prefill(
                state, jnp.asarray([context]), keys[index], temperature,
                graphdef=graphdef, top_k=top_k)
            tokens = list(context)
        else:
            token, caches = _step(
                state, caches, jnp.int32(tokens[-1]), keys[index], temperature,
                graphdef=graphdef, top_k=top_k)
        tokens.append(int(token))
        generated.append(int(token))
    return np.asarray(generated, dtype=np.int32)
