"""A synthetic multi-query associative-recall task.

Each example lists key/value pairs, then a separator, then queries: keys
drawn from the list (with replacement), each followed by its value. Only
the answers count in the loss and the accuracy. A pair is one token that
packs its key and its value, so a model answers a query by matching the
query key against the pair tokens by content and reading the value out of
the match: one attention step whose weights depend on the query. Attention
whose weights ignore the query (basic feed-forward attention) cannot do it.

The task spells pairs as single tokens because the two-token form (a key
token, then a value token) needs a two-layer induction circuit. In one
measurement, none of the mechanisms learned that form within 3000 steps of
this model, while the one-token form is learned in about 100.

Token ids (all below 256, so the byte-level language model reads them):
pair `10 * key + value` (0-199), query `200 + key`, answer `220 + value`,
separator 230 and padding 231.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_KEYS = 20
NUM_VALUES = 10
QUERY_BASE = 200
ANSWER_BASE = 220
SEPARATOR = 230
PAD = 231
_KEY_LETTERS = "abcdefghijklmnopqrst"


@dataclasses.dataclass(frozen=True)
class RecallTask:
    """Sizes of the task; `window` tokens hold one example plus padding."""

    num_pairs: int
    num_queries: int
    window: int

    def __post_init__(self) -> None:
        if not 1 <= self.num_pairs <= NUM_KEYS:
            raise ValueError(f"`num_pairs` should be between 1 and {NUM_KEYS}, but got {self.num_pairs}")
        if self.num_queries < 1:
            raise ValueError(f"`num_queries` should be at least 1, but got {self.num_queries}")
        if self.example_length > self.window:
            raise ValueError(
                f"an example of {self.num_pairs} pairs and {self.num_queries} queries takes "
                f"{self.example_length} tokens, more than `window`={self.window}"
            )

    @classmethod
    def unpadded(cls, num_pairs: int, num_queries: int) -> RecallTask:
        """Return the task whose window is exactly one example long."""
        return cls(num_pairs, num_queries, window=num_pairs + 1 + 2 * num_queries)

    @property
    def example_length(self) -> int:
        return self.num_pairs + 1 + 2 * self.num_queries

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / NUM_VALUES

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return `batch_size` examples [B, window] (int32) and answer weights [B, window - 1].

        The weights are 1 on the targets `tokens[:, 1:]` that are answers
        (the value after each query) and 0 elsewhere, so they line up with
        next-token predictions from `tokens[:, :-1]`.
        """
        tokens = np.full((batch_size, self.window), PAD, dtype=np.int32)
        query_start = self.num_pairs + 1
        for row in range(batch_size):
            keys = rng.choice(NUM_KEYS, size=self.num_pairs, replace=False)
            values = rng.integers(0, NUM_VALUES, size=self.num_pairs)
            tokens[row, : self.num_pairs] = NUM_VALUES * keys + values
            tokens[row, self.num_pairs] = SEPARATOR
            # Keys are queried with replacement. Without it, the last answers would follow by elimination.
            queried = rng.integers(0, self.num_pairs, size=self.num_queries)
            tokens[row, query_start : self.example_length : 2] = QUERY_BASE + keys[queried]
            tokens[row, query_start + 1 : self.example_length : 2] = ANSWER_BASE + values[queried]
        weights = np.zeros((batch_size, self.window - 1), dtype=np.float32)
        # The answer at query_start + 1 + 2q is predicted from the query just before it.
        weights[:, query_start + 2 * np.arange(self.num_queries)] = 1.0
        return tokens, weights


def describe(tokens: np.ndarray) -> str:
    """Return one example [window] as text: pairs `c7`, separator `|`, queries `c?` and answers `7`."""
    words = []
    for token in np.asarray(tokens).tolist():
        if token < QUERY_BASE:
            words.append(f"{_KEY_LETTERS[token // NUM_VALUES]}{token % NUM_VALUES}")
        elif token < ANSWER_BASE:
            words.append(f"{_KEY_LETTERS[token - QUERY_BASE]}?")
        elif token < SEPARATOR:
            words.append(str(token - ANSWER_BASE))
        elif token == SEPARATOR:
            words.append("|")
    return " ".join(words)


def accuracy(predictions: np.ndarray, tokens: np.ndarray, weights: np.ndarray) -> float:
    """Return the fraction of answers predicted right.

    `predictions` [B, window - 1] are the most likely next tokens after
    each position of `tokens[:, :-1]`. `weights` [B, window - 1] mark the
    answers, as `RecallTask.batch` returns them.
    """
    correct = np.asarray(predictions) == tokens[:, 1:]
    return float(np.sum(correct * weights) / np.sum(weights))
