"""Tests of the attention benchmark's speed targets on made-up rows."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from attention_speed_lib.configs import CHUNKED, FORWARD, NON_CAUSAL, TOKAMAX, TORCH  # noqa: E402
from attention_speed_lib.targets import evaluate_targets, format_target  # noqa: E402


def _row(contender, ratio, fraction, status="ok"):
  return {"pass": FORWARD, "mask": NON_CAUSAL, "length": 4096,
          "contender": contender, "status": status, "seconds": [1.0],
          "ratio_to_chunked": ratio, "fraction_of_matmul": fraction}


def _result(results, peer_name):
  return next(r for r in results
              if r["target"] == f"forward non-causal 4096: chunked vs {peer_name}")


def test_peer_target_needed_share():
  rows = [_row(CHUNKED, 1.0, 0.70), _row(TORCH, 0.8, 0.84),
          _row(TOKAMAX, 2.1, 0.33)]

  results = evaluate_targets(rows)

  torch = _result(results, "torch sdpa")
  assert torch["met"] is False
  assert torch["needed_fraction_of_matmul"] == pytest.approx(1.26)
  assert format_target(torch) == (
      "forward non-causal 4096: chunked vs torch sdpa: 0.80x "
      "(target >= 1.50x): not met; needs 126% of the matmul rate")
  tokamax = _result(results, "tokamax xla_chunked")
  assert tokamax["met"] is True
  assert tokamax["needed_fraction_of_matmul"] == pytest.approx(0.66)


def test_missing_peer_needs_nothing():
  results = evaluate_targets([_row(CHUNKED, 1.0, 0.70),
                              _row(TORCH, 0.8, 0.84, status="failed")])

  torch = _result(results, "torch sdpa")
  assert torch["measured"] is None
  assert torch["needed_fraction_of_matmul"] is None
  assert format_target(torch) == (
      "forward non-causal 4096: chunked vs torch sdpa: "
      "not measured in this run (target >= 1.50x)")
  share = next(r for r in results if r["unit"] == "%")
  assert share["needed_fraction_of_matmul"] is None
  assert share["measured"] == pytest.approx(0.70)
