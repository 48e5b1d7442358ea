"""The `attention-jax compare` command: train the same model with each attention mechanism."""

from __future__ import annotations

import argparse
import logging
import os
import shlex

from attention_jax.cli.logs import configure_logging
from attention_jax.compare.config import CompareConfig
from attention_jax.training.mechanisms import MECHANISM_CHOICES

_FULL = CompareConfig()
_QUICK = CompareConfig.quick()

DESCRIPTION = f"""\
Measure which attention mechanism works best on your data. Trains
the same small transformer with each mechanism ({', '.join(MECHANISM_CHOICES)})
on the train command's text corpus and on a synthetic associative-recall
task, with the same seeds, batches and steps. Writes a table (validation
bits per character, recall accuracy, step time, step memory, parameters)
as Markdown and JSON, and plots of the curves.
"""

# (option, type, help); the defaults come from CompareConfig and its quick preset.
_NUMERIC_OPTIONS = (
    ("text_steps", int, "training steps on the text task"),
    ("recall_steps", int, "training steps on the recall task"),
    ("recall_pairs", int, "key/value pairs per recall example (at most 20)"),
    ("recall_queries", int, "queries per recall example, keys drawn with replacement"),
    ("recall_eval_examples", int, "held-out recall examples for the accuracy"),
    ("eval_windows", int, "held-out text windows for the validation loss"),
    ("max_data_mb", float, "stop reading the corpus after this many MiB"),
    ("width", int, "model width"),
    ("num_layers", int, "transformer blocks"),
    ("num_heads", int, "attention heads per block; must divide --width"),
    ("seq_len", int, "tokens per training window"),
    ("batch_size", int, "windows per step"),
    ("learning_rate", float, "peak AdamW learning rate"),
    ("warmup_steps", int, "steps of linear learning-rate warm-up"),
    ("seed", int, "seed of the initialization and the batches"),
)


def _mechanism_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in MECHANISM_CHOICES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list from {','.join(MECHANISM_CHOICES)}, got {text!r}"
        )
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="train the same model with each attention mechanism and tabulate the results",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    parser.add_argument("--quick", action="store_true",
                        help="a smaller model and fewer steps: a few minutes on 2 CPU cores")
    parser.add_argument("--mechanisms", type=_mechanism_list, default=None,
                        help=f"comma-separated mechanisms to compare (default: all, {','.join(MECHANISM_CHOICES)})")
    parser.add_argument("--data", default=None,
                        help="text file or folder of text files (default: the Python standard library's .py files)")
    parser.add_argument("--output", default=_FULL.output, help=f"folder for the table and plots (default: {_FULL.output})")
    for name, kind, text in _NUMERIC_OPTIONS:
        full, quick = getattr(_FULL, name), getattr(_QUICK, name)
        default = f"default: {full}" if full == quick else f"default: {full}, with --quick {quick}"
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{text} ({default})")
    parser.add_argument("--quiet", action="store_true", help="show no progress bar and only warnings")
    return parser


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """Return the configuration that the parsed options describe."""
    options = {name: getattr(args, name) for name, _, _ in _NUMERIC_OPTIONS if getattr(args, name) is not None}
    options["output"] = args.output
    options["data"] = args.data
    if args.mechanisms is not None:
        options["mechanisms"] = args.mechanisms
    return CompareConfig.quick(**options) if args.quick else CompareConfig(**options)


def run(args: argparse.Namespace) -> int:
    """Run the comparison, then print the table and where the files are."""
    from attention_jax.compare.report import run_compare

    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    config = config_from_args(args)
    command = " ".join(shlex.quote(arg) for arg in ["attention-jax", *args.argv])
    result = run_compare(config, progress=not args.quiet, command=command)
    print()
    print(result.table)
    print()
    print(f"Wall time {result.wall_seconds / 60:.1f} minutes. Outputs in {os.path.abspath(config.output)}:")
    for path in result.files.values():
        print(f"  {os.path.basename(path)}")
    return 0
