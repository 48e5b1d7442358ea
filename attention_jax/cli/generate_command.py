"""The `attention-jax generate` command: continue a prompt with a trained model."""

from __future__ import annotations

import argparse
import logging
import time

from attention_jax.cli.help_format import DefaultsHelpFormatter
from attention_jax.cli.logs import configure_logging
from attention_jax.training.errors import UserInputError

DESCRIPTION = """\
Continue a prompt with a language model trained by `attention-jax train`.
Each layer keeps a key/value cache, so every new token costs one step over
a single position instead of a pass over the whole context.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt with a model trained by `train`",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.set_defaults(run=run)
    parser.add_argument("--checkpoint", default="runs/demo",
                        help="output folder of `attention-jax train` (or its checkpoints subfolder)")
    parser.add_argument("--prompt", default="def ", help="text to continue")
    parser.add_argument("--tokens", type=_positive_int, default=200, help="number of tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (positive)")
    parser.add_argument("--top-k", type=_positive_int, default=None,
                        help="sample only among the k most likely tokens (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling random numbers")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the latest checkpoint, generate and print the prompt with its continuation."""
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    if not args.temperature > 0:
        raise UserInputError(f"--temperature must be positive, but got {args.temperature}")
    if not args.prompt:
        raise UserInputError("--prompt must contain at least one character")

    # Imported here so that `--help` and option errors stay fast.
    from attention_jax.training.generation import generate
    from attention_jax.training.restore import load_trained_model

    model, tokenizer, step = load_trained_model(args.checkpoint)
    if model.config.attention != "attention_jax":
        raise UserInputError(
            "generation with a cache needs a model trained with --attention attention_jax, "
            f"but this one used {model.config.attention}")
    prompt = tokenizer.encode(args.prompt)
    start = time.perf_counter()
    tokens = generate(model, prompt, num_tokens=args.tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed)
    seconds = time.perf_counter() - start

    print(args.prompt + tokenizer.decode(tokens))
    print()
    print(f"Generated {len(tokens)} tokens with the step-{step} model from {args.checkpoint} "
          f"in {seconds:.1f} s (compilation included)")
    return 0
