"""Options of a training run and their validation."""

from __future__ import annotations

import dataclasses
from typing import Any

from attention_jax.training.errors import UserInputError, check_integers
from attention_jax.training.model import ModelConfig
from attention_jax.training.tokenizers import TOKENIZER_CHOICES

DEFAULT_SNIPPET_LEN = 64


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of one training run; the command-line options have the same names with dashes.

    With the defaults, one run on the standard library's source of Python
    3.11 (10.6 million training bytes) reached 2.26 bits per byte in 5
    minutes of wall time on 2 shared CPU cores, against a unigram baseline
    of 4.48.
    """

    # Data.
    data: str | None = None
    tokenizer: str = "bytes"
    validation_fraction: float = 0.08
    max_data_mb: float = 64.0

    # Model shape; `seq_len` is also the model's maximum length.
    attention: str = "attention_jax"
    mechanism: str = "scaled"
    num_kv_heads: int | None = None
    width: int = 192
    num_layers: int = 4
    num_heads: int = 6
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    seq_len: int = 128

    # Optimization.
    batch_size: int = 32
    steps: int = 400
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    # None warms up for 50 steps, or for steps // 8 in runs shorter than 400 steps.
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    # Devices: the batch is split over data_parallel devices and each window over sequence_parallel devices.
    data_parallel: int = 1
    sequence_parallel: int = 1

    # Evaluation, checkpoints and outputs.
    output: str = "runs/train"
    eval_every: int = 80
    eval_windows: int = 256
    log_every: int = 10
    checkpoint_every: int = 100
    # None resumes from the latest checkpoint in the output folder if there is one.
    # True requires a checkpoint; False starts over and replaces existing checkpoints.
    resume: bool | None = None
    # None takes min(64, seq_len) tokens.
    snippet_len: int | None = None
    sample_tokens: int = 400
    temperature: float = 0.8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def effective_warmup_steps(self) -> int:
        """Return the warm-up length: `warmup_steps`, or the default for this many steps when it is None."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(50, self.steps // 8)

    @property
    def effective_snippet_len(self) -> int:
        """Return the snippet length: `snippet_len`, or min(64, seq_len) when it is None."""
        if self.snippet_len is not None:
            return self.snippet_len
        return min(DEFAULT_SNIPPET_LEN, self.seq_len)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            max_len=self.seq_len,
            width=self.width,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention=self.attention,
            mechanism=self.mechanism,
            num_kv_heads=self.num_kv_heads,
        )

    def validate(self) -> None:
        """Raise UserInputError naming the first invalid option."""
        positive = (
            "width", "num_layers", "num_heads", "mlp_ratio", "seq_len", "batch_size", "steps",
            "eval_every", "eval_windows", "log_every", "checkpoint_every", "data_parallel", "sequence_parallel",
        )
        check_integers(self, positive, minimum=1)
        non_negative = ("sample_tokens", "seed")
        if self.warmup_steps is not None:
            non_negative += ("warmup_steps",)
        check_integers(self, non_negative, minimum=0)

        if self.tokenizer not in TOKENIZER_CHOICES:
            raise UserInputError(
                f"tokenizer must be one of {', '.join(TOKENIZER_CHOICES)}, but got {self.tokenizer!r}"
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserInputError(
                f"validation_fraction must be between 0 and 1, but got {self.validation_fraction}"
            )
        if not self.max_data_mb > 0:
            raise UserInputError(f"max_data_mb must be positive, but got {self.max_data_mb}")
        if self.seq_len < 2:
            raise UserInputError(f"seq_len must be at least 2, but got {self.seq_len}")
        if self.warmup_steps is not None and self.warmup_steps >= self.steps:
            raise UserInputError(
                f"warmup_steps={self.warmup_steps} must be less than steps={self.steps}; "
                "lower --warmup-steps or raise --steps"
            )
        if not self.learning_rate > 0:
            raise UserInputError(f"learning_rate must be positive, but got {self.learning_rate}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise UserInputError(
                f"min_learning_rate must be between 0 and learning_rate={self.learning_rate}, "
                f"but got {self.min_learning_rate}"
            )
        if not self.weight_decay >= 0:
            raise UserInputError(f"weight_decay must be non-negative, but got {self.weight_decay}")
        if not self.grad_clip > 0:
            raise UserInputError(f"grad_clip must be positive, but got {self.grad_clip}")
        if not self.temperature > 0:
            raise UserInputError(f"temperature must be positive, but got {self.temperature}")
        if not 2 <= self.effective_snippet_len <= self.seq_len:
            raise UserInputError(
                f"snippet_len must be between 2 and seq_len={self.seq_len}, but got {self.effective_snippet_len}"
            )
        if not self.output:
            raise UserInputError("output must name a folder, but got an empty string")

        # The model config checks its own fields; the vocabulary size is not known yet.
        self.model_config(vocab_size=256)
