"""Train a small transformer language model built from attention_jax modules with optax."""

from attention_jax.training.config import TrainConfig
from attention_jax.training.errors import UserInputError
from attention_jax.training.model import ModelConfig, TransformerLM
from attention_jax.training.run import TrainResult, train

__all__ = ["ModelConfig", "TrainConfig", "TrainResult", "TransformerLM", "UserInputError", "train"]
