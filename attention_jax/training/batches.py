"""Fixed-length token windows for training and evaluation batches."""

from __future__ import annotations

import numpy as np

from attention_jax.training.errors import UserInputError


def training_batch(tokens: np.ndarray, *, batch_size: int, window: int, seed: int, step: int) -> np.ndarray:
    """Return `batch_size` random windows [batch_size, window] of `tokens` for one training step.

    The generator is seeded with (seed, step), so a run resumed at any step
    gets the same batches as an uninterrupted run.
    """
    if len(tokens) < window:
        raise ValueError(f"`tokens` should have at least window={window} tokens, but got {len(tokens)}")
    rng = np.random.default_rng((seed, step))
    starts = rng.integers(0, len(tokens) - window + 1, size=batch_size)
    return tokens[starts[:, None] + np.arange(window)]


def evaluation_windows(tokens: np.ndarray, *, count: int, window: int) -> np.ndarray:
    """Return up to `count` windows [count', window] of `tokens` at evenly spaced starts.

    Fewer than `count` windows come back when `tokens` is too short for that
    many without overlap; there is always at least one.
    """
    if len(tokens) < window:
        raise ValueError(f"`tokens` should have at least window={window} tokens, but got {len(tokens)}")
    count = max(1, min(count, len(tokens) // window))
    starts = np.linspace(0, len(tokens) - window, count).astype(np.int64)
    return tokens[starts[:, None] + np.arange(window)]


def pad_to_batches(windows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split windows into batches [num_batches, batch_size, window] plus row weights (0 marks padding)."""
    num_batches = -(-len(windows) // batch_size)
    padded = np.zeros((num_batches * batch_size, windows.shape[1]), dtype=windows.dtype)
    padded[: len(windows)] = windows
    weights = np.zeros(num_batches * batch_size, dtype=np.float32)
    weights[: len(windows)] = 1.0
    return (
        padded.reshape(num_batches, batch_size, windows.shape[1]),
        weights.reshape(num_batches, batch_size),
    )


def require_window(split: str, tokens: np.ndarray, window: int) -> None:
    """Raise UserInputError when the `split` tokens are shorter than one window of `window` tokens."""
    if len(tokens) < window:
        raise UserInputError(
            f"the {split} split has {len(tokens)} tokens, fewer than one window of seq_len + 1 = {window}; "
            "add more text or lower --seq-len"
        )
