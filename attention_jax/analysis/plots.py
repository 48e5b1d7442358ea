"""Matplotlib figures of attention weights and diagnostics.

Matplotlib is optional and imported on first use; install the `plot` extra
(`pip install "attention_jax[plot]"`). Figures are built with
`matplotlib.figure.Figure` and the Agg canvas, without pyplot, so they work
without a display and are not kept alive by pyplot's global state. Every
function returns the Figure and writes a PNG when `path` is given.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from jax.typing import ArrayLike


def _figure(width: float, height: float):
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError as error:
    raise ImportError(
        'plotting needs matplotlib; install the `plot` extra: pip install "attention_jax[plot]"'
    ) from error
  figure = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save(figure, path: str | pathlib.Path | None, dpi: int = 110):
  if path is not None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
  return figure


def _label_axes(axes, query_tokens, key_tokens, fontsize: float) -> None:
  if key_tokens is not None:
    axes.set_xticks(range(len(key_tokens)), key_tokens, rotation=90, fontsize=fontsize)
  if query_tokens is not None:
    axes.set_yticks(range(len(query_tokens)), query_tokens, fontsize=fontsize)


def plot_attention_head(
    weights: ArrayLike,
    query_tokens: Sequence[str] | None = None,
    key_tokens: Sequence[str] | None = None,
    *,
    title: str | None = None,
    path: str | pathlib.Path | None = None,
):
  """Draw one head's weights `[T, S]` as a heat map (rows are queries) with a colorbar."""
  weights = np.asarray(weights, dtype=np.float32)
  if weights.ndim != 2:
    raise ValueError(f"`weights` should have shape [T, S], but got {weights.shape}")
  if key_tokens is None and query_tokens is not None and weights.shape[0] == weights.shape[1]:
    key_tokens = query_tokens
  size = 2.5 + 0.28 * max(weights.shape)
  figure = _figure(size + 1.0, size)
  axes = figure.add_subplot()
  image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
  _label_axes(axes, query_tokens, key_tokens, fontsize=8)
  axes.set_xlabel("key")
  axes.set_ylabel("query")
  if title:
    axes.set_title(title)
  figure.colorbar(image, ax=axes, label="attention weight")
  return _save(figure, path)


def plot_attention_grid(
    weights: ArrayLike,
    tokens: Sequence[str] | None = None,
    *,
    title: str | None = None,
    first_layer: int = 0,
    path: str | pathlib.Path | None = None,
):
  """Draw every head of every layer: `weights` `[L, N, T, S]` (or `[N, T, S]` for one layer).

  One subplot per head, layers as rows and heads as columns, each scaled
  from 0 to 1. A single layer with more than 6 heads wraps its heads over
  rows of 4, so the figure stays readable. Rows are labelled from
  `first_layer` up. `tokens` label the first column's rows and the last
  row's columns when T == S.
  """
  weights = np.asarray(weights, dtype=np.float32)
  if weights.ndim == 3:
    weights = weights[None]
  if weights.ndim != 4:
    raise ValueError(f"`weights` should have shape [L, N, T, S] or [N, T, S], but got {weights.shape}")
  num_layers, num_heads, num_queries, num_keys = weights.shape
  columns = 4 if num_layers == 1 and num_heads > 6 else num_heads
  rows_per_layer = -(-num_heads // columns)
  num_rows = num_layers * rows_per_layer
  cell = max(2.0, 0.2 * max(num_queries, num_keys))
  figure = _figure(1.0 + cell * columns, 0.8 + cell * num_rows)
  grid = figure.subplots(num_rows, columns, squeeze=False)
  fontsize = max(4.0, min(7.0, 60.0 / max(num_queries, 1)))
  for axes in grid.ravel():
    axes.set_axis_off()
  for layer in range(num_layers):
    for head in range(num_heads):
      row = layer * rows_per_layer + head // columns
      column = head % columns
      axes = grid[row, column]
      axes.set_axis_on()
      axes.imshow(weights[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
      axes.set_xticks([])
      axes.set_yticks([])
      if layer == 0 or rows_per_layer > 1:
        axes.set_title(f"head {head}", fontsize=8)
      if column == 0:
        axes.set_ylabel(f"layer {first_layer + layer}", fontsize=8)
        if tokens is not None and len(tokens) == num_queries:
          axes.set_yticks(range(num_queries), tokens, fontsize=fontsize)
      if row == num_rows - 1 and tokens is not None and len(tokens) == num_keys:
        axes.set_xticks(range(num_keys), tokens, rotation=90, fontsize=fontsize)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def plot_head_entropy(
    entropy: ArrayLike,
    *,
    title: str = "mean normalized attention entropy",
    path: str | pathlib.Path | None = None,
):
  """Draw per-head values `[L, N]` (layers x heads) as an annotated heat map.

  For a single layer give `[N]`; it is drawn as a bar chart.
  """
  entropy = np.asarray(entropy, dtype=np.float32)
  if entropy.ndim == 1:
    figure = _figure(1.5 + 0.45 * entropy.shape[0], 3.5)
    axes = figure.add_subplot()
    axes.bar(range(entropy.shape[0]), entropy)
    axes.set_xlabel("head")
    axes.set_ylabel("entropy")
    axes.set_title(title)
    return _save(figure, path)
  if entropy.ndim != 2:
    raise ValueError(f"`entropy` should have shape [L, N] or [N], but got {entropy.shape}")
  num_layers, num_heads = entropy.shape
  figure = _figure(2.0 + 0.6 * num_heads, 1.5 + 0.5 * num_layers)
  axes = figure.add_subplot()
  image = axes.imshow(entropy, cmap="magma", aspect="auto")
  for layer in range(num_layers):
    for head in range(num_heads):
      value = entropy[layer, head]
      color = "white" if value < 0.5 * (entropy.min() + entropy.max()) else "black"
      axes.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
  axes.set_xticks(range(num_heads))
  axes.set_yticks(range(num_layers))
  axes.set_xlabel("head")
  axes.set_ylabel("layer")
  axes.set_title(title)
  figure.colorbar(image, ax=axes)
  return _save(figure, path)


def plot_diagnostics_history(
    steps: Sequence[int],
    metrics: Mapping[str, ArrayLike],
    *,
    path: str | pathlib.Path | None = None,
):
  """Draw diagnostics over training steps, one subplot per metric.

  Args:
    steps: `[P]` step numbers.
    metrics: name to `[P]` values, or `[P, C]` for C curves (for example
      one per layer), each drawn as a line.
  """
  if not metrics:
    raise ValueError("`metrics` is empty; give at least one metric to plot")
  steps = np.asarray(steps)
  columns = min(2, len(metrics))
  rows = math.ceil(len(metrics) / columns)
  figure = _figure(5.0 * columns, 3.2 * rows)
  grid = figure.subplots(rows, columns, squeeze=False)
  for axes, (name, values) in zip(grid.reshape(-1), metrics.items()):
    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != steps.shape[0]:
      raise ValueError(
          f"metric {name!r} has {values.shape[0]} values but there are {steps.shape[0]} steps")
    if values.ndim == 1:
      axes.plot(steps, values)
    else:
      for curve in range(values.shape[1]):
        axes.plot(steps, values[:, curve], label=f"{curve}")
      axes.legend(fontsize=6, ncol=2)
    axes.set_title(name)
    axes.set_xlabel("step")
  for axes in grid.reshape(-1)[len(metrics):]:
    axes.remove()
  return _save(figure, path)


def plot_pruning_curve(
    pruned_counts: Sequence[int],
    curves: Mapping[str, ArrayLike],
    *,
    total_heads: int | None = None,
    ylabel: str = "cosine similarity to the unpruned model",
    path: str | pathlib.Path | None = None,
):
  """Draw a quality measure against the number of pruned heads, one line per strategy."""
  figure = _figure(6.0, 4.0)
  axes = figure.add_subplot()
  for name, values in curves.items():
    axes.plot(pruned_counts, np.asarray(values, dtype=np.float32), marker="o", label=name)
  xlabel = "heads pruned" if total_heads is None else f"heads pruned (of {total_heads})"
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.grid(alpha=0.3)
  axes.legend()
  return _save(figure, path)
