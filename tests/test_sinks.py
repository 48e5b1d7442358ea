"""Tests for learned attention sinks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
import oracle
import path_parity as pp
from tolerances import tolerance


def _sinks(seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (pp.NUM_HEADS,)) * 2.0, jnp.float32)


def test_sinks_reference_matches_oracle():
  query, key, value = pp.attention_inputs(1, query_len=7, key_len=11)
  sinks = _sinks(2)
  # The first query row of the first example has no visible key.
  mask = np.random.default_rng(3).random((pp.BATCH, 1, 7, 11)) < 0.6
  mask[0, :, 0, :] = False

  out, weights = jax.jit(lambda *arrays: aj.sink_attention(
      *arrays, mask=mask, implementation="reference",
      return_weights=True))(query, key, value, sinks)

  expected, expected_weights = oracle.sink_attention(
      query, key, value, sinks, allowed=mask)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(weights, expected_weights,
                             **tolerance(np.float32))
  np.testing.assert_array_equal(out[0, 0], 0.0)
  assert np.all(np.asarray(weights).sum(-1) < 1.0)


def test_apply_sinks_to_residual_output():
  query, key, value = pp.attention_inputs(4, query_len=7, key_len=11)
  sinks = _sinks(5)

  def both(query, key, value, sinks):
    out, logsumexp = aj.dot_product_attention(
        query, key, value, is_causal=True, return_residual=True)
    combined = aj.sink_attention(query, key, value, sinks, is_causal=True)
    return aj.apply_attention_sinks(out, logsumexp, sinks), combined

  applied, combined = jax.jit(both)(query, key, value, sinks)

  np.testing.assert_allclose(applied, combined, rtol=1e-6, atol=1e-6)


def test_sinks_reference_and_chunked_agree():
  query, key, value = pp.attention_inputs(6)
  sinks = _sinks(7)

  def attend(implementation, query, key, value, sinks):
    return aj.sink_attention(query, key, value, sinks,
                             implementation=implementation,
                             **pp.CAUSAL_PADDING, **pp.BLOCKS)

  out, grads = pp.assert_paths_agree(attend, (query, key, value, sinks),
                                     ("query", "key", "value", "sinks"))

  # Padded queries (t >= 30 in the first example) see no key, so all of
  # their mass goes to the sink: zero output and zero query gradient.
  np.testing.assert_array_equal(out[0, 30:], 0.0)
  np.testing.assert_array_equal(grads[0][0, 30:], 0.0)
  assert np.all(grads[3] != 0.0)
  allowed = oracle.attention_mask(
      (pp.BATCH,), pp.NUM_HEADS, pp.QUERY_LEN, pp.KEY_LEN,
      **pp.CAUSAL_PADDING)
  expected, _ = oracle.sink_attention(query, key, value, sinks,
                                      allowed=allowed)
  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


def test_sinks_without_visible_keys_give_zeros():
  query, key, value = pp.attention_inputs(8, query_len=5, key_len=9)
  sinks = _sinks(9)
  lengths = np.array([0, 9], np.int32)  # the first example has no keys

  def loss(query, key, value, sinks):
    out = aj.sink_attention(query, key, value, sinks,
                            key_value_seq_lengths=lengths,
                            implementation="chunked", **pp.BLOCKS)
    return jnp.sum(out ** 2), out

  (_, out), grads = jax.jit(jax.value_and_grad(
      loss, (0, 1, 2, 3), has_aux=True))(query, key, value, sinks)

  np.testing.assert_array_equal(out[0], 0.0)
  for name, grad in zip(("query", "key", "value"), grads[:3]):
    np.testing.assert_array_equal(grad[0], 0.0, err_msg=name)
  assert np.all(np.isfinite(grads[3]))


def test_sinks_shape_error():
  query, key, value = pp.attention_inputs(10, query_len=5, key_len=9)
  with pytest.raises(ValueError, match=r"`sinks` should have shape \[N\] "
                     r"with N=6 query heads, but got \(3,\)"):
    aj.sink_attention(query, key, value, jnp.zeros((3,)))
