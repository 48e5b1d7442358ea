"""The `attention-jax train` command: train a small transformer language model on text."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re

from attention_jax.cli.help_format import DefaultsHelpFormatter
from attention_jax.cli.logs import configure_logging
from attention_jax.training.config import DEFAULT_SNIPPET_LEN, TrainConfig
from attention_jax.training.errors import UserInputError
from attention_jax.training.mechanisms import MECHANISM_CHOICES
from attention_jax.training.model import ATTENTION_CHOICES
from attention_jax.training.run import train
from attention_jax.training.tokenizers import TOKENIZER_CHOICES

_DEFAULTS = TrainConfig()

DESCRIPTION = """\
Train a small causal transformer language model on text and write metrics,
plots, samples and checkpoints to an output folder. The default corpus is
the Python standard library's own source code; the loss is reported in bits
per token next to a unigram baseline. Running again with the same output
folder resumes from its latest checkpoint.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a small transformer language model on text",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.set_defaults(run=run)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="text file, or folder searched recursively for UTF-8 text files "
        "(default: the .py files of the Python standard library)",
    )
    data.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default=_DEFAULTS.tokenizer,
                      help="bytes: UTF-8 bytes (vocabulary 256); chars: characters of the training split")
    data.add_argument("--validation-fraction", type=float, default=_DEFAULTS.validation_fraction,
                      help="fraction of files held out for validation")
    data.add_argument("--max-data-mb", type=float, default=_DEFAULTS.max_data_mb,
                      help="stop reading files after this many MiB of text")

    model = parser.add_argument_group("model")
    model.add_argument("--attention", choices=ATTENTION_CHOICES, default=_DEFAULTS.attention,
                       help="multi-head attention module: attention_jax.nn or flax.nnx")
    model.add_argument("--mechanism", choices=MECHANISM_CHOICES, default=_DEFAULTS.mechanism,
                       help="attention mechanism of every block (see `attention-jax compare`); "
                       "shaw, t5, alibi and rope replace the learned absolute positions")
    model.add_argument("--num-kv-heads", type=int, default=None,
                       help="key/value heads of --mechanism gqa; must divide --num-heads "
                       "(default: half the heads)")
    model.add_argument("--width", type=int, default=_DEFAULTS.width, help="model width (embedding size)")
    model.add_argument("--num-layers", type=int, default=_DEFAULTS.num_layers, help="number of transformer blocks")
    model.add_argument("--num-heads", type=int, default=_DEFAULTS.num_heads,
                       help="attention heads per block; must divide --width")
    model.add_argument("--mlp-ratio", type=int, default=_DEFAULTS.mlp_ratio, help="MLP hidden size as a multiple of --width")
    model.add_argument("--dropout-rate", type=float, default=_DEFAULTS.dropout_rate,
                       help="dropout rate on embeddings and residual branches")
    model.add_argument("--seq-len", type=int, default=_DEFAULTS.seq_len,
                       help="tokens per training window, and the model's maximum length")

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="windows per step")
    optimization.add_argument("--steps", type=int, default=_DEFAULTS.steps, help="total optimizer steps")
    optimization.add_argument("--learning-rate", type=float, default=_DEFAULTS.learning_rate,
                              help="peak AdamW learning rate, reached after the warm-up")
    optimization.add_argument("--min-learning-rate", type=float, default=_DEFAULTS.min_learning_rate,
                              help="learning rate at the end of the cosine decay")
    optimization.add_argument("--warmup-steps", type=int, default=_DEFAULTS.warmup_steps,
                              help="steps of linear learning-rate warm-up from 0 "
                              "(default: 50, or --steps / 8 for runs shorter than 400 steps)")
    optimization.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay,
                              help="AdamW weight decay of kernels and embeddings")
    optimization.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip,
                              help="maximum global norm of the gradients")
    optimization.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                              help="seed of the initialization, batches, dropout and sampling")

    devices = parser.add_argument_group("devices")
    devices.add_argument("--data-parallel", type=int, default=_DEFAULTS.data_parallel,
                         help="devices that split each batch; must divide --batch-size")
    devices.add_argument("--sequence-parallel", type=int, default=_DEFAULTS.sequence_parallel,
                         help="devices that split each window with ring attention (mechanisms dot, scaled, gqa); "
                         "2 x this must divide --seq-len. On a CPU, set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=N to get N devices")

    outputs = parser.add_argument_group("evaluation and outputs")
    outputs.add_argument("--output", default=_DEFAULTS.output, help="folder for metrics, plots, samples and checkpoints")
    outputs.add_argument("--eval-every", type=int, default=_DEFAULTS.eval_every, help="steps between validation runs")
    outputs.add_argument("--eval-windows", type=int, default=_DEFAULTS.eval_windows,
                         help="validation windows of --seq-len tokens per validation run")
    outputs.add_argument("--log-every", type=int, default=_DEFAULTS.log_every,
                         help="steps between train-loss records")
    outputs.add_argument("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every,
                         help="steps between checkpoints")
    resume = outputs.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                        help="require a checkpoint in the output folder and continue from it "
                        "(default: continue if there is one)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                        help="start from step 0, deleting the output folder's checkpoints")
    outputs.add_argument("--snippet-len", type=int, default=_DEFAULTS.snippet_len,
                         help="tokens of the validation snippet used for attention heat maps and as sampling prompt "
                         f"(default: {DEFAULT_SNIPPET_LEN}, or --seq-len if shorter)")
    outputs.add_argument("--sample-tokens", type=int, default=_DEFAULTS.sample_tokens,
                         help="tokens to sample after the prompt")
    outputs.add_argument("--temperature", type=float, default=_DEFAULTS.temperature, help="sampling temperature")
    outputs.add_argument("--quiet", action="store_true", help="show no progress bar and only warnings")
    return parser


_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))


def with_flag_names(message: str) -> str:
    """Return a TrainConfig error message with its field names written as this command's flags.

    `name=value` becomes `--name value`, and so does a name that starts the
    message before "must". Names with an underscore become flags wherever
    they stand. Other one-word names (data, output, steps) stay, because
    they are also plain words.
    """
    # Names inside a path (after or before a slash) stay as they are.
    before, after = r"(?<![\w/\\.-])", r"(?![\w/\\])"
    for name in _FIELDS:
        flag = "--" + name.replace("_", "-")
        message = re.sub(rf"{before}{name}=", f"{flag} ", message)
        message = re.sub(rf"^{name}(?= must\b)", flag, message)
        if "_" in name:
            message = re.sub(rf"{before}{name}{after}", flag, message)
    return message


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def run(args: argparse.Namespace) -> int:
    """Train with the parsed options, then print the sample, the headline numbers and the output paths."""
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    options = {name: value for name, value in vars(args).items() if name not in ("command", "run", "quiet", "argv")}
    config = TrainConfig(**options)
    try:
        result = train(config, progress=not args.quiet)
    except UserInputError as error:
        raise UserInputError(with_flag_names(str(error))) from error

    unit = result.unit
    print()
    print("--- prompt (from the validation split) ---")
    print(result.prompt)
    print(f"--- prompt and sampled continuation (temperature {config.temperature}) ---")
    print(result.prompt + result.sample)
    print()
    validation = f"Validation after step {result.step}: {result.validation_bits_per_token:.3f} bits per {unit}"
    baseline = f"unigram baseline {result.baseline_bits_per_token:.3f} bits per {unit}"
    if unit != "character":
        validation += f" ({result.validation_bits_per_char:.3f} bits per character)"
        baseline += f" ({result.baseline_bits_per_char:.3f} bits per character)"
    print(f"{validation}; {baseline}")
    speed = f", {result.tokens_per_second:,.0f} tokens/s in training" if result.tokens_per_second else ""
    print(f"Wall time {_format_duration(result.wall_seconds)}{speed}")

    output = os.path.abspath(result.output)

    def relative(path: str) -> str:
        return os.path.relpath(path, output)

    attention_plots = [relative(path) for path in result.files["attention_plots"]]
    attention = attention_plots[0] if len(attention_plots) == 1 else f"{attention_plots[0]} ... {attention_plots[-1]}"
    rows = [
        (relative(result.files["metrics"]), "metrics, config and loss history"),
        (relative(result.files["loss_plot"]), "loss curves"),
        (attention, "attention heat maps, one per layer"),
        (relative(result.files["samples"]), "sampled text"),
        (relative(result.files["checkpoints"]) + os.sep, "orbax checkpoints, model and tokenizer config"),
    ]
    name_width = max(len(name) for name, _ in rows) + 2
    print(f"Outputs in {output}:")
    for name, description in rows:
        print(f"  {name:<{name_width}}{description}")
    return 0
