"""Entry point of the `attention-jax` command: parses the subcommand and reports errors in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attention_jax.analysis import inspect_command
from attention_jax.cli import compare_command
from attention_jax.cli import generate_command
from attention_jax.cli import train_command
from attention_jax.training.errors import UserInputError

PROG = "attention-jax"


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr, exiting with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Attention mechanisms for JAX: train, inspect and compare attention on real text.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train_command.add_parser(subparsers)
    generate_command.add_parser(subparsers)
    inspect_command.add_parser(subparsers)
    compare_command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default: `sys.argv[1:]`) and return 0 on success.

    Invalid options and unusable input print one line on stderr and raise
    SystemExit with a non-zero status. The status is 2 for options that
    argparse rejects and 1 for a UserInputError raised later, such as a
    missing data path or an empty corpus. Ctrl-C exits with 130.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    # Commands that record how they were run read the arguments back.
    args.argv = argv
    command_prog = f"{PROG} {args.command}"
    try:
        return args.run(args)
    except UserInputError as error:
        parser.exit(1, f"{command_prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{command_prog}: interrupted\n")
