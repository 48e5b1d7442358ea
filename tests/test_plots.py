"""Plots write PNG files and lay out the expected number of axes."""

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="plots need matplotlib (the `plot` extra)")

from attention_jax.analysis import plots

RNG = np.random.default_rng(0)


def _weights(*shape):
  logits = RNG.normal(size=shape)
  return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def test_head_heatmap_writes_png(tmp_path):
  path = tmp_path / "head.png"
  figure = plots.plot_attention_head(_weights(4, 4), ["a", "b", "c", "d"], title="layer 0 head 1", path=path)
  assert path.stat().st_size > 0
  assert len(figure.axes) == 2  # the heat map and its colorbar
  assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["a", "b", "c", "d"]


def test_grid_has_one_axes_per_head(tmp_path):
  path = tmp_path / "grid.png"
  figure = plots.plot_attention_grid(_weights(2, 3, 5, 5), ["w"] * 5, path=path)
  assert path.stat().st_size > 0
  assert len(figure.axes) == 2 * 3


def test_entropy_heatmap_and_bars(tmp_path):
  heatmap = plots.plot_head_entropy(RNG.random((2, 3)), path=tmp_path / "entropy.png")
  bars = plots.plot_head_entropy(RNG.random(3), path=tmp_path / "bars.png")
  assert (tmp_path / "entropy.png").stat().st_size > 0
  assert (tmp_path / "bars.png").stat().st_size > 0
  assert len(heatmap.axes) == 2
  assert len(bars.axes) == 1
  assert len(bars.axes[0].patches) == 3


def test_history_has_one_axes_per_metric(tmp_path):
  steps = np.arange(0, 50, 10)
  metrics = {"entropy": RNG.random(5), "gradient norm per layer": RNG.random((5, 2)), "loss": RNG.random(5)}
  figure = plots.plot_diagnostics_history(steps, metrics, path=tmp_path / "history.png")
  assert (tmp_path / "history.png").stat().st_size > 0
  assert len(figure.axes) == 3
  with pytest.raises(ValueError, match="'loss' has 4 values"):
    plots.plot_diagnostics_history(steps, {"loss": RNG.random(4)})


def test_pruning_curve_lines(tmp_path):
  figure = plots.plot_pruning_curve([0, 2, 4], {"importance": [1, 0.9, 0.5], "random": [1, 0.7, 0.4]},
                                    total_heads=4, path=tmp_path / "curve.png")
  assert (tmp_path / "curve.png").stat().st_size > 0
  assert len(figure.axes[0].get_lines()) == 2
