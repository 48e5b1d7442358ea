"""Tests of the associative-recall task and the `attention-jax compare` command."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from attention_jax.cli.main import main
from attention_jax.compare import recall
from attention_jax.compare.config import CompareConfig
from attention_jax.training.errors import UserInputError


def _answers(tokens, task):
  """Look each query key up in the pairs by hand; return the expected answer tokens."""
  expected = []
  for row in tokens:
    pairs = {int(token) // 10: int(token) % 10 for token in row[:task.num_pairs]}
    start = task.num_pairs + 1
    expected.append([220 + pairs[int(row[start + 2 * q]) - 200]
                     for q in range(task.num_queries)])
  return np.asarray(expected)


def test_recall_examples_answer_their_queries():
  task = recall.RecallTask(num_pairs=7, num_queries=9, window=29)
  tokens, weights = task.batch(np.random.default_rng(0), 6)
  assert tokens.shape == (6, 29)
  assert weights.shape == (6, 28)
  start = task.num_pairs + 1
  np.testing.assert_array_equal(tokens[:, start - 1], recall.SEPARATOR)
  np.testing.assert_array_equal(tokens[:, task.example_length:], recall.PAD)
  for row in tokens:
    keys = row[:task.num_pairs] // 10
    assert len(set(keys.tolist())) == task.num_pairs
    assert np.all(row[:task.num_pairs] < 200)
    queries = row[start:task.example_length:2]
    assert np.all((queries >= 200) & (queries < 220))
  answers = tokens[:, start + 1:task.example_length:2]
  np.testing.assert_array_equal(answers, _answers(tokens, task))
  # The weights mark exactly the predictions of the answers.
  targets = tokens[:, 1:]
  np.testing.assert_array_equal(targets[weights == 1].reshape(answers.shape),
                                answers)
  assert weights.sum() == 6 * task.num_queries


def test_recall_describe_spells_an_example():
  task = recall.RecallTask.unpadded(num_pairs=2, num_queries=1)
  tokens = np.array([27, 104, recall.SEPARATOR, 210, 224])
  assert task.example_length == len(tokens)
  assert recall.describe(tokens) == "c7 k4 | k? 4"


def test_recall_batches_are_reproducible_and_vary():
  task = recall.RecallTask.unpadded(num_pairs=4, num_queries=4)
  first, _ = task.batch(np.random.default_rng(3), 8)
  again, _ = task.batch(np.random.default_rng(3), 8)
  other, _ = task.batch(np.random.default_rng(4), 8)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_accuracy_counts_only_answers():
  task = recall.RecallTask.unpadded(num_pairs=5, num_queries=3)
  tokens, weights = task.batch(np.random.default_rng(1), 4)
  perfect = tokens[:, 1:].copy()
  assert recall.accuracy(perfect, tokens, weights) == 1.0
  # Wrong predictions outside the answers do not count.
  noisy = np.where(weights == 1, perfect, 0)
  assert recall.accuracy(noisy, tokens, weights) == 1.0
  # One wrong answer in twelve.
  wrong = perfect.copy()
  row, column = np.argwhere(weights == 1)[0]
  wrong[row, column] = recall.PAD
  assert recall.accuracy(wrong, tokens, weights) == pytest.approx(11 / 12)


@pytest.mark.parametrize("options, message", [
    (dict(num_pairs=0, num_queries=1, window=10), "num_pairs"),
    (dict(num_pairs=21, num_queries=1, window=80), "num_pairs"),
    (dict(num_pairs=3, num_queries=0, window=20), "num_queries"),
    (dict(num_pairs=5, num_queries=8, window=20), "more than `window`=20"),
])
def test_recall_task_errors(options, message):
  with pytest.raises(ValueError, match=message):
    recall.RecallTask(**options)


@pytest.mark.parametrize("options, message", [
    (dict(mechanisms=()), "at least one"),
    (dict(mechanisms=("scaled", "flash")), "flash"),
    (dict(mechanisms=("rope", "rope")), "must not repeat"),
    (dict(text_steps=0), "text_steps must be a positive integer"),
    (dict(warmup_steps=600), "warmup_steps=600"),
    (dict(width=30, num_heads=4), "num_heads=4 must divide width=30"),
    (dict(recall_pairs=20, recall_queries=30, seq_len=64), "raise --seq-len"),
    (dict(recall_pairs=21, recall_queries=5, seq_len=128), "at most 20"),
])
def test_compare_config_errors(options, message):
  with pytest.raises(UserInputError, match=message):
    CompareConfig(**options).validate()


def test_quick_preset_is_valid_and_smaller():
  quick, full = CompareConfig.quick(), CompareConfig()
  quick.validate()
  full.validate()
  assert quick.text_steps < full.text_steps
  assert quick.recall_steps < full.recall_steps
  assert CompareConfig.quick(seed=5).seed == 5


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  corpus = tmp_path_factory.mktemp("corpus")
  for index in range(6):
    text = "".join(f"value_{index} = {line} * {line}\n" for line in range(60))
    (corpus / f"part_{index}.py").write_text(text, encoding="utf-8")
  output = tmp_path_factory.mktemp("compare") / "out"
  stdout = io.StringIO()
  arguments = [
      "compare", "--quick", "--mechanisms", "scaled,basic,alibi",
      "--data", str(corpus), "--output", str(output), "--text-steps", "4",
      "--recall-steps", "6", "--warmup-steps", "1", "--eval-windows", "8",
      "--recall-pairs", "4", "--recall-queries", "3", "--seq-len", "24",
      "--width", "16", "--num-heads", "2", "--batch-size", "4",
      "--recall-eval-examples", "16", "--quiet",
  ]
  with contextlib.redirect_stdout(stdout):
    assert main(arguments) == 0
  return output, stdout.getvalue()


def test_compare_writes_table_json_and_plots(compared):
  output, printed = compared
  payload = json.loads((output / "results.json").read_text())
  assert [row["mechanism"] for row in payload["results"]] == [
      "scaled", "basic", "alibi"]
  assert payload["config"]["text_steps"] == 4
  assert payload["command"].startswith("attention-jax compare --quick")
  for row in payload["results"]:
    assert row["parameters"] > 0
    assert np.isfinite(row["validation_bits_per_char"])
    assert 0.0 <= row["recall_accuracy"] <= 1.0
    assert row["text"]["step_seconds"] > 0
    assert row["text"]["eval_curve"][-1]["step"] == 4
    assert row["recall"]["eval_curve"][-1]["step"] == 6
  # ALiBi learns no position table, so it has fewer parameters.
  by_name = {row["mechanism"]: row for row in payload["results"]}
  assert by_name["alibi"]["parameters"] == by_name["scaled"]["parameters"] - 24 * 16

  markdown = (output / "results.md").read_text()
  for name in ("scaled", "basic", "alibi"):
    assert f"| {name} |" in markdown
    assert f"| {name} |" in printed
  assert "recall accuracy" in markdown
  for plot in ("text_curves.png", "recall_curves.png"):
    assert (output / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert str(output) in printed


def test_compare_rejects_unknown_mechanism(capsys):
  with pytest.raises(SystemExit) as raised:
    main(["compare", "--mechanisms", "scaled,flash"])
  assert raised.value.code == 2
  assert "flash" in capsys.readouterr().err
