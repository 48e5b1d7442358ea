"""Tests of the attention benchmark's configurations: FLOP counts, masks and inputs.

The benchmark scripts live in `benchmarks/`, outside the package, so this
module puts that folder on `sys.path` as running a script there would.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import attention_speed  # noqa: E402
from attention_speed_lib.configs import FORWARD, Config, make_inputs  # noqa: E402
from attention_speed_lib.contenders import mask_arguments  # noqa: E402


def _config(length, window=None, is_causal=True, kv_heads=None):
  return Config(length, is_causal, FORWARD, 1, 4, 8, "float32",
                window=window, kv_heads=kv_heads)


@pytest.mark.parametrize("length, window",
                         [(1, 0), (5, 0), (5, 2), (9, 3), (8, 7), (8, 20)])
def test_window_counts_visible_pairs(length, window):
  rows = np.arange(length)[:, None]
  keys = np.arange(length)[None, :]
  visible = (keys <= rows) & (keys >= rows - window)

  fraction = _config(length, window).visible_fraction()

  assert fraction == visible.sum() / length**2


def test_causal_and_full_keep_their_fractions():
  assert _config(64).visible_fraction() == 0.5
  assert _config(64, is_causal=False).visible_fraction() == 1.0


def test_window_config_must_be_causal():
  with pytest.raises(ValueError, match="must be causal"):
    _config(16, window=4, is_causal=False)


@pytest.mark.parametrize("window, expected", [
    (None, {"is_causal": True}),
    (7, {"is_causal": True, "local_window_size": (7, 0)}),
])
def test_mask_arguments(window, expected):
  assert mask_arguments(_config(16, window)) == expected


def test_mask_labels():
  assert _config(16, is_causal=False).mask == "non-causal"
  assert _config(16).mask == "causal"
  assert _config(16, window=3).mask == "window 3"


def test_inputs_give_keys_their_own_heads():
  inputs = make_inputs(batch=2, length=6, heads=4, head_dim=8, seed=0,
                       kv_heads=2)

  assert inputs.query.shape == (2, 6, 4, 8)
  assert inputs.key.shape == (2, 6, 2, 8)
  assert inputs.value.shape == (2, 6, 2, 8)
  assert inputs.cotangent.shape == (2, 6, 4, 8)


@pytest.mark.parametrize("argv, expected",
                         [([], "benchmarks/results"),
                          (["--quick"], "benchmarks/results/quick"),
                          (["--quick", "--output-dir", "out"], "out")])
def test_quick_runs_keep_committed_results(argv, expected):
  assert attention_speed.parse_args(argv).output_dir == expected
