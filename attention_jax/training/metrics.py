"""Loss units and the unigram baseline that a language model must beat."""

from __future__ import annotations

import math

import numpy as np


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)


def unigram_cross_entropy_bits(train_ids: np.ndarray, validation_ids: np.ndarray, vocab_size: int) -> float:
    """Return the bits per token of a unigram model of the training tokens, evaluated on validation.

    The probability of token v is (count_v + 1) / (n + vocab_size) with
    count_v its number of occurrences among the n training tokens, so a
    token missing from training keeps a finite cost (add-one smoothing).
    """
    if len(validation_ids) == 0:
        raise ValueError("`validation_ids` should not be empty")
    counts = np.bincount(np.asarray(train_ids).ravel(), minlength=vocab_size).astype(np.float64)
    log_probabilities = np.log2(counts + 1.0) - np.log2(counts.sum() + vocab_size)
    return float(-log_probabilities[np.asarray(validation_ids).ravel()].mean())
