"""PNG figures of a mechanism comparison: one curve per mechanism on each task."""

from __future__ import annotations

from collections.abc import Sequence

from attention_jax.compare.runner import MechanismResult
from attention_jax.training.plots import new_figure

# Dashed lines for the relative-position mechanisms, solid for the rest.
_RELATIVE = ("shaw", "t5", "alibi", "rope")


def _style(index: int, mechanism: str) -> dict:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    return {
        "color": colors[index % len(colors)],
        "linestyle": "--" if mechanism in _RELATIVE else "-",
        "linewidth": 1.4,
        "label": mechanism,
    }


def plot_text_curves(path: str, results: Sequence[MechanismResult], *, baseline_bits_per_char: float) -> None:
    """Save train and validation loss curves (bits per character) of every mechanism, side by side."""
    figure = new_figure(figsize=(12, 4.8), layout="constrained")
    train_axes, validation_axes = figure.subplots(1, 2, sharey=True)
    for index, result in enumerate(results):
        style = _style(index, result.mechanism)
        chars_per_token = result.text.eval_curve[-1]["bits_per_token"] / result.validation_bits_per_char
        train_axes.plot(
            [point["step"] for point in result.text.train_curve],
            [point["bits"] / chars_per_token for point in result.text.train_curve],
            **style,
        )
        validation_axes.plot(
            [point["step"] for point in result.text.eval_curve],
            [point["bits_per_char"] for point in result.text.eval_curve],
            marker="o", markersize=3, **style,
        )
    for axes, title in ((train_axes, "training loss"), (validation_axes, "validation loss")):
        axes.axhline(baseline_bits_per_char, color="gray", linestyle=":", label="unigram baseline")
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    train_axes.set_ylabel("bits per character")
    validation_axes.legend(fontsize=8, ncols=2)
    figure.suptitle("Language modelling on the text corpus")
    figure.savefig(path, dpi=120)


def plot_recall_curves(path: str, results: Sequence[MechanismResult], *, chance: float) -> None:
    """Save the answer loss and held-out accuracy of every mechanism on associative recall."""
    figure = new_figure(figsize=(12, 4.8), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for index, result in enumerate(results):
        style = _style(index, result.mechanism)
        loss_axes.plot(
            [point["step"] for point in result.recall.train_curve],
            [point["bits"] for point in result.recall.train_curve],
            **style,
        )
        accuracy_axes.plot(
            [point["step"] for point in result.recall.eval_curve],
            [point["accuracy"] for point in result.recall.eval_curve],
            marker="o", markersize=3, **style,
        )
    loss_axes.set_title("training loss on the answers")
    loss_axes.set_ylabel("bits per answer")
    accuracy_axes.axhline(chance, color="gray", linestyle=":", label="chance")
    accuracy_axes.set_title("held-out accuracy")
    accuracy_axes.set_ylabel("fraction of answers right")
    accuracy_axes.set_ylim(0, 1.02)
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8, ncols=2)
    figure.suptitle("Multi-query associative recall")
    figure.savefig(path, dpi=120)
