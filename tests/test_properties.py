"""Property-based tests over shapes, masks and dtypes (hypothesis)."""

from __future__ import annotations

import dataclasses
import functools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import attention_jax as aj
import oracle
from tolerances import tolerance

# Every test draws the same examples: one fixed seed, no example database.
# The shared examples let the tests reuse the programs compiled by the
# module-level `jax.jit` below.
SETTINGS = hypothesis.settings(max_examples=25, deadline=None, database=None,
                               derandomize=False)
SEED = 20240601


@dataclasses.dataclass(frozen=True)
class Case:
  query: np.ndarray
  key: np.ndarray
  value: np.ndarray
  bias: np.ndarray | None
  mask: np.ndarray | None
  key_value_seq_lengths: np.ndarray | None
  is_causal: bool
  local_window_size: tuple[int, int] | None

  def allowed(self) -> np.ndarray:
    """Return the oracle's mask `[B..., N, T, S]`."""
    *batch, query_length, num_heads, _ = self.query.shape
    return oracle.attention_mask(
        tuple(batch), num_heads, query_length, self.key.shape[-3],
        mask=self.mask, is_causal=self.is_causal,
        key_value_seq_lengths=self.key_value_seq_lengths,
        local_window_size=self.local_window_size)


@st.composite
def cases(draw) -> Case:
  batch = draw(st.sampled_from([(), (2,), (3,), (2, 1)]))
  query_length = draw(st.integers(1, 5))
  key_length = draw(st.integers(1, 7))
  num_kv_heads = draw(st.sampled_from([1, 2]))
  num_heads = num_kv_heads * draw(st.sampled_from([1, 3]))
  head_dim = draw(st.integers(1, 4))
  value_dim = draw(st.integers(1, 3))
  dtype = draw(st.sampled_from([np.float32, jnp.bfloat16, jnp.float16]))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))

  def normal(shape):
    return rng.standard_normal(shape).astype(dtype)

  query = normal((*batch, query_length, num_heads, head_dim))
  key = normal((*batch, key_length, num_kv_heads, head_dim))
  value = normal((*batch, key_length, num_kv_heads, value_dim))
  full_shape = (*batch, num_heads, query_length, key_length)

  bias = normal(full_shape) if draw(st.booleans()) else None
  mask = None
  mask_shape = draw(st.sampled_from(["none", "full", "keys_only"]))
  if mask_shape != "none":
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    shape = full_shape if mask_shape == "full" else (key_length,)
    mask = rng.random(shape) < density
  lengths = None
  if draw(st.booleans()):
    lengths = rng.integers(0, key_length + 1, batch).astype(np.int32)
  window = draw(st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)))
  return Case(query, key, value, bias, mask, lengths,
              is_causal=draw(st.booleans()), local_window_size=window)


@functools.partial(jax.jit, static_argnames=("is_causal", "local_window_size"))
def attend(query, key, value, bias, mask, key_value_seq_lengths, *, is_causal,
           local_window_size):
  return aj.dot_product_attention(
      query, key, value, bias, mask, is_causal=is_causal,
      key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size, return_weights=True)


def run(case: Case):
  """Return `(output, weights)` as float32 NumPy arrays."""
  output, weights = attend(
      case.query, case.key, case.value, case.bias, case.mask,
      case.key_value_seq_lengths, is_causal=case.is_causal,
      local_window_size=case.local_window_size)
  return np.asarray(output, np.float32), np.asarray(weights, np.float32)


@SETTINGS
@hypothesis.seed(SEED)
@hypothesis.given(cases())
def test_weights_sum_to_one_on_visible_rows(case):
  _, weights = run(case)
  visible_rows = case.allowed().any(axis=-1)
  sums = weights.sum(axis=-1)
  np.testing.assert_allclose(sums[visible_rows], 1.0,
                             **tolerance(case.query.dtype))


@SETTINGS
@hypothesis.seed(SEED)
@hypothesis.given(cases())
def test_weights_zero_on_empty_rows(case):
  _, weights = run(case)
  empty_rows = ~case.allowed().any(axis=-1)
  np.testing.assert_array_equal(weights[empty_rows], 0.0)


@SETTINGS
@hypothesis.seed(SEED)
@hypothesis.given(cases())
def test_masked_weights_exactly_zero(case):
  _, weights = run(case)
  np.testing.assert_array_equal(weights[~case.allowed()], 0.0)


@SETTINGS
@hypothesis.seed(SEED)
@hypothesis.given(cases())
def test_output_matches_oracle(case):
  output, _ = run(case)
  expected, _, _ = oracle.dot_product_attention(
      case.query, case.key, case.value, bias=case.bias,
      allowed=case.allowed())
  np.testing.assert_allclose(output, expected, **tolerance(case.query.dtype))


@SETTINGS
@hypothesis.seed(SEED)
@hypothesis.given(cases())
def test_output_dtype_matches_input(case):
  output, _ = attend(
      case.query, case.key, case.value, case.bias, case.mask,
      case.key_value_seq_lengths, is_causal=case.is_causal,
      local_window_size=case.local_window_size)
  assert output.dtype == case.value.dtype
