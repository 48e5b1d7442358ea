"""Tests of the chunked path's memory: linear growth and no full-size copies."""

import jax
import jax.numpy as jnp
import pytest

import attention_jax as aj


def _temp_bytes(implementation, length, gradient):
  shape = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)

  def forward(query, key, value):
    return aj.dot_product_attention(
        query, key, value, is_causal=True, implementation=implementation)

  def loss(query, key, value):
    return jnp.sum(forward(query, key, value))

  function = jax.grad(loss, (0, 1, 2)) if gradient else forward
  compiled = jax.jit(function).lower(shape, shape, shape).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("gradient", [False, True], ids=["forward", "grad"])
def test_chunked_memory_grows_linearly(gradient):
  # From 2048 keys up, the growth is no longer hidden by the fixed size of
  # one [512, 512] tile.
  sizes = {length: _temp_bytes("chunked", length, gradient)
           for length in (2048, 4096, 8192)}
  reference = {length: _temp_bytes("reference", length, gradient)
               for length in (1024, 2048)}
  first_step = sizes[4096] - sizes[2048]
  second_step = sizes[8192] - sizes[4096]

  # Linear growth doubles the increment when the length doubles; quadratic
  # growth quadruples it, as the reference path shows.
  assert second_step <= 2.5 * max(first_step, 1)
  assert reference[2048] >= 3.5 * reference[1024]
  assert sizes[8192] < reference[2048]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_forward_temp_independent_of_query(is_causal):
  # The kernel slices query blocks straight from the caller's array and
  # writes each output block in place. So with a fixed key length, and a
  # query length of whole blocks (no padding), its temporary memory does
  # not depend on the query length. Both lengths stay within the keys, so
  # that a causal mask keeps every row's own key in both.
  key = jax.ShapeDtypeStruct((1, 1024, 2, 16), jnp.float32)

  def temp_bytes(query_length):
    query = jax.ShapeDtypeStruct((1, query_length, 4, 16), jnp.float32)

    def forward(query, key):
      return aj.chunked_attention(query, key, key, is_causal=is_causal,
                                  block_q=64, block_k=128)

    compiled = jax.jit(forward).lower(query, key).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(1024) == temp_bytes(256)


def test_backward_skips_constant_bias_gradient():
  # A constant bias needs no [B, N, T, S] gradient accumulator, nor a
  # copy of itself, in the backward pass.
  shape = jax.ShapeDtypeStruct((1, 512, 4, 16), jnp.float32)
  bias = jax.ShapeDtypeStruct((1, 4, 512, 512), jnp.float32)
  bias_bytes = 4 * 512 * 512 * 4

  def temp_bytes(argnums, use_bias):
    def loss(query, key, value, bias):
      out = aj.chunked_attention(query, key, value,
                                 bias=bias if use_bias else None,
                                 block_q=128, block_k=128)
      return jnp.sum(out)

    compiled = jax.jit(jax.grad(loss, argnums)).lower(
        shape, shape, shape, bias).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  without_bias = temp_bytes((0, 1, 2), False)
  constant_bias = temp_bytes((0, 1, 2), True)

  assert constant_bias < without_bias + bias_bytes // 4
