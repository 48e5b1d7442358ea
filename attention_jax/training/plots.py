"""PNG figures of a training run: loss curves and attention heat maps.

Figures are drawn on `matplotlib.figure.Figure` objects, without pyplot, so
that no global backend is selected and nothing opens a window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Visible stand-ins for whitespace in tick labels.
_VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
# Tick labels per axis are drawn only for snippets up to this many tokens.
MAX_LABELED_TOKENS = 64


def new_figure(**kwargs):
    """Return a `matplotlib.figure.Figure` built with `kwargs`, with a clear error when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib; install it with `pip install 'attention_jax[cli]'`"
        ) from error
    return Figure(**kwargs)


def visible_token_label(text: str) -> str:
    """Return `text` with spaces, tabs and line breaks replaced by visible symbols."""
    return "".join(_VISIBLE_WHITESPACE.get(char, char) for char in text)


def plot_losses(
    path: str,
    *,
    train: Sequence[tuple[int, float]],
    validation: Sequence[tuple[int, float]],
    baseline: float,
    unit: str,
) -> None:
    """Save train and validation loss curves, in bits per `unit`, with the unigram baseline as a line."""
    figure = new_figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if train:
        steps, values = zip(*train)
        axes.plot(steps, values, label="train", color="tab:blue", linewidth=1.2)
    if validation:
        steps, values = zip(*validation)
        axes.plot(steps, values, label="validation", color="tab:orange", marker="o", linewidth=1.5)
    axes.axhline(baseline, color="gray", linestyle="--", label=f"unigram baseline ({baseline:.2f})")
    axes.set_xlabel("step")
    axes.set_ylabel(f"loss (bits per {unit})")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120)


def plot_attention_layer(
    path: str,
    weights: np.ndarray,
    *,
    token_labels: Sequence[str],
    layer: int,
) -> None:
    """Save a grid with one heat map per head of one layer's attention weights [N, T, T].

    Rows are queries and columns are keys. Axes carry the token labels when
    the snippet has at most `MAX_LABELED_TOKENS` tokens.
    """
    from matplotlib.colors import PowerNorm

    num_heads, length, _ = weights.shape
    columns = min(num_heads, 3 if num_heads in (5, 6, 9) else 4)
    rows = math.ceil(num_heads / columns)
    figure = new_figure(figsize=(4.2 * columns, 4.2 * rows + 0.4), layout="constrained")
    figure.suptitle(f"Attention weights of layer {layer} (rows: queries, columns: keys)")
    labels = [visible_token_label(label) for label in token_labels]
    show_labels = length <= MAX_LABELED_TOKENS
    # About 80% of a 4.2-inch panel per axis, in points per label, capped for short snippets.
    label_size = min(9.0, 0.8 * 4.2 * 72 / length)
    label_rotation = 90 if any(len(label) > 1 for label in labels) else 0
    # A square-root color scale keeps the small weights of long rows visible.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)

    for head in range(num_heads):
        axes = figure.add_subplot(rows, columns, head + 1)
        image = axes.imshow(weights[head], cmap="viridis", norm=norm, interpolation="nearest")
        axes.set_title(f"head {head}", fontsize=10)
        if show_labels:
            axes.set_xticks(range(length), labels, fontsize=label_size, rotation=label_rotation)
            axes.set_yticks(range(length), labels, fontsize=label_size)
            axes.tick_params(length=0, pad=1)
        else:
            axes.set_xlabel("key position")
            axes.set_ylabel("query position")
    figure.colorbar(image, ax=figure.axes, shrink=0.6, label="weight (square-root scale)")
    figure.savefig(path, dpi=150)
