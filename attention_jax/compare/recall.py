"""A synthetic multi-query associative-recall task in byte tokens.

Each example lists key/value pairs, then a separator, then queries: keys
from the list, each followed by its value. A model must copy the value that
followed the same key earlier in the sequence, which takes attention that
matches a query to a key by content and reads the token after it. Only the
answer tokens count in the loss and the accuracy.

Example with 4 pairs and 3 queries (keys are lower-case letters, values
digits): `q4c7a1x4|a1q4x4`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KEYS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
VALUES = np.frombuffer(b"0123456789", dtype=np.uint8)
SEPARATOR = ord("|")
PAD = ord(".")


@dataclasses.dataclass(frozen=True)
class RecallTask:
    """Sizes of the task; `window` tokens hold one example plus padding."""

    num_pairs: int
    num_queries: int
    window: int

    def __post_init__(self) -> None:
        if not 1 <= self.num_pairs <= len(KEYS):
            raise ValueError(f"`num_pairs` should be between 1 and {len(KEYS)}, but got {self.num_pairs}")
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError(
                f"`num_queries` should be between 1 and num_pairs={self.num_pairs}, but got {self.num_queries}"
            )
        if self.example_length > self.window:
            raise ValueError(
                f"an example of {self.num_pairs} pairs and {self.num_queries} queries takes "
                f"{self.example_length} tokens, more than `window`={self.window}"
            )

    @property
    def example_length(self) -> int:
        return 2 * self.num_pairs + 1 + 2 * self.num_queries

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / len(VALUES)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return `batch_size` examples [B, window] (int32) and answer weights [B, window - 1].

        The weights are 1 on the targets `tokens[:, 1:]` that are answers
        (the value after each query key) and 0 elsewhere, so they line up
        with next-token predictions from `tokens[:, :-1]`.
        """
        tokens = np.full((batch_size, self.window), PAD, dtype=np.int32)
        weights = np.zeros((batch_size, self.window - 1), dtype=np.float32)
        pairs_end = 2 * self.num_pairs
        for row in range(batch_size):
            keys = rng.choice(KEYS, size=self.num_pairs, replace=False)
            values = rng.choice(VALUES, size=self.num_pairs)
            tokens[row, 0:pairs_end:2] = keys
            tokens[row, 1:pairs_end:2] = values
            tokens[row, pairs_end] = SEPARATOR
            asked = rng.choice(self.num_pairs, size=self.num_queries, replace=False)
            query_start = pairs_end + 1
            tokens[row, query_start : self.example_length : 2] = keys[asked]
            tokens[row, query_start + 1 : self.example_length : 2] = values[asked]
        # An answer sits at query_start + 1 + 2q; its prediction comes from the position before it.
        answer_positions = pairs_end + 2 + 2 * np.arange(self.num_queries)
        weights[:, answer_positions - 1] = 1.0
        return tokens, weights


def accuracy(predictions: np.ndarray, tokens: np.ndarray, weights: np.ndarray) -> float:
    """Return the fraction of answers predicted right.

    `predictions` [B, window - 1] are the most likely next tokens after
    each position of `tokens[:, :-1]`; `weights` [B, window - 1] mark the
    answers, as from `RecallTask.batch`.
    """
    correct = np.asarray(predictions) == tokens[:, 1:]
    return float(np.sum(correct * weights) / np.sum(weights))
