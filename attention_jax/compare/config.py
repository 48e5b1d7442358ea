"""Options of `attention-jax compare` and the quick preset."""

from __future__ import annotations

import dataclasses
from typing import Any

from attention_jax.compare.recall import NUM_KEYS, RecallTask
from attention_jax.training.errors import UserInputError, check_integers
from attention_jax.training.mechanisms import MECHANISM_CHOICES


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings shared by every mechanism, so that only the attention differs between runs.

    The command-line options have the same names with dashes.
    """

    mechanisms: tuple[str, ...] = MECHANISM_CHOICES
    # Text task: the train command's corpus, in UTF-8 bytes.
    data: str | None = None
    max_data_mb: float = 16.0
    validation_fraction: float = 0.08
    text_steps: int = 400
    eval_windows: int = 256
    # Associative-recall task.
    recall_steps: int = 300
    recall_pairs: int = 16
    recall_queries: int = 16
    recall_eval_examples: int = 512
    # Model and optimization, the same for every mechanism.
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 128
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    seed: int = 0
    output: str = "runs/compare"

    @classmethod
    def quick(cls, **overrides: Any) -> CompareConfig:
        """Return a preset that runs all nine mechanisms in a few minutes on 2 CPU cores."""
        preset = dict(
            max_data_mb=4.0,
            text_steps=80,
            eval_windows=64,
            recall_steps=150,
            recall_pairs=8,
            recall_queries=8,
            recall_eval_examples=256,
            width=64,
            num_heads=4,
            seq_len=64,
            batch_size=16,
            warmup_steps=10,
        )
        preset.update(overrides)
        return cls(**preset)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["mechanisms"] = list(self.mechanisms)
        return values

    def validate(self) -> None:
        """Raise UserInputError naming the first invalid option."""
        if not self.mechanisms:
            raise UserInputError("mechanisms must name at least one mechanism")
        unknown = [name for name in self.mechanisms if name not in MECHANISM_CHOICES]
        if unknown:
            raise UserInputError(
                f"mechanisms must be among {', '.join(MECHANISM_CHOICES)}, but got {', '.join(unknown)}"
            )
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise UserInputError(f"mechanisms must not repeat, but got {', '.join(self.mechanisms)}")

        positive = (
            "text_steps", "eval_windows", "recall_steps", "recall_pairs", "recall_queries",
            "recall_eval_examples", "width", "num_layers", "num_heads", "seq_len", "batch_size",
        )
        check_integers(self, positive, minimum=1)
        check_integers(self, ("warmup_steps", "seed"), minimum=0)

        if self.warmup_steps >= min(self.text_steps, self.recall_steps):
            raise UserInputError(
                f"warmup_steps={self.warmup_steps} must be less than text_steps and recall_steps "
                f"({self.text_steps}, {self.recall_steps})"
            )
        if self.width % self.num_heads != 0:
            raise UserInputError(f"num_heads={self.num_heads} must divide width={self.width}")
        if not self.learning_rate > 0:
            raise UserInputError(f"learning_rate must be positive, but got {self.learning_rate}")
        if not self.max_data_mb > 0:
            raise UserInputError(f"max_data_mb must be positive, but got {self.max_data_mb}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserInputError(f"validation_fraction must be between 0 and 1, but got {self.validation_fraction}")

        if self.recall_pairs > NUM_KEYS:
            raise UserInputError(
                f"recall_pairs must be at most {NUM_KEYS}, the number of distinct keys, but got {self.recall_pairs}"
            )
        example_length = RecallTask.unpadded(self.recall_pairs, self.recall_queries).example_length
        if example_length > self.seq_len + 1:
            raise UserInputError(
                f"a recall example of {self.recall_pairs} pairs and {self.recall_queries} queries takes "
                f"{example_length} tokens, more than seq_len + 1 = {self.seq_len + 1}; raise --seq-len"
            )

        if not self.output:
            raise UserInputError("output must name a folder, but got an empty string")
