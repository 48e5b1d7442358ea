"""Training split over devices follows the single-device run step by step."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from attention_jax.cli.main import main
from attention_jax.training.config import TrainConfig
from attention_jax.training.errors import UserInputError
from attention_jax.training.run import train

TINY = dict(
    width=24, num_layers=2, num_heads=4, mlp_ratio=2, seq_len=16,
    batch_size=4, steps=3, warmup_steps=1, eval_every=3, eval_windows=8,
    log_every=1, checkpoint_every=3, snippet_len=8, sample_tokens=4,
    validation_fraction=0.3,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  for index in range(6):
    text = "".join(f"total_{index} += {line} % 7\n" for line in range(50))
    (folder / f"part_{index}.py").write_text(text, encoding="utf-8")
  return str(folder)


def _history(corpus, output, **options):
  config = TrainConfig(data=corpus, output=str(output), **TINY, **options)
  result = train(config)
  metrics = json.loads(open(result.files["metrics"]).read())
  return metrics["history"]


@pytest.fixture(scope="module")
def single_device(corpus, tmp_path_factory):
  return _history(corpus, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("data_parallel, sequence_parallel, mechanism", [
    (2, 4, "scaled"),
    (4, 1, "scaled"),
    (1, 2, "gqa"),
])
def test_parallel_losses_match_single_device(
    corpus, tmp_path, single_device, data_parallel, sequence_parallel,
    mechanism):
  expected = (single_device if mechanism == "scaled"
              else _history(corpus, tmp_path / "reference",
                            mechanism=mechanism))
  history = _history(corpus, tmp_path / "parallel", mechanism=mechanism,
                     data_parallel=data_parallel,
                     sequence_parallel=sequence_parallel)
  for split in ("train", "validation"):
    steps = [entry["step"] for entry in history[split]]
    assert steps == [entry["step"] for entry in expected[split]]
    np.testing.assert_allclose(
        [entry["loss"] for entry in history[split]],
        [entry["loss"] for entry in expected[split]], rtol=2e-5)


@pytest.mark.parametrize("options, message", [
    (dict(data_parallel=4, sequence_parallel=4), "needs 16 devices"),
    (dict(data_parallel=3), "batch_size=4 must be divisible"),
    (dict(sequence_parallel=3), "seq_len=16 must be divisible by 2 x sequence_parallel = 6"),
    (dict(sequence_parallel=2, mechanism="rope"), "mechanism='rope'"),
])
def test_parallel_option_errors(corpus, tmp_path, options, message):
  with pytest.raises(UserInputError, match=message):
    train(TrainConfig(data=corpus, output=str(tmp_path), **TINY, **options))


def test_train_command_parallel_options(corpus, tmp_path):
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    status = main([
        "train", "--data", corpus, "--output", str(tmp_path / "out"),
        "--data-parallel", "2", "--sequence-parallel", "2", "--quiet",
        *(f"--{name.replace('_', '-')}={value}"
          for name, value in TINY.items()),
    ])
  assert status == 0
  assert "bits per byte" in stdout.getvalue()


def test_one_device_loads_parallel_checkpoint(corpus, tmp_path):
  # A run over a 2 x 4 device mesh saves arrays with that mesh's sharding.
  # `attention-jax generate` on one device must still load them.
  output = tmp_path / "out"
  train(TrainConfig(data=corpus, output=str(output), **TINY,
                    data_parallel=2, sequence_parallel=4))
  environment = {name: value for name, value in os.environ.items()
                 if name != "XLA_FLAGS"}
  script = ("import sys, jax\n"
            "from attention_jax.training.restore import load_trained_model\n"
            "_, _, step = load_trained_model(sys.argv[1])\n"
            "print(jax.device_count(), step)\n")

  result = subprocess.run([sys.executable, "-c", script, str(output)],
                          env=environment, capture_output=True, text=True,
                          timeout=300, check=False)

  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["1", "3"]
