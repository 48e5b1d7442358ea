"""Gradients of the chunked path with bfloat16 and float16 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _chunked_tiles

# Relative to the largest gradient entry: the backward pass rounds the
# weights and their gradients to the input dtype before each product.
RELATIVE = {jnp.bfloat16: 2e-2, jnp.float16: 2e-3}


def _inputs(dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(2, 160, 4, 64), (2, 160, 2, 64), (2, 160, 2, 64)]
  return [jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16],
                         ids=["bfloat16", "float16"])
def test_low_precision_gradients_match_float32(dtype, is_causal):
  query, key, value = _inputs(dtype)
  cotangent = jax.random.normal(jax.random.key(3), query.shape, jnp.float32)

  def loss(implementation, query, key, value):
    if implementation == "chunked":
      # Several tiles in both directions.
      out = aj.chunked_attention(query, key, value, is_causal=is_causal,
                                 block_q=64, block_k=32)
    else:
      out = aj.dot_product_attention(query, key, value, is_causal=is_causal,
                                     implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) * cotangent)

  wide = [x.astype(jnp.float32) for x in (query, key, value)]
  expected = jax.grad(loss, (1, 2, 3))("reference", *wide)
  actual = jax.jit(jax.grad(loss, (1, 2, 3)), static_argnums=0)(
      "chunked", query, key, value)

  for index, (got, want) in enumerate(zip(actual, expected)):
    assert got.dtype == dtype
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want), rtol=0,
        atol=RELATIVE[dtype] * scale, err_msg=f"gradient of argument {index}")


def test_round_to_bfloat16_matches_astype():
  rng = np.random.default_rng(4)
  values = np.concatenate([
      rng.standard_normal(10_000) * 10.0 ** rng.integers(-40, 38, 10_000),
      [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45,
       1.00390625, 1.01171875],  # the last two are halfway cases
  ]).astype(np.float32)
  x = jnp.asarray(values)

  rounded = _chunked_tiles.round_to(x, jnp.bfloat16)

  assert rounded.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(rounded, np.float32),
                                np.asarray(x.astype(jnp.bfloat16), np.float32))
