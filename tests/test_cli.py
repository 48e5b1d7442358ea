"""Tests of the `attention-jax` command line: the train command's outputs, resumption and errors."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import pathlib
import subprocess
import sys

import pytest

from attention_jax.cli.main import main
from attention_jax.cli.train_command import with_flag_names

TINY_OPTIONS = [
    "--attention", "flax",
    "--width", "16",
    "--num-layers", "2",
    "--num-heads", "2",
    "--mlp-ratio", "2",
    "--seq-len", "24",
    "--batch-size", "4",
    "--warmup-steps", "1",
    "--learning-rate", "1e-2",
    "--eval-every", "2",
    "--eval-windows", "8",
    "--log-every", "1",
    "--checkpoint-every", "2",
    "--snippet-len", "12",
    "--sample-tokens", "6",
    "--validation-fraction", "0.3",
    "--quiet",
]


@pytest.fixture(autouse=True, scope="module")
def restore_library_logging():
    """Undo the CLI's logging setup so that later tests see the default `attention_jax` logger."""
    logger = logging.getLogger("attention_jax")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for index in range(12):
        lines = [f"def function_{index}_{line}(value):\n    return value + {line}\n" for line in range(30)]
        (folder / f"module_{index:02d}.py").write_text("".join(lines), encoding="utf-8")
    return folder


@dataclasses.dataclass
class TrainedRun:
    output: pathlib.Path
    stdout: str


@pytest.fixture(scope="module")
def trained_run(corpus_folder, tmp_path_factory) -> TrainedRun:
    """Train 4 steps once; the tests below read its outputs and what it printed."""
    output = tmp_path_factory.mktemp("run") / "out"
    argv = ["train", "--data", str(corpus_folder), "--output", str(output), "--steps", "4", *TINY_OPTIONS]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return TrainedRun(output=output, stdout=printed.getvalue())


def run_failing(argv, capsys) -> tuple[int, str]:
    """Run `main(argv)`, expect SystemExit, and return its status and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(stderr: str, expected: str) -> None:
    """Check that stderr ends with one error line containing `expected`; progress logs may precede it."""
    lines = stderr.strip().splitlines()
    error_lines = [line for line in lines if "error:" in line]
    assert "Traceback" not in stderr
    assert len(error_lines) == 1, stderr
    assert lines[-1] == error_lines[0]
    assert expected in lines[-1]


def test_train_writes_output_files(trained_run):
    output = trained_run.output
    for name in ("metrics.json", "loss.png", "attention_layer0.png", "attention_layer1.png", "samples.txt"):
        assert (output / name).is_file(), name
    checkpoints = output / "checkpoints"
    assert (checkpoints / "model_config.json").is_file()
    assert (checkpoints / "tokenizer.json").is_file()
    assert (checkpoints / "4").is_dir()
    samples = (output / "samples.txt").read_text(encoding="utf-8")
    assert "--- prompt ---" in samples
    assert "--- prompt and sampled continuation ---" in samples


def test_train_metrics_are_sane(trained_run):
    metrics = json.loads((trained_run.output / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 4
    assert metrics["steps_this_run"] == 4
    assert metrics["config"]["width"] == 16
    assert metrics["model"]["num_layers"] == 2
    assert metrics["tokenizer"] == {"kind": "bytes", "unit": "byte", "vocab_size": 256}
    assert metrics["wall_seconds"] > 0
    assert metrics["tokens_per_second"] > 0
    assert math.isfinite(metrics["final_train_loss"])
    assert 0 < metrics["validation_bits_per_token"] < 9
    assert metrics["validation_bits_per_char"] == pytest.approx(metrics["validation_bits_per_token"])
    assert 0 < metrics["baseline_bits_per_token"] < 8
    assert [entry["step"] for entry in metrics["history"]["train"]] == [1, 2, 3, 4]
    assert [entry["step"] for entry in metrics["history"]["validation"]] == [2, 4]


def test_train_prints_output_paths_last(trained_run):
    printed = trained_run.stdout.strip().splitlines()
    assert "bits per byte" in trained_run.stdout
    assert printed[-6] == f"Outputs in {os.path.abspath(trained_run.output)}:"
    assert printed[-5].split()[0] == "metrics.json"
    assert printed[-3].split()[0:3] == ["attention_layer0.png", "...", "attention_layer1.png"]
    assert printed[-1].split()[0] == "checkpoints" + os.sep


def test_train_resumes_at_latest_step(corpus_folder, tmp_path):
    output = tmp_path / "out"
    common = ["train", "--data", str(corpus_folder), "--output", str(output), *TINY_OPTIONS]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4", "--resume"]) == 0

    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 4
    assert metrics["steps_this_run"] == 2
    assert [entry["step"] for entry in metrics["history"]["train"]] == [1, 2, 3, 4]

    # A run whose checkpoint is already at the last step only evaluates and writes outputs.
    assert main([*common, "--steps", "4"]) == 0
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 4
    assert metrics["steps_this_run"] == 0
    assert metrics["tokens_per_second"] is None


def test_train_no_resume_starts_over(corpus_folder, tmp_path):
    output = tmp_path / "out"
    common = ["train", "--data", str(corpus_folder), "--output", str(output), "--steps", "4", *TINY_OPTIONS]
    assert main(common) == 0
    assert main([*common, "--no-resume", "--tokenizer", "chars"]) == 0

    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps_this_run"] == 4
    assert metrics["tokenizer"]["kind"] == "chars"
    assert sorted(os.listdir(output / "checkpoints")) == ["2", "4", "model_config.json", "tokenizer.json"]


def test_missing_data_path_fails_in_one_line(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]
    status, stderr = run_failing(argv, capsys)
    assert status == 1
    assert_one_line_error(stderr, "not found")


def test_empty_folder_fails_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blob.bin").write_bytes(b"\x00\x01\x02")
    argv = ["train", "--data", str(empty), "--output", str(tmp_path / "out")]
    status, stderr = run_failing(argv, capsys)
    assert status == 1
    assert_one_line_error(stderr, "no text found")


def test_too_little_text_fails_in_one_line(tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("short\n", encoding="utf-8")
    (small / "b.txt").write_text("text\n", encoding="utf-8")
    argv = ["train", "--data", str(small), "--output", str(tmp_path / "out")]
    status, stderr = run_failing(argv, capsys)
    assert status == 1
    assert_one_line_error(stderr, "fewer than one window")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--steps", "-5"], "--steps must be a positive integer, but got -5"),
        (["--num-heads", "5", "--width", "32"], "--num-heads 5 must divide --width 32"),
        (["--warmup-steps", "10", "--steps", "10"], "--warmup-steps 10 must be less than --steps 10"),
        (["--learning-rate", "0"], "--learning-rate must be positive"),
        (["--snippet-len", "300", "--seq-len", "256"], "--snippet-len must be between 2 and --seq-len 256"),
    ],
)
def test_invalid_option_fails_in_one_line(options, expected, tmp_path, capsys):
    status, stderr = run_failing(["train", "--output", str(tmp_path / "out"), *options], capsys)
    assert status == 1
    assert_one_line_error(stderr, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--tokenizer", "words"], "invalid choice: 'words'"),
        (["train", "--steps", "ten"], "invalid int value: 'ten'"),
        ([], "required: COMMAND"),
    ],
)
def test_rejected_argument_fails_in_one_line(argv, expected, capsys):
    status, stderr = run_failing(argv, capsys)
    assert status == 2
    assert_one_line_error(stderr, expected)


def test_resume_without_checkpoint_fails(corpus_folder, tmp_path, capsys):
    argv = ["train", "--data", str(corpus_folder), "--output", str(tmp_path / "out"), "--resume", *TINY_OPTIONS]
    status, stderr = run_failing(argv, capsys)
    assert status == 1
    assert_one_line_error(stderr, "no checkpoint found")


def test_module_entry_point_shows_help():
    completed = subprocess.run(
        [sys.executable, "-m", "attention_jax", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--data" in completed.stdout
    assert "--attention" in completed.stdout


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("batch_size=7 must be divisible by data_parallel=2", "--batch-size 7 must be divisible by --data-parallel 2"),
        ("the checkpoint is at step 40, beyond steps=30", "the checkpoint is at step 40, beyond --steps 30"),
        ("seq_len must be at least 2", "--seq-len must be at least 2"),
        ("data path not found: runs/seq_len/x.txt", "data path not found: runs/seq_len/x.txt"),
        ("data path not found: seq_len/data_parallel=2", "data path not found: seq_len/data_parallel=2"),
    ],
)
def test_train_errors_name_flags(message, expected):
    assert with_flag_names(message) == expected
