"""Logging setup of the command line: library log records as plain lines on stderr."""

from __future__ import annotations

import logging
import sys


class ProgressBarHandler(logging.Handler):
    """A logging handler that writes above an active tqdm progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure_logging(level: int) -> None:
    """Send log records of the `attention_jax` loggers at `level` and above to stderr as plain lines."""
    logger = logging.getLogger("attention_jax")
    logger.setLevel(level)
    if not any(isinstance(handler, ProgressBarHandler) for handler in logger.handlers):
        handler = ProgressBarHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
