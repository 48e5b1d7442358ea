"""Train one model per mechanism on the text and recall tasks and measure each.

Every mechanism gets the same model shape, initialization seed, optimizer,
batches and number of steps; only the attention layer differs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.compare.config import CompareConfig
from attention_jax.compare.recall import RecallTask, accuracy
from attention_jax.training.batches import evaluation_windows, pad_to_batches, require_window, training_batch
from attention_jax.training.corpus import load_corpus
from attention_jax.training import loop
from attention_jax.training.loop import OptimizerConfig, Steps
from attention_jax.training.mechanisms import MECHANISMS
from attention_jax.training.metrics import nats_to_bits, unigram_cross_entropy_bits
from attention_jax.training.model import ModelConfig, TransformerLM, count_parameters
from attention_jax.training.tokenizers import build_tokenizer

logger = logging.getLogger(__name__)

BYTE_VOCABULARY = 256
# Points on each curve: evaluations are spread evenly over the steps.
EVALUATIONS_PER_RUN = 10
TRAIN_POINTS_PER_RUN = 30


@dataclasses.dataclass
class TextData:
    """The text task in byte tokens."""

    train_tokens: np.ndarray
    eval_batches: tuple[np.ndarray, np.ndarray]
    chars_per_token: float
    source: str
    baseline_bits_per_char: float


@dataclasses.dataclass
class TaskResult:
    """Curves and measurements of one mechanism on one task."""

    train_curve: list[dict[str, float]]
    eval_curve: list[dict[str, float]]
    step_seconds: float
    compile_seconds: float
    step_memory_bytes: int


@dataclasses.dataclass
class MechanismResult:
    mechanism: str
    description: str
    parameters: int
    text: TaskResult
    recall: TaskResult

    @property
    def validation_bits_per_char(self) -> float:
        return self.text.eval_curve[-1]["bits_per_char"]

    @property
    def recall_accuracy(self) -> float:
        return self.recall.eval_curve[-1]["accuracy"]

    def recall_steps_to(self, accuracy: float) -> int | None:
        """Return the first evaluated step with at least `accuracy` on recall, or None."""
        for point in self.recall.eval_curve:
            if point["accuracy"] >= accuracy:
                return point["step"]
        return None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["validation_bits_per_char"] = self.validation_bits_per_char
        values["recall_accuracy"] = self.recall_accuracy
        values["recall_steps_to_90"] = self.recall_steps_to(0.9)
        return values


def model_config(config: CompareConfig, mechanism: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=BYTE_VOCABULARY,
        max_len=config.seq_len,
        width=config.width,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mechanism=mechanism,
    )


def _optimizer(config: CompareConfig, steps: int) -> OptimizerConfig:
    return OptimizerConfig(
        learning_rate=config.learning_rate,
        min_learning_rate=config.learning_rate / 10,
        warmup_steps=config.warmup_steps,
        decay_steps=steps,
        weight_decay=0.1,
        grad_clip=1.0,
    )


def _every(total: int, count: int) -> int:
    return max(1, total // count)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predictions(params, tokens, *, graphdef):
    return jnp.argmax(nnx.merge(graphdef, params)(tokens[:, :-1]), axis=-1)


def _compile_train_step(steps: Steps, params, opt_state, windows, dropout_key, weights):
    """Compile the train step ahead of time; return it and its argument plus temporary bytes.

    The byte count is what XLA plans for one step (parameters, optimizer
    state, batch, activations and scratch), 0 where the backend does not
    report it.
    """
    compiled = loop.train_step.lower(
        params, opt_state, windows, dropout_key, weights, graphdef=steps.graphdef,
        optimizer_config=steps.optimizer_config, use_dropout=False,
    ).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        return compiled, 0
    return compiled, int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)


def _train(
    config: CompareConfig,
    mechanism: str,
    *,
    num_steps: int,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]],
    evaluate: Callable[[Steps, Any], dict[str, float]],
    progress: Callable[[], None],
) -> tuple[TaskResult, int]:
    """Train a fresh model for `num_steps`; return its result and parameter count."""
    model = TransformerLM(model_config(config, mechanism), rngs=nnx.Rngs(params=config.seed))
    parameters = count_parameters(model)
    graphdef, params = nnx.split(model, nnx.Param)
    steps = Steps(graphdef, _optimizer(config, num_steps), dropout_rate=0.0)
    opt_state = steps.init_optimizer(params)
    dropout_key = jax.random.key(config.seed)
    first_windows, first_weights = batches(0)
    started = time.perf_counter()
    train_step, memory = _compile_train_step(steps, params, opt_state, first_windows, dropout_key, first_weights)
    compile_seconds = time.perf_counter() - started

    log_every = _every(num_steps, TRAIN_POINTS_PER_RUN)
    eval_every = _every(num_steps, EVALUATIONS_PER_RUN)
    train_curve, eval_curve, step_times, pending = [], [], [], []
    for step in range(num_steps):
        windows, weights = batches(step)
        started = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, windows, dropout_key, weights)
        loss.block_until_ready()
        step_times.append(time.perf_counter() - started)
        pending.append(float(loss))
        done = step + 1
        if done % log_every == 0 or done == num_steps:
            train_curve.append({"step": done, "bits": nats_to_bits(float(np.mean(pending)))})
            pending.clear()
        if done % eval_every == 0 or done == num_steps:
            eval_curve.append({"step": done, **evaluate(steps, params)})
        progress()
    # The first step can include one-time work such as allocating buffers.
    step_seconds = statistics.median(step_times[1:] or step_times)
    return TaskResult(train_curve, eval_curve, step_seconds, compile_seconds, memory), parameters


def load_text(config: CompareConfig) -> TextData:
    """Load the train command's corpus as bytes and cut the validation windows."""
    corpus = load_corpus(
        config.data, validation_fraction=config.validation_fraction, max_bytes=int(config.max_data_mb * 2**20)
    )
    tokenizer = build_tokenizer("bytes", corpus.train_text)
    train_tokens = tokenizer.encode(corpus.train_text)
    validation_tokens = tokenizer.encode(corpus.validation_text)
    window = config.seq_len + 1
    require_window("training", train_tokens, window)
    require_window("validation", validation_tokens, window)
    windows = evaluation_windows(validation_tokens, count=config.eval_windows, window=window)
    chars_per_token = len(corpus.validation_text) / len(validation_tokens)
    return TextData(
        train_tokens=train_tokens,
        eval_batches=pad_to_batches(windows, config.batch_size),
        chars_per_token=chars_per_token,
        source=corpus.source,
        baseline_bits_per_char=unigram_cross_entropy_bits(train_tokens, validation_tokens, BYTE_VOCABULARY)
        / chars_per_token,
    )


def run_mechanism(
    config: CompareConfig, mechanism: str, text: TextData, *, progress: Callable[[], None] = lambda: None
) -> MechanismResult:
    """Train `mechanism` on the text task and on the recall task; return both results."""
    window = config.seq_len + 1
    text_weights = np.ones((config.batch_size, config.seq_len), dtype=np.float32)

    def text_batch(step: int):
        return training_batch(
            text.train_tokens, batch_size=config.batch_size, window=window, seed=config.seed, step=step
        ), text_weights

    def text_eval(steps: Steps, params) -> dict[str, float]:
        bits = nats_to_bits(steps.evaluate(params, *text.eval_batches))
        return {"bits_per_token": bits, "bits_per_char": bits / text.chars_per_token}

    # Recall windows hold one example and no padding, so they are often shorter than text windows.
    task = RecallTask.unpadded(config.recall_pairs, config.recall_queries)
    eval_tokens, eval_weights = task.batch(np.random.default_rng((config.seed, 1)), config.recall_eval_examples)

    def recall_batch(step: int):
        return task.batch(np.random.default_rng((config.seed, 0, step)), config.batch_size)

    def recall_eval(steps: Steps, params) -> dict[str, float]:
        predictions = _predictions(params, eval_tokens, graphdef=steps.graphdef)
        return {"accuracy": accuracy(np.asarray(predictions), eval_tokens, eval_weights)}

    logger.info("Training %s on text for %d steps", mechanism, config.text_steps)
    text_result, parameters = _train(
        config, mechanism, num_steps=config.text_steps, batches=text_batch, evaluate=text_eval, progress=progress
    )
    logger.info("Training %s on associative recall for %d steps", mechanism, config.recall_steps)
    recall_result, _ = _train(
        config, mechanism, num_steps=config.recall_steps, batches=recall_batch, evaluate=recall_eval,
        progress=progress,
    )
    return MechanismResult(
        mechanism=mechanism,
        description=MECHANISMS[mechanism].description,
        parameters=parameters,
        text=text_result,
        recall=recall_result,
    )


def run_all(config: CompareConfig, text: TextData, *, progress: Callable[[], None] = lambda: None) -> Iterator[MechanismResult]:
    """Yield one result per mechanism of `config`, in order."""
    for mechanism in config.mechanisms:
        yield run_mechanism(config, mechanism, text, progress=progress)
