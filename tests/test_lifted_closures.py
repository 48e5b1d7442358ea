"""Tests for chunked hooks that close over traced arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _lifted_closures


def _inputs(query_len, key_len, seed=0):
  rng = np.random.default_rng(seed)
  shapes = ((2, query_len, 4, 8), (2, key_len, 2, 8), (2, key_len, 2, 8),
            (2, query_len, 4, 8))
  return [jnp.asarray(rng.standard_normal(shape), jnp.float32)
          for shape in shapes]


def _loss(implementation, scale, offset, query, key, value, cotangent,
          **options):
  # A learned slope and an integer offset, both closed over.
  def score_mod(score, batch, head, q_index, kv_index):
    distance = (kv_index - q_index + offset).astype(score.dtype)
    return score + scale * distance * (head + 1).astype(score.dtype)

  if implementation == "chunked":
    out = aj.chunked_attention(query, key, value, score_mod=score_mod,
                               **options)
  else:
    out = aj.dot_product_attention(query, key, value, score_mod=score_mod,
                                   implementation=implementation, **options)
  return jnp.sum(out * cotangent)


@pytest.mark.parametrize("order", ["jit_of_grad", "grad_of_jit", "eager"])
def test_closed_over_gradient_matches_reference(order):
  query, key, value, cotangent = _inputs(21, 29)
  arguments = (jnp.float32(0.05), jnp.int32(3), query, key, value, cotangent)

  def chunked(*args):
    return _loss("chunked", *args, is_causal=True, block_q=8, block_k=8)

  if order == "jit_of_grad":
    function = jax.jit(jax.grad(chunked, (0, 2, 3, 4)))
  elif order == "grad_of_jit":
    function = jax.grad(jax.jit(chunked), (0, 2, 3, 4))
  else:
    function = jax.grad(chunked, (0, 2, 3, 4))
  actual = function(*arguments)
  expected = jax.grad(
      lambda *args: _loss("reference", *args, is_causal=True),
      (0, 2, 3, 4))(*arguments)

  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5,
                               err_msg=f"gradient {index}")


def test_closure_gradient_backward_tiles():
  # At 1100 queries without a mask the backward pass uses smaller tiles
  # than the forward pass, so the hook is lifted for both tile shapes.
  query, key, value, cotangent = _inputs(1100, 700, seed=1)
  arguments = (jnp.float32(0.01), jnp.int32(0), query, key, value, cotangent)
  actual = jax.jit(jax.grad(
      lambda *args: _loss("chunked", *args), (0, 2)))(*arguments)
  expected = jax.grad(
      lambda *args: _loss("reference", *args), (0, 2))(*arguments)

  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5,
                               err_msg=f"gradient {index}")


def _lift(score_mod, blocks=((8, 8),)):
  hook, params = _lifted_closures.lift_score_mod(
      score_mod, None, batch_size=2, num_kv_heads=2, group_size=2,
      blocks=blocks)
  return hook, params, hook is not score_mod


def test_concrete_closures_are_not_lifted():
  # Outside any transformation the closed-over array is a constant, so the
  # hook stays as it is.
  scale = jnp.float32(2.0)
  hook = lambda score, *indices: score * scale

  assert not _lift(hook)[2]


def test_traced_integer_closures_are_lifted():
  @jax.jit
  def lifted(offset):
    hook = lambda score, batch, head, q_index, kv_index: score + offset
    _, params, changed = _lift(hook)
    assert changed
    assert params[0] is None
    assert params[1][0].dtype == jnp.int32
    return offset

  lifted(jnp.int32(2))


def test_lifted_hook_takes_closure_params():
  def probe(scale):
    hook = lambda score, *indices: score * scale
    new_hook, params, lifted = _lift(hook)
    assert lifted
    assert params[0] is None
    assert len(params[1]) == 1
    score = jnp.ones((2, 2, 2, 8, 8))
    index = [jnp.zeros(shape, jnp.int32) for shape in
             ((2, 1, 1, 1, 1), (1, 2, 2, 1, 1), (1, 1, 1, 8, 1),
              (1, 1, 1, 1, 8))]
    return jnp.sum(new_hook(score, *index, params))

  assert jax.grad(probe)(jnp.float32(3.0)) == pytest.approx(2 * 2 * 2 * 64)


def test_shape_dependent_closures_rejected():
  def probe(first, second):
    def hook(score, *indices):
      return score * (first if score.shape[3] == 8 else second)
    _lift(hook, blocks=((8, 8), (4, 8)))
    return first + second

  with pytest.raises(ValueError, match="closed over different arrays"):
    jax.grad(probe)(jnp.float32(1.0), jnp.float32(2.0))


def _mask_loss(implementation, query, key, value, cotangent, limits,
               threshold):
  # A per-sequence visible length (integer) and a distance threshold
  # (float), both closed over by `mask_mod`.
  def mask_mod(batch, head, q_index, kv_index):
    near = (q_index - kv_index).astype(jnp.float32) <= threshold
    return near & (kv_index <= q_index) & (kv_index < limits[batch])

  out = aj.dot_product_attention(query, key, value, mask_mod=mask_mod,
                                 implementation=implementation)
  return jnp.sum(out * cotangent)


@pytest.mark.parametrize("order", ["jit_of_grad", "grad_of_jit", "eager"])
def test_mask_mod_closure_matches_reference(order):
  query, key, value, cotangent = _inputs(21, 21, seed=2)
  arguments = (query, key, value, cotangent, jnp.array([5, 21], jnp.int32),
               jnp.float32(6.0))

  def chunked(*args):
    return _mask_loss("chunked", *args)

  if order == "jit_of_grad":
    function = jax.jit(jax.grad(chunked, (0, 1, 2)))
  elif order == "grad_of_jit":
    function = jax.grad(jax.jit(chunked), (0, 1, 2))
  else:
    function = jax.grad(chunked, (0, 1, 2))
  actual = function(*arguments)
  expected = jax.grad(lambda *args: _mask_loss("reference", *args),
                      (0, 1, 2))(*arguments)

  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5,
                               err_msg=f"gradient {index}")


def test_hooks_with_closures_run_in_batch_chunks(monkeypatch):
  # A budget of one sequence's tiles makes the kernel loop over the batch.
  # Each chunk must see the hooks' closed-over arrays and global indices.
  from attention_jax import chunked as chunked_lib
  monkeypatch.setattr(chunked_lib, "BATCH_CHUNK_LOGITS", 4 * 8 * 8)
  query, key, value, cotangent = _inputs(16, 16, seed=3)
  limits = jnp.array([3, 16], jnp.int32)

  def loss(implementation, scale, query):
    def score_mod(score, batch, head, q_index, kv_index):
      return score + scale * (batch + 1).astype(score.dtype)

    def mask_mod(batch, head, q_index, kv_index):
      return kv_index < limits[batch]

    options = dict(block_q=8, block_k=8) if implementation == "chunked" else {}
    out = (aj.chunked_attention if implementation == "chunked"
           else aj.dot_product_attention)(
               query, key, value, score_mod=score_mod, mask_mod=mask_mod,
               **options)
    return jnp.sum(out * cotangent)

  arguments = (jnp.float32(0.5), query)
  actual = jax.jit(jax.grad(lambda *a: loss("chunked", *a), (0, 1)))(
      *arguments)
  expected = jax.grad(lambda *a: loss("reference", *a), (0, 1))(*arguments)
  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5,
                               err_msg=f"gradient {index}")
