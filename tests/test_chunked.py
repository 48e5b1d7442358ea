"""Tests for the chunked (memory-efficient) implementation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _tile_ranges
from attention_jax import dot_product
from attention_jax._blocks import Plan
from attention_jax.chunked import chunked_attention_gradients
import hooks
import oracle
from tolerances import tolerance

BATCH, QUERY_LEN, KEY_LEN, NUM_HEADS, HEAD_DIM, VALUE_DIM = 2, 37, 53, 6, 5, 7
BLOCKS = dict(block_q=8, block_k=16)


def _inputs(seed=0, *, batch=(BATCH,), query_len=QUERY_LEN, key_len=KEY_LEN,
            num_kv_heads=3, dtype=np.float32):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((*batch, query_len, NUM_HEADS, HEAD_DIM))
  key = rng.standard_normal((*batch, key_len, num_kv_heads, HEAD_DIM))
  value = rng.standard_normal((*batch, key_len, num_kv_heads, VALUE_DIM))
  return (jnp.asarray(query, dtype), jnp.asarray(key, dtype),
          jnp.asarray(value, dtype))


def _segments(seed, length, batch=BATCH):
  rng = np.random.default_rng(seed)
  return np.cumsum(rng.random((batch, length)) < 0.15, axis=-1).astype(
      np.int32)


CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "causal-query-longer": dict(is_causal=True, query_len=KEY_LEN + 6),
    "window": dict(local_window_size=(5, 2)),
    "window-int": dict(local_window_size=3),
    "lengths": dict(query_seq_lengths=np.array([30, 37], np.int32),
                    key_value_seq_lengths=np.array([0, 40], np.int32)),
    "offset": dict(is_causal=True,
                   query_offset=np.array([3, 16], np.int32)),
    "segments": dict(query_segment_ids=_segments(1, QUERY_LEN),
                     key_segment_ids=_segments(1, KEY_LEN)),
    "mask": dict(mask=np.random.default_rng(2).random(
        (BATCH, 1, QUERY_LEN, KEY_LEN)) < 0.5),
    "bias-heads": dict(bias=np.random.default_rng(3).standard_normal(
        (1, NUM_HEADS, QUERY_LEN, KEY_LEN)).astype(np.float32)),
    "bias-keys": dict(bias=np.random.default_rng(4).standard_normal(
        (BATCH, 1, 1, KEY_LEN)).astype(np.float32)),
    "mqa": dict(num_kv_heads=1, is_causal=True),
    "mha": dict(num_kv_heads=NUM_HEADS),
    "multi-batch": dict(batch=(2, 3), is_causal=True),
    "scale": dict(scale=1.0),
}


def _split(case):
  options = dict(case)
  shape = {name: options.pop(name) for name in
           ("batch", "query_len", "num_kv_heads") if name in options}
  return shape, options


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_forward_matches_oracle(name):
  shape, options = _split(CASES[name])
  query, key, value = _inputs(**shape)
  batch = query.shape[:-3]
  bias = options.pop("bias", None)
  scale = options.pop("scale", None)
  allowed = oracle.attention_mask(
      batch, NUM_HEADS, query.shape[-3], KEY_LEN, **options)
  expected, _, expected_lse = oracle.dot_product_attention(
      query, key, value, scale=scale, bias=bias, allowed=allowed)

  out, lse = aj.chunked_attention(
      query, key, value, bias, scale=scale, return_residual=True,
      **options, **BLOCKS)

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))
  np.testing.assert_allclose(lse, expected_lse, **tolerance(np.float32))


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_gradients_match_reference(name):
  shape, options = _split(CASES[name])
  query, key, value = _inputs(**shape)
  bias = options.pop("bias", None)
  cotangent = jax.random.normal(
      jax.random.key(9), query.shape[:-1] + (VALUE_DIM,))

  def loss(implementation, query, key, value, bias):
    if implementation == "chunked":
      out = aj.chunked_attention(query, key, value, bias, **options, **BLOCKS)
    else:
      out = aj.dot_product_attention(query, key, value, bias, **options,
                                     implementation="reference")
    return jnp.sum(out * cotangent)

  argnums = (1, 2, 3) if bias is None else (1, 2, 3, 4)
  expected = jax.grad(loss, argnums)("reference", query, key, value, bias)
  actual = jax.jit(jax.grad(loss, argnums), static_argnums=0)(
      "chunked", query, key, value, bias)

  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


@pytest.mark.parametrize(
    "hook_options",
    [dict(logits_soft_cap=2.0), dict(score_mod=hooks.distance_penalty),
     dict(mask_mod=hooks.stripes),
     dict(score_mod=hooks.distance_penalty, mask_mod=hooks.stripes,
          logits_soft_cap=3.0, is_causal=True)],
    ids=["soft-cap", "score-mod", "mask-mod", "all-hooks"])
def test_chunked_hooks_match_reference(hook_options):
  query, key, value = _inputs(5)

  def loss(implementation, query, key, value):
    out = aj.dot_product_attention(
        query, key, value, implementation=implementation, **hook_options)
    return jnp.sum(jnp.sin(out)), out

  (_, expected), expected_grads = jax.value_and_grad(
      loss, (1, 2, 3), has_aux=True)("reference", query, key, value)
  (_, actual), actual_grads = jax.value_and_grad(
      loss, (1, 2, 3), has_aux=True)("chunked", query, key, value)

  np.testing.assert_allclose(actual, expected, **tolerance(np.float32))
  for got, want in zip(actual_grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_reference_hooks_match_oracle():
  query, key, value = _inputs(6)
  cap = 2.0
  logits = oracle.dot_product_logits(query, key)
  logits = cap * np.tanh(logits / cap)
  heads = np.arange(NUM_HEADS)[:, None, None]
  q_index = np.arange(QUERY_LEN)[:, None]
  k_index = np.arange(KEY_LEN)
  logits = logits - 0.25 * (heads + 1) * np.abs(q_index - k_index)
  allowed = np.broadcast_to((q_index + k_index) % 3 != 0, logits.shape)
  weights, _ = oracle.masked_softmax(logits, allowed)
  expected = oracle.weighted_values(weights, value)

  out = aj.dot_product_attention(
      query, key, value, logits_soft_cap=cap,
      score_mod=hooks.distance_penalty, mask_mod=hooks.stripes,
      implementation="reference")

  np.testing.assert_allclose(out, expected, **tolerance(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_chunked_low_precision_matches_oracle(dtype):
  query, key, value = _inputs(7, dtype=dtype)
  allowed = oracle.attention_mask((BATCH,), NUM_HEADS, QUERY_LEN, KEY_LEN,
                                  is_causal=True)
  expected, _, _ = oracle.dot_product_attention(query, key, value,
                                                allowed=allowed)

  out = aj.chunked_attention(query, key, value, is_causal=True, **BLOCKS)

  assert out.dtype == dtype
  np.testing.assert_allclose(out.astype(np.float32), expected,
                             **tolerance(dtype))


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_chunked_dropout_matches_reference(is_causal):
  query, key, value = _inputs(14)
  rng = jax.random.key(15)
  cotangent = jax.random.normal(
      jax.random.key(16), query.shape[:-1] + (VALUE_DIM,))

  def loss(implementation, query, key, value):
    out = aj.dot_product_attention(
        query, key, value, is_causal=is_causal, dropout_rate=0.3,
        dropout_rng=rng, implementation=implementation)
    return jnp.sum(out * cotangent), out

  (_, expected), expected_grads = jax.value_and_grad(
      loss, (1, 2, 3), has_aux=True)("reference", query, key, value)
  (_, actual), actual_grads = jax.value_and_grad(
      loss, (1, 2, 3), has_aux=True)("chunked", query, key, value)
  plain = aj.dot_product_attention(query, key, value, is_causal=is_causal)

  assert not np.allclose(actual, plain)
  np.testing.assert_allclose(actual, expected, **tolerance(np.float32))
  for got, want in zip(actual_grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_fully_masked_rows_are_zero():
  query, key, value = _inputs(8)
  lengths = np.array([0, 20], np.int32)

  def loss(query, key, value):
    out = aj.chunked_attention(query, key, value,
                               key_value_seq_lengths=lengths, **BLOCKS)
    return jnp.sum(out ** 2), out

  (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
      query, key, value)

  np.testing.assert_array_equal(out[0], 0.0)
  for grad in grads:
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[0], 0.0)


def test_chunked_masked_nan_keys_are_inert():
  query, key, value = _inputs(9)
  lengths = np.array([30, 41], np.int32)
  poisoned_key = key.at[:, 45:].set(jnp.nan)
  poisoned_value = value.at[:, 45:].set(jnp.inf)

  def loss(key, value):
    out = aj.chunked_attention(query, key, value, is_causal=True,
                               key_value_seq_lengths=lengths, **BLOCKS)
    return jnp.sum(out)

  clean = jax.value_and_grad(loss, (0, 1))(key, value)
  poisoned = jax.value_and_grad(loss, (0, 1))(poisoned_key, poisoned_value)

  np.testing.assert_allclose(poisoned[0], clean[0], rtol=1e-6)
  np.testing.assert_allclose(poisoned[1][0][:, :45], clean[1][0][:, :45],
                             rtol=1e-6)
  np.testing.assert_array_equal(poisoned[1][1][:, 45:], 0.0)


def _plan(**overrides):
  options = dict(
      query_length=64, key_length=64, num_kv_heads=1, group_size=1,
      block_q=16, block_k=16, scale=1.0, is_causal=False, window=None,
      logits_soft_cap=None, score_mod=None, mask_mod=None, has_bias=False,
      has_mask=False, has_query_lengths=False, has_key_lengths=False,
      has_segments=False, has_offset=False)
  options.update(overrides)
  return Plan(**options)


@pytest.mark.parametrize(
    "overrides, aux, expected",
    [
        (dict(), {}, [(0, 4)] * 4),
        (dict(is_causal=True), {}, [(0, 1), (0, 2), (0, 3), (0, 4)]),
        (dict(window=(16, 0)), {}, [(0, 1), (0, 2), (1, 3), (2, 4)]),
        (dict(has_key_lengths=True),
         {"key_lengths": jnp.array([20, 33])}, [(0, 3)] * 4),
        (dict(is_causal=True, has_offset=True),
         {"offset": jnp.array([-32, -40])}, [(0, 0), (0, 0), (0, 1), (0, 2)]),
    ],
    ids=["all", "causal", "window", "key-lengths", "offset"])
def test_key_block_range_skips_unreachable(overrides, aux, expected):
  plan = _plan(**overrides)
  ranges = [tuple(int(x) for x in _tile_ranges.key_block_range(
      plan, aux, block)) for block in range(plan.num_q_blocks)]

  assert ranges == expected


def test_chunked_skips_empty_segment_tiles():
  query, key, value = _inputs(10, batch=(1,), query_len=32, key_len=32)
  segments = np.repeat(np.arange(4, dtype=np.int32), 8)[None]
  visited = []

  def counting_mod(score, batch, head, q_index, kv_index):
    jax.debug.callback(lambda: visited.append(1))
    return score

  aj.chunked_attention(
      query, key, value, query_segment_ids=segments,
      key_segment_ids=segments, score_mod=counting_mod, block_q=8,
      block_k=8).block_until_ready()

  # Four diagonal tiles of 16 hold every pair in the same segment.
  assert len(visited) == 4


def test_chunked_no_retrace_on_same_shapes():
  query, key, value = _inputs(11)
  traces = []

  @jax.jit
  def run(query, key, value):
    traces.append(1)
    return aj.chunked_attention(query, key, value, is_causal=True, **BLOCKS)

  run(query, key, value)
  run(query + 1.0, key, value)

  assert len(traces) == 1


def test_default_dispatch_by_size():
  small = jnp.zeros((1, 8, 2, 4))
  large = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)
  choose = functools.partial(dot_product.choose_implementation, None)

  assert choose(small, small, return_weights=False) == "reference"
  assert choose(large, large, return_weights=False) == "chunked"
  assert choose(large, large, return_weights=True) == "reference"


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(implementation="chunked", return_weights=True), ValueError,
         r"cannot return them"),
        (dict(implementation="chunked", dropout_rate=1.0,
              dropout_rng=jax.random.key(0)), ValueError,
         r"`dropout_rate` should be in \[0, 1\), but got 1.0"),
        (dict(implementation="chunked", logits_soft_cap=-1.0), ValueError,
         r"`logits_soft_cap` should be positive, but got -1.0"),
        (dict(implementation="chunked",
              mask_mod=lambda b, n, t, s: (t - s).astype(jnp.float32)),
         TypeError, r"`mask_mod` should return a boolean array"),
        (dict(implementation="reference",
              mask_mod=lambda b, n, t, s: (t - s).astype(jnp.float32)),
         TypeError, r"`mask_mod` should return a boolean array"),
    ],
    ids=["weights", "dropout", "soft-cap", "mask-mod-chunked",
         "mask-mod-reference"])
def test_chunked_errors(options, error, message):
  query, key, value = _inputs(12)
  with pytest.raises(error, match=message):
    aj.dot_product_attention(query, key, value, **options)


def test_chunked_block_size_error():
  query, key, value = _inputs(13)
  with pytest.raises(ValueError, match=r"`block_q` should be a positive "
                     r"integer, but got 0"):
    aj.chunked_attention(query, key, value, block_q=0)


def _learned_distance_bias(score, batch, head, q_index, kv_index, table):
  del batch
  return score + table[head, kv_index - q_index + QUERY_LEN + KEY_LEN]


def test_score_mod_params_gradients_match_reference():
  query, key, value = _inputs(17)
  table = jax.random.normal(jax.random.key(18),
                            (NUM_HEADS, 2 * (QUERY_LEN + KEY_LEN)))

  def loss(implementation, query, key, value, table):
    out = aj.dot_product_attention(
        query, key, value, is_causal=True, score_mod=_learned_distance_bias,
        score_mod_params=table, implementation=implementation)
    return jnp.sum(jnp.sin(out))

  grad = jax.grad(loss, (1, 2, 3, 4))
  expected = grad("reference", query, key, value, table)
  actual = jax.jit(grad, static_argnums=0)("chunked", query, key, value,
                                           table)

  assert np.abs(expected[3]).sum() > 0
  for index, (got, want) in enumerate(zip(actual, expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f"gradient of argument {index}")


def test_score_mod_params_need_score_mod():
  query, key, value = _inputs(19)
  with pytest.raises(ValueError, match="`score_mod_params` was given"):
    aj.chunked_attention(query, key, value, score_mod_params=jnp.ones(3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_gradients_sum_to_full(dtype):
  keys = jax.random.split(jax.random.key(31), 5)
  query = jax.random.normal(keys[0], (2, 7, 6, 5), dtype)
  key = jax.random.normal(keys[1], (2, 12, 3, 5), dtype)
  value = jax.random.normal(keys[2], (2, 12, 3, 4), dtype)
  d_out = jax.random.normal(keys[3], (2, 7, 6, 4))
  d_lse = jax.random.normal(keys[4], (2, 7, 6))
  lengths = jnp.array([12, 4])

  def loss(query, key, value):
    out, lse = aj.dot_product_attention(
        query, key, value, key_value_seq_lengths=lengths, scale=0.7,
        implementation="reference", return_residual=True)
    return (jnp.sum(out.astype(jnp.float32) * d_out)
            + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * d_lse))

  expected = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
  out, lse = aj.dot_product_attention(
      query, key, value, key_value_seq_lengths=lengths, scale=0.7,
      implementation="reference", return_residual=True)
  grads = []
  for start, stop in ((0, 5), (5, 12)):
    grads.append(chunked_attention_gradients(
        query, key[:, start:stop], value[:, start:stop], out, lse, d_out,
        d_lse, scale=0.7,
        key_value_seq_lengths=jnp.clip(lengths - start, 0, stop - start)))
  dq = grads[0][0].astype(jnp.float32) + grads[1][0].astype(jnp.float32)
  dk = jnp.concatenate([grads[0][1], grads[1][1]], axis=1)
  dv = jnp.concatenate([grads[0][2], grads[1][2]], axis=1)
  check = tolerance(dtype)
  np.testing.assert_allclose(dq, np.asarray(expected[0], np.float32), **check)
  np.testing.assert_allclose(np.asarray(dk, np.float32),
                             np.asarray(expected[1], np.float32), **check)
  np.testing.assert_allclose(np.asarray(dv, np.float32),
                             np.asarray(expected[2], np.float32), **check)


def test_block_gradients_of_padded_causal_split():
  # 45 queries in blocks of 16 pad their 45 keys to 48. The key and value
  # gradients still have the caller's 45 rows.
  keys = jax.random.split(jax.random.key(32), 4)
  query = jax.random.normal(keys[0], (2, 45, 6, 5))
  key = jax.random.normal(keys[1], (2, 45, 3, 5))
  value = jax.random.normal(keys[2], (2, 45, 3, 4))
  d_out = jax.random.normal(keys[3], (2, 45, 6, 4))

  def loss(query, key, value):
    out = aj.dot_product_attention(query, key, value, is_causal=True,
                                   implementation="reference")
    return jnp.sum(out * d_out)

  expected = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
  out, lse = aj.dot_product_attention(query, key, value, is_causal=True,
                                      implementation="reference",
                                      return_residual=True)
  grads = chunked_attention_gradients(
      query, key, value, out, lse, d_out, jnp.zeros(lse.shape),
      is_causal=True, block_q=16, block_k=8)
  for got, want in zip(grads, expected):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
