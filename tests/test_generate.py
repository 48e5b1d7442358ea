"""Tests of cached generation and the `attention-jax generate` command."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.cli.main import main
from attention_jax.training.generation import generate
from attention_jax.training.generation import top_k_logits
from attention_jax.training.model import ModelConfig
from attention_jax.training.model import TransformerLM
from attention_jax.training.restore import load_trained_model

TINY_OPTIONS = [
    "--width", "16", "--num-layers", "2", "--num-heads", "2",
    "--mlp-ratio", "2", "--seq-len", "24", "--batch-size", "4",
    "--warmup-steps", "1", "--eval-every", "2", "--eval-windows", "8",
    "--checkpoint-every", "2", "--snippet-len", "12", "--sample-tokens", "4",
    "--validation-fraction", "0.3", "--quiet",
]


def _model(attention="attention_jax"):
  config = ModelConfig(vocab_size=37, max_len=24, width=16, num_layers=2,
                       num_heads=2, mlp_ratio=2, attention=attention)
  return TransformerLM(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
  corpus = tmp_path_factory.mktemp("corpus")
  for index in range(8):
    text = "".join(f"x_{index} = {line} + y\n" for line in range(40))
    (corpus / f"part_{index}.py").write_text(text, encoding="utf-8")
  output = tmp_path_factory.mktemp("run") / "out"
  with contextlib.redirect_stdout(io.StringIO()):
    assert main(["train", "--data", str(corpus), "--output", str(output),
                 "--steps", "2", *TINY_OPTIONS]) == 0
  return output


def test_cached_decode_equals_full_forward():
  model = _model()
  tokens = jax.random.randint(jax.random.key(0), (1, 20), 0, 37)
  expected = model(tokens)
  logits, caches = model.decode(tokens[:, :7], model.init_caches(1))
  outs = [logits]
  for index in range(7, 20):
    logits, caches = model.decode(tokens[:, index:index + 1], caches)
    outs.append(logits)

  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected,
                             rtol=1e-5, atol=1e-5)


def test_generate_past_max_len_reencodes():
  model = _model()
  tokens = generate(model, np.array([1, 2, 3]), num_tokens=60, top_k=5,
                    seed=1)

  assert tokens.shape == (60,)
  assert tokens.min() >= 0
  assert tokens.max() < 37


def test_generate_is_reproducible_per_seed():
  model = _model()
  first = generate(model, np.array([4, 5]), num_tokens=10, seed=3)
  second = generate(model, np.array([4, 5]), num_tokens=10, seed=3)

  np.testing.assert_array_equal(first, second)


def test_top_k_keeps_largest_logits():
  logits = jnp.array([0.5, 3.0, -1.0, 2.0])

  np.testing.assert_array_equal(
      top_k_logits(logits, 2), [-jnp.inf, 3.0, -jnp.inf, 2.0])


def test_load_trained_model_restores_parameters(trained_folder):
  model, tokenizer, step = load_trained_model(str(trained_folder))
  fresh = TransformerLM(model.config, rngs=nnx.Rngs(0))
  restored_leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  fresh_leaves = jax.tree.leaves(nnx.state(fresh, nnx.Param))

  assert step == 2
  assert tokenizer.vocab_size == model.config.vocab_size
  assert any(not np.allclose(a, b) for a, b in zip(restored_leaves,
                                                   fresh_leaves))


def test_generate_command_prints_continuation(trained_folder, capsys):
  status = main(["generate", "--checkpoint", str(trained_folder),
                 "--prompt", "x_1 = ", "--tokens", "7", "--top-k", "3",
                 "--quiet"])
  printed = capsys.readouterr().out

  assert status == 0
  assert printed.startswith("x_1 = ")
  assert "Generated 7 tokens with the step-2 model" in printed


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--checkpoint", "/no/such/folder"], "checkpoint folder /no/such/folder not found"),
        (["--temperature", "0"], "--temperature must be positive, but got 0.0"),
        (["--prompt", ""], "--prompt must contain at least one character"),
    ],
    ids=["missing-folder", "temperature", "empty-prompt"])
def test_generate_errors_in_one_line(argv, expected, trained_folder, capsys):
  if "--checkpoint" not in argv:
    argv = ["--checkpoint", str(trained_folder), *argv]
  with pytest.raises(SystemExit) as exit_info:
    main(["generate", "--quiet", *argv])
  stderr = capsys.readouterr().err

  assert exit_info.value.code == 1
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"attention-jax generate: error: {expected}")
