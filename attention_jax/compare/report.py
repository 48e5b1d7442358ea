"""Run a mechanism comparison and write its table (Markdown and JSON) and plots."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import jax

from attention_jax.compare import plots
from attention_jax.compare import runner
from attention_jax.compare.config import CompareConfig
from attention_jax.compare.recall import RecallTask

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
TEXT_PLOT = "text_curves.png"
RECALL_PLOT = "recall_curves.png"


@dataclasses.dataclass
class CompareResult:
    """The per-mechanism results and the paths of the files written."""

    results: list[runner.MechanismResult]
    # The Markdown table alone, and the whole Markdown page around it.
    table: str
    markdown: str
    files: dict[str, str]
    wall_seconds: float


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def _best(values: Sequence[float], *, lowest: bool) -> float:
    return min(values) if lowest else max(values)


def markdown_table(
    results: Sequence[runner.MechanismResult], *, baseline_bits_per_char: float, chance: float
) -> str:
    """Return the comparison table in Markdown, the best value of each quality column in bold."""
    best_bits = _best([result.validation_bits_per_char for result in results], lowest=True)
    best_recall = _best([result.recall_accuracy for result in results], lowest=False)

    def mark(text: str, is_best: bool) -> str:
        return f"**{text}**" if is_best and len(results) > 1 else text

    lines = [
        "| mechanism | parameters | validation bits/char | recall accuracy | steps to 90% recall "
        "| text step (ms) | recall step (ms) | step memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        bits, recall = result.validation_bits_per_char, result.recall_accuracy
        steps_to_90 = result.recall_steps_to(0.9)
        lines.append(
            f"| {result.mechanism} | {result.parameters:,} "
            f"| {mark(f'{bits:.3f}', bits == best_bits)} "
            f"| {mark(f'{recall:.3f}', recall == best_recall)} "
            f"| {'not reached' if steps_to_90 is None else steps_to_90} "
            f"| {1000 * result.text.step_seconds:.1f} | {1000 * result.recall.step_seconds:.1f} "
            f"| {result.text.step_memory_bytes / 2**20:.1f} |"
        )
    lines.append("")
    lines.append(
        f"Unigram baseline {baseline_bits_per_char:.3f} bits per character; recall by chance {chance:.3f}."
    )
    return "\n".join(lines)


def _markdown_page(
    config: CompareConfig,
    results: Sequence[runner.MechanismResult],
    text: runner.TextData,
    table: str,
    *,
    command: str,
    machine: dict[str, Any],
    wall_seconds: float,
) -> str:
    settings = (
        f"{config.num_layers} layers, width {config.width}, {config.num_heads} heads, sequence {config.seq_len}, "
        f"batch {config.batch_size}, AdamW peak learning rate {config.learning_rate}, seed {config.seed}"
    )
    descriptions = "\n".join(f"- `{result.mechanism}`: {result.description}" for result in results)
    return f"""# Attention mechanisms compared

Produced by `{command}` in {wall_seconds / 60:.1f} minutes on {machine['processor']} \
({machine['cpu_count']} cores, {machine['platform']}, JAX {machine['jax']} on {machine['backend']}).

{table}

- Text: {config.text_steps} steps on the first {config.max_data_mb:g} MiB of {text.source}, read as \
UTF-8 bytes. Bits per character are bits per byte times bytes per character of the held-out text; the \
validation loss is on {config.eval_windows} held-out windows after the last step, and the unigram \
baseline depends on how much of the corpus is read.
- Recall: {config.recall_steps} steps on {config.recall_pairs} key/value pairs followed by \
{config.recall_queries} queries; accuracy on {config.recall_eval_examples} held-out examples, evaluated \
{runner.EVALUATIONS_PER_RUN} times during training (the first of those steps at 90% or more is \
"steps to 90% recall").
- Every model: {settings}. Same initialization seed, batches and steps for every mechanism.
- Step times are medians of the training steps of one run, compilation excluded; step memory is what XLA \
plans for one compiled text training step (arguments plus temporaries).

Mechanisms:

{descriptions}

Curves: `{TEXT_PLOT}` (text) and `{RECALL_PLOT}` (recall).
"""


def run_compare(
    config: CompareConfig, *, progress: bool = False, command: str = "attention-jax compare"
) -> CompareResult:
    """Train every mechanism of `config` on both tasks and write the table and plots to `config.output`.

    Writes `results.json`, `results.md`, `text_curves.png` and
    `recall_curves.png`. `command` is quoted in the Markdown page as the
    command that produced it. Raises UserInputError for invalid options.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    config.validate()
    os.makedirs(config.output, exist_ok=True)
    text = runner.load_text(config)
    chance = RecallTask.unpadded(config.recall_pairs, config.recall_queries).chance_accuracy

    total_steps = len(config.mechanisms) * (config.text_steps + config.recall_steps)
    results = []
    with tqdm(total=total_steps, desc="compare", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for mechanism in config.mechanisms:
            bar.set_postfix_str(mechanism)
            result = runner.run_mechanism(config, mechanism, text, progress=lambda: bar.update(1))
            logger.info(
                "%s: %.3f bits per character, recall accuracy %.3f, %d parameters",
                mechanism, result.validation_bits_per_char, result.recall_accuracy, result.parameters,
            )
            results.append(result)

    files = {name: os.path.join(config.output, name) for name in (RESULTS_JSON, RESULTS_MARKDOWN, TEXT_PLOT, RECALL_PLOT)}
    plots.plot_text_curves(files[TEXT_PLOT], results, baseline_bits_per_char=text.baseline_bits_per_char)
    plots.plot_recall_curves(files[RECALL_PLOT], results, chance=chance)
    wall_seconds = time.perf_counter() - started
    machine = machine_description()
    table = markdown_table(results, baseline_bits_per_char=text.baseline_bits_per_char, chance=chance)
    markdown = _markdown_page(
        config, results, text, table, command=command, machine=machine, wall_seconds=wall_seconds
    )
    with open(files[RESULTS_MARKDOWN], "w", encoding="utf-8") as file:
        file.write(markdown)
    payload = {
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
        "machine": machine,
        "config": config.to_dict(),
        "text": {
            "source": text.source,
            "chars_per_token": text.chars_per_token,
            "baseline_bits_per_char": text.baseline_bits_per_char,
        },
        "recall_chance_accuracy": chance,
        "results": [result.to_dict() for result in results],
    }
    with open(files[RESULTS_JSON], "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=2)
        file.write("\n")
    return CompareResult(results=results, table=table, markdown=markdown, files=files, wall_seconds=wall_seconds)
