"""Tests of the attention mechanisms a `TransformerLM` can be built with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.training import mechanisms
from attention_jax.training.errors import UserInputError
from attention_jax.training.generation import generate
from attention_jax.training.model import ModelConfig
from attention_jax.training.model import TransformerLM
from attention_jax.training.model import count_parameters

VOCAB, LENGTH = 29, 13


def _model(mechanism, **options):
  config = ModelConfig(vocab_size=VOCAB, max_len=LENGTH, width=24,
                       num_layers=2, num_heads=4, mlp_ratio=2,
                       mechanism=mechanism, **options)
  return TransformerLM(config, rngs=nnx.Rngs(0))


def _tokens(seed=0, batch=2, length=LENGTH):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


@pytest.mark.parametrize("mechanism", mechanisms.MECHANISM_CHOICES)
def test_every_mechanism_is_causal(mechanism):
  model = _model(mechanism)
  tokens = _tokens()
  changed = tokens.at[:, 8:].set((tokens[:, 8:] + 1) % VOCAB)
  logits, other = model(tokens), model(changed)
  assert logits.shape == (2, LENGTH, VOCAB)
  assert np.all(np.isfinite(np.asarray(logits)))
  # Positions before the change see the same prefix, so their logits agree.
  np.testing.assert_allclose(logits[:, :8], other[:, :8], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, 8:], other[:, 8:])


@pytest.mark.parametrize("mechanism", mechanisms.MECHANISM_CHOICES)
def test_every_mechanism_trains_and_returns_weights(mechanism):
  model = _model(mechanism)
  tokens = _tokens(1)
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.jit(jax.grad(loss))(params)
  norms = [float(jnp.linalg.norm(leaf)) for leaf in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms))
  assert sum(norms) > 0
  weights = model.attention_weights(tokens)
  assert len(weights) == 2
  for layer in weights:
    assert layer.shape[0] == 2
    assert layer.shape[-2:] == (LENGTH, LENGTH)
    np.testing.assert_allclose(jnp.sum(layer, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(layer) * np.triu(np.ones((LENGTH, LENGTH)), 1), 0.0)


@pytest.mark.parametrize(
    "mechanism", [name for name, spec in mechanisms.MECHANISMS.items()
                  if spec.supports_cache])
def test_cached_decoding_equals_full_forward(mechanism):
  model = _model(mechanism)
  tokens = _tokens(2, batch=1)
  expected = model(tokens)
  logits, caches = model.decode(tokens[:, :5], model.init_caches(1))
  outs = [logits]
  for index in range(5, LENGTH):
    logits, caches = model.decode(tokens[:, index:index + 1], caches)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected,
                             rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("mechanism", ["basic", "additive"])
def test_generate_without_cache_recomputes(mechanism):
  model = _model(mechanism)
  assert not model.config.supports_cache
  prompt = np.asarray(_tokens(3, batch=1)[0, :4])
  first = generate(model, prompt, num_tokens=5, top_k=3, seed=4)
  again = generate(model, prompt, num_tokens=5, top_k=3, seed=4)
  assert first.shape == (5,)
  np.testing.assert_array_equal(first, again)
  with pytest.raises(UserInputError, match="mechanism='basic'|mechanism='additive'"):
    model.init_caches(1)


def test_relative_mechanisms_drop_absolute_positions():
  for name, spec in mechanisms.MECHANISMS.items():
    model = _model(name)
    assert (model.position_embedding is not None) == spec.absolute_positions


def test_parameter_counts_differ_as_expected():
  counts = {name: count_parameters(_model(name))
            for name in ("scaled", "dot", "gqa", "rope", "alibi")}
  assert counts["dot"] == counts["scaled"]
  # Grouped-query attention with 2 of 4 key/value heads halves the key and
  # value projections: 2 layers x 2 projections x (24 x 12 + 12) fewer.
  assert counts["scaled"] - counts["gqa"] == 2 * 2 * (24 * 12 + 12)
  # RoPE and ALiBi learn nothing; they drop the absolute position table.
  assert counts["scaled"] - counts["rope"] == LENGTH * 24
  assert counts["rope"] == counts["alibi"]


def test_gqa_key_value_heads():
  model = _model("gqa", num_kv_heads=1)
  assert model.blocks[0].attention.num_kv_heads == 1
  assert _model("gqa").blocks[0].attention.num_kv_heads == 2


@pytest.mark.parametrize("options, message", [
    (dict(mechanism="flash"), "mechanism must be one of"),
    (dict(mechanism="scaled", num_kv_heads=2), "applies to mechanism='gqa'"),
    (dict(mechanism="gqa", num_kv_heads=3), "must divide num_heads=4"),
    (dict(mechanism="gqa", num_kv_heads=0), "positive integer"),
    (dict(mechanism="rope", attention="flax"), "attention='flax' runs"),
])
def test_invalid_mechanism_options(options, message):
  with pytest.raises(UserInputError, match=message):
    ModelConfig(vocab_size=VOCAB, max_len=LENGTH, width=24, num_heads=4,
                **options)
