"""One training run from options to output files: data, model, training, metrics, plots and samples."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from attention_jax.training import plots
from attention_jax.training.batches import evaluation_windows, pad_to_batches, require_window
from attention_jax.training.checkpoint import Checkpoints
from attention_jax.training.config import TrainConfig
from attention_jax.training.corpus import load_corpus
from attention_jax.training.errors import UserInputError
from attention_jax.training.loop import OptimizerConfig, Steps, TrainState, train_loop
from attention_jax.training.metrics import nats_to_bits, unigram_cross_entropy_bits
from attention_jax.training.model import TransformerLM, count_parameters
from attention_jax.training.parallel import make_plan
from attention_jax.training.sampling import sample_tokens
from attention_jax.training.tokenizers import Tokenizer, build_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """Outcome of `train`: headline numbers and the paths of the files written."""

    output: str
    step: int
    unit: str
    validation_bits_per_token: float
    validation_bits_per_char: float
    baseline_bits_per_token: float
    baseline_bits_per_char: float
    tokens_per_second: float | None
    wall_seconds: float
    prompt: str
    sample: str
    files: dict[str, str | list[str]]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _attention_weights(state, tokens, *, graphdef):
    return nnx.merge(graphdef, state).attention_weights(tokens)


def _snippet_start(tokens: np.ndarray, tokenizer: Tokenizer, length: int) -> int:
    """Return the start of a line near the middle of `tokens` from which `length` tokens fit.

    A line that starts with a non-whitespace character (in Python source,
    often a `def` or `class` line) is preferred over an indented or blank one.
    """
    newline_id = int(tokenizer.encode("\n")[0])
    last_start = len(tokens) - length
    middle = min(len(tokens) // 2, last_start)
    first_line_start = None
    for position in range(middle, last_start):
        if tokens[position] != newline_id:
            continue
        if first_line_start is None:
            first_line_start = position + 1
        if not tokenizer.token_text(int(tokens[position + 1])).isspace():
            return position + 1
    return first_line_start if first_line_start is not None else max(0, middle)


def _prepare_resume(
    config: TrainConfig, checkpoints: Checkpoints, model_config, tokenizer: Tokenizer
) -> int | None:
    """Return the checkpoint step to resume from, or None to start at step 0."""
    latest = checkpoints.latest_step()
    if config.resume is False:
        if latest is not None:
            logger.info("Starting over: deleting checkpoints up to step %d in %s", latest, checkpoints.folder)
            checkpoints.delete_all()
        return None
    if latest is None:
        if config.resume:
            raise UserInputError(f"no checkpoint found in {checkpoints.folder} to resume from")
        return None
    checkpoints.check_compatible(model_config, tokenizer)
    if latest > config.steps:
        raise UserInputError(
            f"the latest checkpoint in {checkpoints.folder} is at step {latest}, beyond steps={config.steps}; "
            "raise --steps or pass --no-resume to start over"
        )
    return latest


def train(config: TrainConfig, *, progress: bool = False) -> TrainResult:
    """Train a `TransformerLM` as `config` describes and write its outputs to `config.output`.

    Writes `metrics.json`, `loss.png`, one `attention_layer{i}.png` per layer,
    `samples.txt` and orbax checkpoints under `checkpoints/`. Resumes from
    the latest checkpoint there unless `config.resume` is False. Raises
    UserInputError for invalid options or unusable data.
    """
    started = time.perf_counter()
    config.validate()
    # Check the devices before reading the corpus, so a bad split fails at once.
    plan = make_plan(
        config.data_parallel,
        config.sequence_parallel,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        mechanism=config.mechanism,
        attention=config.attention,
    )
    corpus = load_corpus(
        config.data,
        validation_fraction=config.validation_fraction,
        max_bytes=int(config.max_data_mb * 2**20),
    )
    train_text = corpus.train_text
    validation_text = corpus.validation_text
    tokenizer = build_tokenizer(config.tokenizer, train_text)
    train_tokens = tokenizer.encode(train_text)
    validation_tokens = tokenizer.encode(validation_text)
    window = config.seq_len + 1
    require_window("training", train_tokens, window)
    require_window("validation", validation_tokens, window)

    chars_per_token = len(validation_text) / len(validation_tokens)
    baseline_bits = unigram_cross_entropy_bits(train_tokens, validation_tokens, tokenizer.vocab_size)

    def bits_per_char(bits_per_token: float) -> float:
        return bits_per_token / chars_per_token

    logger.info(
        "Tokens: %d for training, %d for validation (%s tokenizer, vocabulary %d); "
        "unigram baseline %.3f bits per %s",
        len(train_tokens), len(validation_tokens), tokenizer.kind, tokenizer.vocab_size, baseline_bits, tokenizer.unit,
    )

    model_config = config.model_config(tokenizer.vocab_size)
    model = TransformerLM(model_config, rngs=nnx.Rngs(params=config.seed))
    logger.info("Model: %d parameters, %s attention", count_parameters(model), model_config.attention)
    graphdef, params = nnx.split(model, nnx.Param)
    if plan is not None:
        logger.info("Devices: batch over %d, each window over %d (ring attention)", plan.data, plan.sequence)
        params = plan.replicate(params)
    steps = Steps(graphdef, OptimizerConfig.from_train_config(config), dropout_rate=config.dropout_rate, plan=plan)
    state = TrainState(params=params, opt_state=steps.init_optimizer(params), step=0)
    history: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}

    os.makedirs(config.output, exist_ok=True)
    checkpoints = Checkpoints(os.path.join(config.output, "checkpoints"))
    try:
        resume_step = _prepare_resume(config, checkpoints, model_config, tokenizer)
        if resume_step is not None:
            state, history = checkpoints.restore(resume_step, like=state)
            logger.info("Resuming at step %d of %d", resume_step, config.steps)
        checkpoints.write_configs(model_config, tokenizer)

        eval_batches = pad_to_batches(
            evaluation_windows(validation_tokens, count=config.eval_windows, window=window), config.batch_size
        )
        state, report = train_loop(
            steps,
            state,
            config=config,
            train_tokens=train_tokens,
            eval_batches=eval_batches,
            history=history,
            bits_per_char=bits_per_char,
            unit=tokenizer.unit,
            save_checkpoint=checkpoints.save,
            progress=progress,
        )
        if not history["validation"] or history["validation"][-1]["step"] != state.step:
            # A run resumed at its last step trains nothing, so evaluate here.
            validation_loss = steps.evaluate(state.params, *eval_batches)
            bits = nats_to_bits(validation_loss)
            history["validation"].append(
                {"step": state.step, "loss": validation_loss, "bits_per_token": bits, "bits_per_char": bits_per_char(bits)}
            )
    finally:
        checkpoints.close()

    # The outputs below run on one device.
    model = nnx.merge(graphdef, jax.device_put(state.params, jax.devices()[0]))
    files, prompt, sample = _write_outputs(
        config,
        model=model,
        tokenizer=tokenizer,
        validation_tokens=validation_tokens,
        history=history,
        baseline_bits=baseline_bits,
    )
    final = history["validation"][-1]
    wall_seconds = time.perf_counter() - started
    metrics = {
        "config": config.to_dict(),
        "model": model_config.to_dict(),
        "parameters": count_parameters(model),
        "corpus": {
            "source": corpus.source,
            "train_files": len(corpus.train),
            "validation_files": len(corpus.validation),
            "train_tokens": int(len(train_tokens)),
            "validation_tokens": int(len(validation_tokens)),
            "validation_chars_per_token": chars_per_token,
        },
        "tokenizer": {"kind": tokenizer.kind, "unit": tokenizer.unit, "vocab_size": tokenizer.vocab_size},
        "steps": state.step,
        "steps_this_run": report.steps_taken,
        "wall_seconds": wall_seconds,
        "compile_seconds": report.compile_seconds,
        "tokens_per_second": report.tokens_per_second,
        "backend": jax.default_backend(),
        "final_train_loss": history["train"][-1]["loss"] if history["train"] else None,
        "validation_loss": final["loss"],
        "validation_bits_per_token": final["bits_per_token"],
        "validation_bits_per_char": final["bits_per_char"],
        "baseline_bits_per_token": baseline_bits,
        "baseline_bits_per_char": bits_per_char(baseline_bits),
        "history": history,
    }
    metrics_path = os.path.join(config.output, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)
        file.write("\n")
    files["metrics"] = metrics_path
    files["checkpoints"] = checkpoints.folder

    return TrainResult(
        output=config.output,
        step=state.step,
        unit=tokenizer.unit,
        validation_bits_per_token=final["bits_per_token"],
        validation_bits_per_char=final["bits_per_char"],
        baseline_bits_per_token=baseline_bits,
        baseline_bits_per_char=bits_per_char(baseline_bits),
        tokens_per_second=report.tokens_per_second,
        wall_seconds=wall_seconds,
        prompt=prompt,
        sample=sample,
        files=files,
    )


def _write_outputs(
    config: TrainConfig,
    *,
    model: TransformerLM,
    tokenizer: Tokenizer,
    validation_tokens: np.ndarray,
    history: dict[str, list[dict[str, Any]]],
    baseline_bits: float,
) -> tuple[dict[str, Any], str, str]:
    """Write the loss plot, attention heat maps and sample text; return their paths, the prompt and the sample."""
    files: dict[str, Any] = {}
    loss_path = os.path.join(config.output, "loss.png")
    plots.plot_losses(
        loss_path,
        train=[(entry["step"], nats_to_bits(entry["loss"])) for entry in history["train"]],
        validation=[(entry["step"], entry["bits_per_token"]) for entry in history["validation"]],
        baseline=baseline_bits,
        unit=tokenizer.unit,
    )
    files["loss_plot"] = loss_path

    start = _snippet_start(validation_tokens, tokenizer, config.effective_snippet_len)
    snippet = validation_tokens[start : start + config.effective_snippet_len]
    graphdef, state = nnx.split(model)
    layer_weights = _attention_weights(state, snippet[None, :], graphdef=graphdef)
    labels = [tokenizer.token_text(int(token)) for token in snippet]
    attention_paths = []
    for layer, weights in enumerate(layer_weights):
        path = os.path.join(config.output, f"attention_layer{layer}.png")
        plots.plot_attention_layer(path, np.asarray(weights[0]), token_labels=labels, layer=layer)
        attention_paths.append(path)
    files["attention_plots"] = attention_paths

    prompt = tokenizer.decode(snippet)
    generated = sample_tokens(
        model, snippet, num_tokens=config.sample_tokens, temperature=config.temperature, seed=config.seed
    )
    sample = tokenizer.decode(generated)
    samples_path = os.path.join(config.output, "samples.txt")
    with open(samples_path, "w", encoding="utf-8") as file:
        file.write(
            f"# Prompt: {config.effective_snippet_len} tokens from the validation split. "
            f"Sampled {config.sample_tokens} tokens at temperature {config.temperature}, seed {config.seed}.\n"
        )
        file.write("# --- prompt ---\n")
        file.write(prompt)
        file.write("\n# --- prompt and sampled continuation ---\n")
        file.write(prompt + sample)
        file.write("\n")
    files["samples"] = samples_path
    return files, prompt, sample
