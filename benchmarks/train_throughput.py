"""Training throughput of the demo model with attention_jax's and Flax's multi-head attention.

Both models have the shape of `attention-jax train`'s defaults, start from
the same seed and train on the same batches of the standard library's
source. Compilation happens before timing, every timed segment ends with
`block_until_ready`, and the repeats alternate between the two modules so
that drift of a shared machine hits both alike. Prints tokens/s (median of
the repeats) per module and their ratio, and writes the result as JSON.

    python benchmarks/train_throughput.py            # default shape
    python benchmarks/train_throughput.py --quick    # tiny shape, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.training.batches import training_batch
from attention_jax.training.config import TrainConfig
from attention_jax.training.corpus import load_corpus
from attention_jax.training.errors import UserInputError
from attention_jax.training.loop import OptimizerConfig, Steps
from attention_jax.training.model import ATTENTION_CHOICES, TransformerLM, count_parameters
from attention_jax.training.tokenizers import ByteTokenizer

QUICK_SHAPE = dict(width=32, num_layers=2, num_heads=2, seq_len=64, batch_size=8)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed train steps per repeat and module")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per module, alternating")
    parser.add_argument("--quick", action="store_true", help=f"use a tiny model ({QUICK_SHAPE}) and 3 steps")
    parser.add_argument(
        "--output", default="runs/benchmarks/train_throughput.json", help="path of the JSON result"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be positive")
    return args


def matmul_flops_per_second(size: int = 1024, repeats: int = 5) -> float:
    """Return the float32 matrix-multiply rate of the default device in FLOP/s (median of `repeats`)."""
    left = jnp.ones((size, size), jnp.float32)
    right = jnp.ones((size, size), jnp.float32)
    multiply = jax.jit(jnp.matmul)
    multiply(left, right).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        multiply(left, right).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def train_flops_per_token(config: TrainConfig, parameters: int, vocab_size: int) -> float:
    """Estimate training FLOPs per token: 6 per weight plus 12 * layers * seq_len * width for attention.

    A weight costs 2 FLOPs per token forward and 4 backward. The attention
    score and value products cost 4 * seq_len * width per token and layer
    forward, computed over the full causal square. Embedding tables do no
    multiplications, so their weights are excluded. This is an estimate,
    not a count of XLA's operations.
    """
    embedding_weights = (vocab_size + config.seq_len) * config.width
    return 6 * (parameters - embedding_weights) + 12 * config.num_layers * config.seq_len * config.width


def attention_jax_available() -> str | None:
    """Return None if attention_jax.nn.MultiHeadAttention imports, else the import error."""
    try:
        from attention_jax.nn import MultiHeadAttention  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def main() -> None:
    args = parse_args()
    config = TrainConfig()
    timed_steps = args.steps
    if args.quick:
        config = dataclasses.replace(config, **QUICK_SHAPE)
        timed_steps = min(args.steps, 3)

    tokenizer = ByteTokenizer()
    corpus = load_corpus(None, validation_fraction=config.validation_fraction)
    tokens = tokenizer.encode(corpus.train_text)
    window = config.seq_len + 1
    tokens_per_step = config.batch_size * config.seq_len

    missing = {}
    runners = {}
    for attention in ATTENTION_CHOICES:
        if attention == "attention_jax" and (error := attention_jax_available()) is not None:
            missing[attention] = error
            continue
        try:
            model = TransformerLM(dataclasses.replace(config, attention=attention).model_config(256), rngs=nnx.Rngs(config.seed))
        except UserInputError as error:
            missing[attention] = str(error)
            continue
        graphdef, params = nnx.split(model, nnx.Param)
        steps = Steps(graphdef, OptimizerConfig.from_train_config(config), dropout_rate=0.0)
        runners[attention] = {
            "steps": steps,
            "params": params,
            "opt_state": steps.init_optimizer(params),
            "step": 0,
            "parameters": count_parameters(model),
            "seconds": [],
        }

    key = jax.random.key(config.seed)

    def run_steps(runner, count: int) -> float:
        start = time.perf_counter()
        loss = None
        for _ in range(count):
            batch = training_batch(tokens, batch_size=config.batch_size, window=window, seed=config.seed, step=runner["step"])
            runner["params"], runner["opt_state"], loss = runner["steps"].train_step(
                runner["params"], runner["opt_state"], batch, key
            )
            runner["step"] += 1
        loss.block_until_ready()
        return time.perf_counter() - start

    for attention, runner in runners.items():
        compile_seconds = run_steps(runner, 1)
        print(f"{attention}: first step (with compilation) {compile_seconds:.1f} s")
    for repeat in range(args.repeats):
        for attention, runner in runners.items():
            runner["seconds"].append(run_steps(runner, timed_steps))

    matmul_rate = matmul_flops_per_second()
    results = {}
    for attention, runner in runners.items():
        seconds_per_step = statistics.median(runner["seconds"]) / timed_steps
        tokens_per_second = tokens_per_step / seconds_per_step
        flops_per_token = train_flops_per_token(config, runner["parameters"], 256)
        results[attention] = {
            "tokens_per_second": tokens_per_second,
            "seconds_per_step": seconds_per_step,
            "repeat_seconds": runner["seconds"],
            "parameters": runner["parameters"],
            "estimated_fraction_of_matmul_rate": flops_per_token * tokens_per_second / matmul_rate,
        }
    ratio = None
    if "attention_jax" in results and "flax" in results:
        ratio = results["attention_jax"]["tokens_per_second"] / results["flax"]["tokens_per_second"]

    print()
    print(f"Model: width {config.width}, {config.num_layers} layers, {config.num_heads} heads, "
          f"batch {config.batch_size} x {config.seq_len} tokens; {timed_steps} steps x {args.repeats} repeats")
    print(f"Device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"float32 matmul {matmul_rate / 1e9:.1f} GFLOP/s")
    print(f"{'attention':<15}{'tokens/s':>12}{'ms/step':>10}{'of matmul rate':>16}")
    for attention, result in results.items():
        print(f"{attention:<15}{result['tokens_per_second']:>12,.0f}{result['seconds_per_step'] * 1e3:>10.0f}"
              f"{result['estimated_fraction_of_matmul_rate']:>16.1%}")
    for attention, error in missing.items():
        print(f"{attention:<15}missing: {error}")
    if ratio is not None:
        print(f"attention_jax / flax tokens/s: {ratio:.3f}")

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    record = {
        "model": {key: getattr(config, key) for key in ("width", "num_layers", "num_heads", "mlp_ratio", "seq_len", "batch_size")},
        "timed_steps": timed_steps,
        "repeats": args.repeats,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax_version": jax.__version__,
        "matmul_flops_per_second": matmul_rate,
        "results": results,
        "missing": missing,
        "ratio_attention_jax_to_flax": ratio,
    }
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=2)
        file.write("\n")
    print(f"Result written to {args.output}")


if __name__ == "__main__":
    main()
