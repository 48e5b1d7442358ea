"""Tests for the delegation to cuDNN through `jax.nn`.

No test here needs a GPU. The argument mapping is checked on the CPU by
sending the same call to `jax.nn`'s XLA implementation instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import _cudnn
from attention_jax import _dispatch


def _inputs(batch=(2,), query_len=16, key_len=16, heads=4, kv_heads=4,
            head_dim=16, dtype=jnp.bfloat16, seed=0):
  rng = np.random.default_rng(seed)
  shapes = ((*batch, query_len, heads, head_dim),
            (*batch, key_len, kv_heads, head_dim),
            (*batch, key_len, kv_heads, head_dim))
  return [jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes]


def _count_jax_nn_calls(monkeypatch) -> list:
  """Return a list that records each call's `implementation` to `jax.nn`."""
  calls = []
  original = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs.get("implementation"))
    return original(*args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  return calls


@pytest.fixture
def cudnn_on_xla(monkeypatch):
  """Pretend cuDNN is available and count the calls `jax.nn` receives."""
  monkeypatch.setattr(_cudnn, "NN_IMPLEMENTATION", "xla")
  monkeypatch.setattr(_cudnn, "unavailable_reason", lambda: None)
  return _count_jax_nn_calls(monkeypatch)


def test_cudnn_on_cpu_raises():
  query, key, value = _inputs()
  if jax.default_backend() != "cpu":
    pytest.skip("checks the error on a CPU-only machine")

  with pytest.raises(ValueError, match="needs an NVIDIA GPU.*'cpu'"):
    aj.dot_product_attention(query, key, value, implementation="cudnn")


def test_default_on_cpu_never_delegates(monkeypatch):
  query, key, value = _inputs()
  if jax.default_backend() != "cpu":
    pytest.skip("checks the choice on a CPU-only machine")
  calls = _count_jax_nn_calls(monkeypatch)

  aj.dot_product_attention(query, key, value)

  assert calls == []


@pytest.mark.parametrize("case", [
    dict(),
    dict(batch=()),
    dict(batch=(2, 3)),
    dict(kv_heads=2),
    dict(kv_heads=1, is_causal=True),
    dict(is_causal=True, scale=0.5),
    dict(local_window_size=(3, 0)),
    dict(local_window_size=(3, 2), is_causal=True),
    dict(dtype=jnp.float16),
], ids=["plain", "no_batch", "two_batch_axes", "grouped", "multi_query",
        "causal_scaled", "left_window", "window_and_causal", "float16"])
def test_delegated_call_matches_reference(cudnn_on_xla, case):
  case = dict(case)
  shape = {name: case.pop(name) for name in ("batch", "kv_heads", "dtype")
           if name in case}
  query, key, value = _inputs(**shape)

  actual = aj.dot_product_attention(query, key, value,
                                    implementation="cudnn", **case)
  expected = aj.dot_product_attention(
      *(x.astype(jnp.float32) for x in (query, key, value)),
      implementation="reference", **case)

  assert cudnn_on_xla == ["xla"]
  assert actual.shape == query.shape
  assert actual.dtype == query.dtype
  np.testing.assert_allclose(np.asarray(actual, np.float32), expected,
                             rtol=2e-2, atol=2e-2)


def test_delegated_gradient_matches_reference(cudnn_on_xla):
  query, key, value = _inputs(kv_heads=2)

  def loss(implementation, query, key, value):
    out = aj.dot_product_attention(query, key, value, is_causal=True,
                                   implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  actual = jax.grad(lambda *x: loss("cudnn", *x), (0, 1, 2))(
      query, key, value)
  expected = jax.grad(lambda *x: loss("reference", *x), (0, 1, 2))(
      *(x.astype(jnp.float32) for x in (query, key, value)))

  for got, want in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=5e-2, atol=5e-2)


def test_default_delegates_supported_request(cudnn_on_xla):
  query, key, value = _inputs()

  aj.dot_product_attention(query, key, value, is_causal=True)

  assert cudnn_on_xla == ["xla"]


@pytest.mark.parametrize("case", [
    dict(dtype=jnp.float32),
    dict(bias=True),
    dict(key_value_seq_lengths=True),
    dict(is_causal=True, query_len=8),
    dict(return_residual=True),
], ids=["float32", "bias", "lengths", "causal_rectangular", "residual"])
def test_default_keeps_unsupported_request(cudnn_on_xla, case):
  case = dict(case)
  shape = {name: case.pop(name) for name in ("dtype", "query_len")
           if name in case}
  query, key, value = _inputs(**shape)
  if case.pop("bias", False):
    case["bias"] = jnp.zeros((4, 16, 16), query.dtype)
  if case.pop("key_value_seq_lengths", False):
    case["key_value_seq_lengths"] = jnp.array([16, 9])

  aj.dot_product_attention(query, key, value, **case)

  assert cudnn_on_xla == []


def test_named_cudnn_lists_every_unsupported_feature(cudnn_on_xla):
  query, key, value = _inputs(dtype=jnp.float32, query_len=8)
  bias = jnp.zeros((4, 8, 16))

  with pytest.raises(ValueError) as error:
    aj.dot_product_attention(query, key, value, bias, is_causal=True,
                             logits_soft_cap=30.0, implementation="cudnn")

  message = str(error.value)
  assert "float16 or bfloat16 (got float32" in message
  assert "no `bias`" in message
  assert "no `logits_soft_cap`" in message
  assert "T == S for a causal or window mask" in message
  assert cudnn_on_xla == []


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), []),
    (dict(head_dim=12), ["multiple of 8"]),
    (dict(head_dim=136), ["at most 128"]),
    (dict(window=(4, 2)), ["no keys to the right"]),
    (dict(window=(4, 2), is_causal=True), []),
    (dict(dropout_rate=0.1), ["no `dropout_rate`"]),
    (dict(dropout_rate=0.0, mask=None), []),
    (dict(score_mod=lambda score, *indices: score), ["no `score_mod`"]),
])
def test_unsupported_features_table(kwargs, expected):
  kwargs = dict(kwargs)
  head_dim = kwargs.pop("head_dim", 16)
  query, key, value = _inputs(head_dim=head_dim)
  options = dict(is_causal=False, window=None)
  options.update(kwargs)

  reasons = _cudnn.unsupported_features(query, key, value, max_head_dim=128,
                                        **options)

  assert len(reasons) == len(expected)
  for reason, phrase in zip(reasons, expected):
    assert phrase in reason


def test_value_head_dim_must_match():
  query, key, _ = _inputs()
  value = jnp.zeros(key.shape[:-1] + (8,), key.dtype)

  reasons = _cudnn.unsupported_features(query, key, value, is_causal=False,
                                        window=None, max_head_dim=128)

  assert any("value head dimension" in reason for reason in reasons)


def test_residual_features_reject_cudnn():
  query, key, _ = _inputs()

  with pytest.raises(ValueError, match="log-sum-exp"):
    _dispatch.choose_implementation("cudnn", query, key, return_weights=False)


def test_cpu_error_lists_unsupported_features():
  query, key, value = _inputs(dtype=jnp.float32)
  if jax.default_backend() != "cpu":
    pytest.skip("checks the error on a CPU-only machine")

  with pytest.raises(ValueError) as error:
    aj.dot_product_attention(query, key, value, logits_soft_cap=5.0,
                             implementation="cudnn")

  message = str(error.value)
  assert "needs an NVIDIA GPU" in message
  assert "no `logits_soft_cap`" in message
  assert "float16 or bfloat16" in message
