"""Shared sizes, masks and checks for reference-versus-chunked tests of the
positional features.

Sizes are distinct and odd where the feature allows (RoPE needs an even
head dimension), and the chunked path runs with small tiles so that every
sequence spans several tiles and ends in a partial one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BATCH, QUERY_LEN, KEY_LEN = 2, 37, 53
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, VALUE_DIM = 6, 3, 8, 7
BLOCKS = dict(block_q=8, block_k=16)

# Masks for the parity tests. Padded queries (t >= 30 in the first example)
# are fully masked rows, which must give zero outputs and gradients.
CAUSAL_PADDING = dict(
    is_causal=True,
    query_seq_lengths=np.array([30, 37], np.int32),
    key_value_seq_lengths=np.array([45, 53], np.int32))
BIDIRECTIONAL_PADDING = dict(
    query_seq_lengths=np.array([37, 25], np.int32),
    key_value_seq_lengths=np.array([40, 53], np.int32))


def attention_inputs(seed: int = 0, *, query_len: int = QUERY_LEN,
                     key_len: int = KEY_LEN):
  """Return float32 query `[B, T, N, H]`, key `[B, S, K, H]` and value
  `[B, S, K, H_v]`."""
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((BATCH, query_len, NUM_HEADS, HEAD_DIM))
  key = rng.standard_normal((BATCH, key_len, NUM_KV_HEADS, HEAD_DIM))
  value = rng.standard_normal((BATCH, key_len, NUM_KV_HEADS, VALUE_DIM))
  return (jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32),
          jnp.asarray(value, jnp.float32))


def _loss(attend, implementation: str):
  """Return `(loss, output)` of `attend(implementation, *arrays)`.

  The loss weights the output with a fixed random cotangent, so every
  output entry matters to every gradient.
  """

  def loss(*arrays):
    out = attend(implementation, *arrays)
    cotangent = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
    return jnp.sum(out * cotangent), out

  return loss


def assert_paths_agree(attend, arrays, names):
  """Check that the chunked path matches the reference path in the output
  and in the gradient of every array (named by `names`).

  Both paths are compiled as one program, which compiles faster than two.

  Returns:
    The chunked output and gradients, for further checks.
  """
  argnums = tuple(range(len(arrays)))

  @jax.jit
  def both_paths(*arrays):
    return [jax.value_and_grad(_loss(attend, implementation), argnums,
                               has_aux=True)(*arrays)
            for implementation in ("reference", "chunked")]

  ((_, expected), expected_grads), ((_, actual), actual_grads) = (
      both_paths(*arrays))

  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-5,
                             err_msg="output")
  for name, got, want in zip(names, actual_grads, expected_grads):
    assert np.all(np.isfinite(got)), f"gradient of {name} is not finite"
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5,
                               err_msg=f"gradient of {name}")
  return actual, actual_grads
