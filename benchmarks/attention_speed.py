"""Attention speed: attention_jax's chunked path against its reference path, jax.nn, tokamax and PyTorch.

Every contender runs on the same float32 inputs (batch 1, 8 heads, head
dimension 64 by default) for each sequence length, causal and non-causal,
forward and forward+backward. Compilation happens before the timed region.
Every timed call waits for its result: `block_until_ready` in JAX, and a
plain call in PyTorch, which is synchronous on the CPU. The contenders take
turns within each repeat so that drift of a shared machine hits all alike.
A jitted float32 matrix multiply takes its turn with them, so each
attention throughput is also given as a fraction of the matmul rate of the
same moment.

    python benchmarks/attention_speed.py                  # lengths 1024 2048 4096
    python benchmarks/attention_speed.py --quick          # lengths 512 1024, under 2 minutes
    python benchmarks/attention_speed.py --lengths 8192   # other lengths
    python benchmarks/attention_speed.py --long 131072    # peak memory of one long causal pass

Results go to `--output-dir` as attention_speed.json, attention_speed.md and
attention_speed.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax

CHUNKED = "attention_jax chunked"
REFERENCE = "attention_jax reference"
JAX_NN = "jax.nn xla"
TOKAMAX = "tokamax xla_chunked"
TORCH = "torch sdpa"
MATMUL = "float32 matmul"
CONTENDER_NAMES = (CHUNKED, REFERENCE, JAX_NN, TOKAMAX, TORCH)
CONTENDER_KEYS = {"chunked": CHUNKED, "reference": REFERENCE, "jax-nn": JAX_NN, "tokamax": TOKAMAX, "torch": TORCH}

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"

# FLOP convention: the forward pass counts the two matrix products,
# 4 * B * N * T * S * H (softmax not counted), and a causal pass counts half
# of it, the unmasked part. Forward+backward counts 2.5 times the forward.
# NOTE: the FlashAttention repository's benchmark scripts count the backward
# pass alone as 2.5 times the forward and forward+backward as 3.5 times, so
# their GFLOP/s for the same time are 1.4 times the forward+backward GFLOP/s
# printed here. Time ratios do not depend on the convention.
FORWARD_BACKWARD_FLOP_FACTOR = 2.5

MATMUL_SIZE = 2048
DEFAULT_LENGTHS = (1024, 2048, 4096)
QUICK_LENGTHS = (512, 1024)

# Outputs and gradients must agree with the chunked contender's within
# ATOL + RTOL * max|chunked|. The float32 contenders, which sum in different
# orders, differed from chunked by at most 4e-6 at lengths 512 to 4096 in
# runs of this script on a 2-core x86-64 CPU.
ATOL = 1e-5
RTOL = 1e-4


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=None,
        help=f"sequence lengths T = S to compare (default: {' '.join(map(str, DEFAULT_LENGTHS))})",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender and configuration (default: 5, or 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"lengths {' '.join(map(str, QUICK_LENGTHS))} and 3 repeats, under 2 minutes on 2 cores")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default: 1)")
    parser.add_argument("--heads", type=int, default=8, help="number of heads N = K (default: 8)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension H (default: 64)")
    parser.add_argument(
        "--contenders", nargs="+", choices=list(CONTENDER_KEYS), default=list(CONTENDER_KEYS), metavar="NAME",
        help=f"contenders to run (default: all of {' '.join(CONTENDER_KEYS)})",
    )
    parser.add_argument(
        "--max-materialized-gib", type=float, default=4.0,
        help="skip a contender that builds [B, N, T, S] float32 arrays (reference, jax.nn xla) when their "
             "estimated size exceeds this many GiB (default: 4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--output-dir", default="benchmarks/results", help="folder for the JSON, Markdown and PNG results (default: benchmarks/results)")
    parser.add_argument(
        "--long", type=int, default=None, metavar="LENGTH",
        help="instead of the comparison, run one causal chunked forward pass at this length in a child "
             "process and report its time and peak resident memory (minutes at 131072)",
    )
    parser.add_argument(
        "--update-readme", action="store_true",
        help="also copy the results into benchmarks/README.md, between its attention_speed (or, with --long, "
             "attention_speed_long) begin and end marker lines",
    )
    parser.add_argument("--long-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.lengths is None:
        args.lengths = list(QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    sizes = {"--lengths": min(args.lengths), "--repeats": args.repeats, "--batch": args.batch,
             "--heads": args.heads, "--head-dim": args.head_dim}
    for option, value in sizes.items():
        if value < 1:
            parser.error(f"{option} must be positive, but got {value}")
    if args.long is not None and args.long < 1:
        parser.error(f"--long must be positive, but got {args.long}")
    if "chunked" not in args.contenders:
        parser.error("--contenders must include chunked, the baseline of every ratio and numerics check")
    args.contenders = [CONTENDER_KEYS[key] for key in dict.fromkeys(args.contenders)]
    return args


# ---------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_revision() -> str | None:
    """Return the git commit of the checkout, marked "+ uncommitted changes" when attention_jax/ differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "attention_jax"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit} + uncommitted changes" if changes else commit


def command_line() -> str:
    """Return the command that started this run, as a user would type it from the current folder."""
    return shlex.join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_device": jax.devices()[0].device_kind,
        "versions": {name: package_version(name) for name in ("jax", "jaxlib", "numpy", "torch", "tokamax")},
        "attention_jax_revision": library_revision(),
        "load_average_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------
# Configurations and inputs


@dataclasses.dataclass(frozen=True)
class Config:
    length: int
    is_causal: bool
    pass_name: str
    batch: int
    heads: int
    head_dim: int

    @property
    def label(self) -> str:
        mask = "causal" if self.is_causal else "non-causal"
        return f"{self.pass_name} {mask} T=S={self.length}"

    def flops(self) -> float:
        """Return the FLOP count of one call under the convention of FORWARD_BACKWARD_FLOP_FACTOR."""
        forward = 4 * self.batch * self.heads * self.length * self.length * self.head_dim
        if self.is_causal:
            forward /= 2
        return forward * (FORWARD_BACKWARD_FLOP_FACTOR if self.pass_name == FORWARD_BACKWARD else 1)

    def materialized_bytes(self) -> int:
        """Estimate the peak bytes of [B, N, T, S] float32 arrays in a path that builds them.

        The estimate counts two such arrays in the forward pass (logits and
        weights) and four in forward+backward. It is a rule of thumb, not a
        measurement of XLA's buffer assignment.
        """
        one_array = 4 * self.batch * self.heads * self.length * self.length
        return one_array * (4 if self.pass_name == FORWARD_BACKWARD else 2)


@dataclasses.dataclass
class Inputs:
    """Random float32 query, key, value and output cotangent, all [B, T, N, H] with T = S."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    cotangent: np.ndarray


def make_inputs(batch: int, length: int, heads: int, head_dim: int, seed: int) -> Inputs:
    rng = np.random.default_rng([seed, length])
    shape = (batch, length, heads, head_dim)
    arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
    return Inputs(*arrays)


# ---------------------------------------------------------------------------
# Contenders
#
# A builder takes a Config and Inputs and returns two functions. The runner
# takes no arguments, computes once and returns only after the result exists.
# The converter turns that result into NumPy arrays laid out as [B, T, N, H].


Runner = Callable[[], Any]
Builder = Callable[[Config, Inputs], tuple[Runner, Callable[[Any], list[np.ndarray]]]]


def jax_builder(attention: Callable[..., jax.Array]) -> Builder:
    """Return a builder for a JAX attention function `attention(query, key, value, is_causal=...)`."""

    def build(config: Config, inputs: Inputs):
        query, key, value, cotangent = (jnp.asarray(array) for array in dataclasses.astuple(inputs))

        def forward(query, key, value):
            return attention(query, key, value, is_causal=config.is_causal)

        if config.pass_name == FORWARD:
            compiled = jax.jit(forward).lower(query, key, value).compile()
            arguments = (query, key, value)
        else:
            def loss(query, key, value, cotangent):
                return jnp.sum(forward(query, key, value) * cotangent)

            gradients = jax.grad(loss, argnums=(0, 1, 2))
            compiled = jax.jit(gradients).lower(query, key, value, cotangent).compile()
            arguments = (query, key, value, cotangent)

        def run():
            return jax.block_until_ready(compiled(*arguments))

        def to_numpy(result):
            return [np.asarray(array) for array in jax.tree.leaves(result)]

        return run, to_numpy

    return build


def attention_jax_chunked(query, key, value, *, is_causal):
    return attention_jax.dot_product_attention(query, key, value, is_causal=is_causal, implementation="chunked")


def attention_jax_reference(query, key, value, *, is_causal):
    return attention_jax.dot_product_attention(query, key, value, is_causal=is_causal, implementation="reference")


def jax_nn_xla(query, key, value, *, is_causal):
    return jax.nn.dot_product_attention(query, key, value, is_causal=is_causal, implementation="xla")


def tokamax_builder() -> Builder:
    import tokamax
    from absl import flags

    # tokamax 0.0.12 reads its options as absl flags and, when no absl app
    # has parsed them, parses sys.argv itself, which rejects this script's
    # options. Marking the flags as parsed keeps tokamax's defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

    def tokamax_xla_chunked(query, key, value, *, is_causal):
        return tokamax.dot_product_attention(query, key, value, is_causal=is_causal, implementation="xla_chunked")

    return jax_builder(tokamax_xla_chunked)


def torch_builder() -> Builder:
    """Return a builder for torch.nn.functional.scaled_dot_product_attention on the CPU.

    PyTorch takes [B, N, T, H], so the inputs are transposed and made
    contiguous before timing. The forward pass runs under `torch.no_grad()`,
    as a JAX forward pass keeps no residuals either. With T = S, PyTorch's
    top-left causal alignment equals attention_jax's bottom-right one.
    """
    import torch

    def build(config: Config, inputs: Inputs):
        def to_torch(array: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
            tensor = torch.from_numpy(array).transpose(1, 2).contiguous()
            return tensor.requires_grad_(requires_grad)

        needs_grad = config.pass_name == FORWARD_BACKWARD
        query, key, value = (to_torch(array, needs_grad) for array in (inputs.query, inputs.key, inputs.value))
        cotangent = to_torch(inputs.cotangent)
        attention = torch.nn.functional.scaled_dot_product_attention

        if config.pass_name == FORWARD:
            def run():
                with torch.no_grad():
                    return (attention(query, key, value, is_causal=config.is_causal),)
        else:
            def run():
                loss = torch.sum(attention(query, key, value, is_causal=config.is_causal) * cotangent)
                return torch.autograd.grad(loss, (query, key, value))

        def to_numpy(result):
            return [tensor.detach().transpose(1, 2).numpy() for tensor in result]

        return run, to_numpy

    return build


@dataclasses.dataclass
class Contender:
    name: str
    build: Builder
    builds_full_weights: bool = False


def load_contenders(names: Sequence[str]) -> tuple[list[Contender], dict[str, str]]:
    """Return the requested contenders whose packages import, and a reason for each one that is missing."""
    contenders = []
    missing = {}
    for name in names:
        if name == CHUNKED:
            contenders.append(Contender(name, jax_builder(attention_jax_chunked)))
        elif name == REFERENCE:
            contenders.append(Contender(name, jax_builder(attention_jax_reference), builds_full_weights=True))
        elif name == JAX_NN:
            contenders.append(Contender(name, jax_builder(jax_nn_xla), builds_full_weights=True))
        elif name == TOKAMAX:
            try:
                contenders.append(Contender(name, tokamax_builder()))
            except ImportError as error:
                missing[name] = f"tokamax does not import ({error}); install it with `pip install tokamax`"
        elif name == TORCH:
            try:
                contenders.append(Contender(name, torch_builder()))
            except ImportError as error:
                missing[name] = f"torch does not import ({error}); install a CPU build of PyTorch"
    return contenders, missing


# ---------------------------------------------------------------------------
# Matrix-multiply rate


def jax_matmul_runner(size: int = MATMUL_SIZE) -> Runner:
    rng = np.random.default_rng(1)
    left = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32))
    right = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32))
    compiled = jax.jit(jnp.matmul).lower(left, right).compile()
    compiled(left, right).block_until_ready()
    return lambda: compiled(left, right).block_until_ready()


def numpy_matmul_rate(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """Return NumPy's float32 matmul rate in FLOP/s, median of `repeats`, on the BLAS NumPy was built with."""
    rng = np.random.default_rng(1)
    left = rng.standard_normal((size, size), dtype=np.float32)
    right = rng.standard_normal((size, size), dtype=np.float32)
    left @ right
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


# ---------------------------------------------------------------------------
# Measurement


def max_abs_difference(arrays: list[np.ndarray], baseline: list[np.ndarray]) -> tuple[float, bool]:
    """Return the largest |array - baseline| over all pairs and whether it is within ATOL + RTOL * max|baseline|."""
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(arrays, baseline, strict=True))
    scale = max(float(np.max(np.abs(b))) for b in baseline)
    return difference, difference <= ATOL + RTOL * scale


def prepare_runner(config: Config, contender: Contender, inputs: Inputs,
                   max_materialized_bytes: float) -> tuple[dict[str, Any], Runner | None, list[np.ndarray] | None]:
    """Compile and call one contender once.

    Returns its row, runner and result, or a row with the reason and two
    Nones when the contender is skipped or fails.
    """
    row = {"length": config.length, "is_causal": config.is_causal, "pass": config.pass_name,
           "contender": contender.name, "status": "ok"}
    if contender.builds_full_weights and config.materialized_bytes() > max_materialized_bytes:
        row["status"] = "skipped"
        row["reason"] = (f"[B, N, T, S] arrays estimated at {config.materialized_bytes() / 2**30:.3g} GiB, "
                         f"over --max-materialized-gib {max_materialized_bytes / 2**30:g}")
        return row, None, None
    start = time.perf_counter()
    try:
        run, to_numpy = contender.build(config, inputs)
        result = to_numpy(run())
    except Exception as error:  # noqa: BLE001 - a failing peer is reported in its row, not fatal to the run.
        row["status"] = "failed"
        row["reason"] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        print(f"  {contender.name}, {config.label}: failed: {row['reason']}", flush=True)
        return row, None, None
    row["compile_and_first_call_s"] = time.perf_counter() - start
    return row, run, result


def time_in_turns(runners: dict[Any, Runner], repeats: int) -> dict[Any, list[float]]:
    """Call every runner once per repeat and return the seconds of each call.

    Each repeat rotates the order, so no runner always follows the same one.
    """
    order = list(runners)
    seconds: dict[Any, list[float]] = {name: [] for name in order}
    for repeat in range(repeats):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def benchmark_group(configs: list[Config], contenders: list[Contender], inputs: Inputs, matmul: Runner,
                    repeats: int, max_materialized_bytes: float) -> list[dict[str, Any]]:
    """Time every contender on each configuration, all taking turns in one loop, and return one row for each.

    The group contains the causal and non-causal configurations of one length
    and pass, so the causal speedup compares calls made close together in time.
    """
    rows: dict[tuple[Config, str], dict[str, Any]] = {}
    runners: dict[Any, Runner] = {}
    outputs: dict[tuple[Config, str], list[np.ndarray]] = {}
    for config in configs:
        for contender in contenders:
            key = (config, contender.name)
            rows[key], run, result = prepare_runner(config, contender, inputs, max_materialized_bytes)
            if run is not None:
                runners[key] = run
                outputs[key] = result

    runners[MATMUL] = matmul
    seconds = time_in_turns(runners, repeats)
    matmul_rate = 2 * MATMUL_SIZE**3 / statistics.median(seconds.pop(MATMUL))

    for (config, name), samples in seconds.items():
        row = rows[(config, name)]
        median = statistics.median(samples)
        rate = config.flops() / median
        chunked = seconds.get((config, CHUNKED))
        row.update({
            "seconds": samples,
            "median_s": median,
            "spread": (max(samples) - min(samples)) / median,
            "gflops": rate / 1e9,
            "matmul_gflops": matmul_rate / 1e9,
            "fraction_of_matmul": rate / matmul_rate,
            "ratio_to_chunked": median / statistics.median(chunked) if chunked else None,
        })
        if (config, CHUNKED) in outputs:
            difference, within = max_abs_difference(outputs[(config, name)], outputs[(config, CHUNKED)])
            row["max_abs_diff"] = difference
            row["numerics_ok"] = within
    return list(rows.values())


def config_groups(args: argparse.Namespace) -> list[list[Config]]:
    """Return the configurations to run, grouped by length and pass, each group non-causal then causal."""
    return [
        [Config(length, is_causal, pass_name, args.batch, args.heads, args.head_dim) for is_causal in (False, True)]
        for length in args.lengths
        for pass_name in (FORWARD, FORWARD_BACKWARD)
    ]


# ---------------------------------------------------------------------------
# Targets


@dataclasses.dataclass(frozen=True)
class Target:
    description: str
    minimum: float
    unit: str  # "x" for a time ratio, "%" for a fraction of the matmul rate
    measure: Callable[[dict], float | None]


def find_row(rows_by_key: dict, pass_name: str, is_causal: bool, length: int, contender: str) -> dict | None:
    row = rows_by_key.get((pass_name, is_causal, length, contender))
    return row if row is not None and row["status"] == "ok" else None


def peer_ratio(pass_name: str, is_causal: bool, length: int, peer: str) -> Callable[[dict], float | None]:
    def measure(rows_by_key):
        row = find_row(rows_by_key, pass_name, is_causal, length, peer)
        return None if row is None else row["ratio_to_chunked"]
    return measure


def chunked_fraction(pass_name: str, is_causal: bool, length: int) -> Callable[[dict], float | None]:
    def measure(rows_by_key):
        row = find_row(rows_by_key, pass_name, is_causal, length, CHUNKED)
        return None if row is None else row["fraction_of_matmul"]
    return measure


def causal_speedup(pass_name: str, length: int) -> Callable[[dict], float | None]:
    def measure(rows_by_key):
        full = find_row(rows_by_key, pass_name, False, length, CHUNKED)
        causal = find_row(rows_by_key, pass_name, True, length, CHUNKED)
        return None if full is None or causal is None else full["median_s"] / causal["median_s"]
    return measure


# Speed targets for the chunked implementation on a CPU. A ratio is the other
# time divided by the chunked time, so above 1 means chunked is faster.
TARGETS = (
    Target("forward non-causal 4096: chunked vs torch sdpa", 1.5, "x", peer_ratio(FORWARD, False, 4096, TORCH)),
    Target("forward non-causal 4096: chunked vs tokamax xla_chunked", 2.0, "x", peer_ratio(FORWARD, False, 4096, TOKAMAX)),
    Target("forward non-causal 4096: chunked vs jax.nn xla", 4.0, "x", peer_ratio(FORWARD, False, 4096, JAX_NN)),
    Target("forward non-causal 4096: chunked fraction of matmul rate", 0.55, "%", chunked_fraction(FORWARD, False, 4096)),
    Target("forward 4096: chunked causal vs chunked non-causal", 1.8, "x", causal_speedup(FORWARD, 4096)),
    Target("forward+backward non-causal 2048: chunked vs torch sdpa", 1.2, "x", peer_ratio(FORWARD_BACKWARD, False, 2048, TORCH)),
    Target("forward+backward non-causal 2048: chunked vs jax.nn xla", 3.0, "x", peer_ratio(FORWARD_BACKWARD, False, 2048, JAX_NN)),
)


def evaluate_targets(rows: list[dict]) -> list[dict[str, Any]]:
    rows_by_key = {(row["pass"], row["is_causal"], row["length"], row["contender"]): row for row in rows}
    results = []
    for target in TARGETS:
        value = target.measure(rows_by_key)
        results.append({
            "target": target.description,
            "minimum": target.minimum,
            "unit": target.unit,
            "measured": value,
            "met": None if value is None else value >= target.minimum,
        })
    return results


def format_target(result: dict[str, Any]) -> str:
    def show(value):
        return f"{value:.0%}" if result["unit"] == "%" else f"{value:.2f}x"

    if result["measured"] is None:
        return f"{result['target']}: not measured in this run (target >= {show(result['minimum'])})"
    verdict = "met" if result["met"] else "not met"
    return f"{result['target']}: {show(result['measured'])} (target >= {show(result['minimum'])}): {verdict}"


# ---------------------------------------------------------------------------
# Reports


TABLE_HEADER = ("pass", "mask", "T=S", "contender", "time (ms)", "spread", "GFLOP/s", "of matmul",
                "peer/chunked time", "max abs diff", "numerics")


def table_cells(row: dict[str, Any]) -> tuple[str, ...]:
    mask = "causal" if row["is_causal"] else "non-causal"
    config = (row["pass"], mask, str(row["length"]), row["contender"])
    if row["status"] != "ok":
        return config + (f"{row['status']}: {row['reason']}",) + ("",) * (len(TABLE_HEADER) - 5)
    ratio = "" if row["ratio_to_chunked"] is None else f"{row['ratio_to_chunked']:.2f}"
    difference = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else ""
    numerics = ""
    if "numerics_ok" in row:
        numerics = "ok" if row["numerics_ok"] else "MISMATCH"
    return config + (f"{row['median_s'] * 1e3:.1f}", f"{row['spread']:.0%}", f"{row['gflops']:.1f}",
                     f"{row['fraction_of_matmul']:.0%}", ratio, difference, numerics)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[dict[str, Any]]) -> str:
    cells = [TABLE_HEADER] + [table_cells(row) for row in rows]
    widths = [max(len(line[column]) for line in cells if len(line[column]) < 40) for column in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def describe_run(record: dict[str, Any]) -> list[str]:
    machine = record["machine"]
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["versions"].items())
    shape = record["shape"]
    return [
        f"Command: `{record['command']}`",
        f"Date (UTC): {record['date']}",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, {machine['platform']}; "
        f"load average {machine['load_average_at_start'][0]:.2f} at start, {record['load_average_at_end'][0]:.2f} at end",
        f"Versions: {versions}; attention_jax at {machine['attention_jax_revision']}",
        f"PyTorch threads: {record['torch_threads']}",
        f"Shape: float32, B={shape['batch']}, N=K={shape['heads']}, H={shape['head_dim']}; "
        f"median of {record['repeats']} timed calls after one untimed call",
        f"Matmul rate (float32 {MATMUL_SIZE}x{MATMUL_SIZE} @ {MATMUL_SIZE}x{MATMUL_SIZE}): JAX jitted "
        f"{record['jax_matmul_gflops']:.0f} GFLOP/s (median over the run), NumPy {record['numpy_matmul_gflops']:.0f} GFLOP/s",
        "FLOPs: forward 4*B*N*T*S*H, causal half of it, forward+backward "
        f"{FORWARD_BACKWARD_FLOP_FACTOR} times the forward count",
    ]


def markdown_report(record: dict[str, Any], heading: str = "##") -> str:
    """Format the run description, the table, the targets and the missing contenders as Markdown."""
    lines = [f"- {line}" for line in describe_run(record)]
    lines += ["", "`peer/chunked time` above 1 means attention_jax chunked is faster. `of matmul` divides GFLOP/s by "
              "the JAX matmul rate measured between the same timed calls. `spread` is (slowest - fastest) / median "
              "of the timed calls. `max abs diff` compares outputs (forward) or gradients with respect to query, "
              "key and value (forward+backward) with chunked's.", ""]
    lines += [markdown_table(record["rows"]), "", f"{heading} Targets", ""]
    lines += [f"- {format_target(result)}" for result in record["targets"]]
    if record["missing"]:
        lines += ["", f"{heading} Missing contenders", ""]
        lines += [f"- {name}: {reason}" for name, reason in record["missing"].items()]
    return "\n".join(lines)


README_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")


def update_readme(block: str, text: str, path: str = README_PATH) -> None:
    """Replace the text between the `<!-- BLOCK: begin -->` and `<!-- BLOCK: end -->` lines of the README."""
    begin, end = f"<!-- {block}: begin -->", f"<!-- {block}: end -->"
    with open(path, encoding="utf-8") as file:
        content = file.read()
    if begin not in content or end not in content:
        sys.exit(f"{path} is missing the lines {begin} and {end} that enclose the results. Add them, or "
                 "rerun without --update-readme.")
    before = content[:content.index(begin) + len(begin)]
    after = content[content.index(end):]
    with open(path, "w", encoding="utf-8") as file:
        file.write(f"{before}\n{text}\n{after}")
    print(f"Results copied into {path}")


def write_plot(path: str, record: dict[str, Any]) -> bool:
    """Draw GFLOP/s against length in one panel per pass and mask, and return False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    rows = [row for row in record["rows"] if row["status"] == "ok"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, constrained_layout=True)
    for row_index, pass_name in enumerate((FORWARD, FORWARD_BACKWARD)):
        for column_index, is_causal in enumerate((False, True)):
            axis = axes[row_index][column_index]
            panel = [row for row in rows if row["pass"] == pass_name and row["is_causal"] == is_causal]
            for color, name in zip(plt.get_cmap("tab10").colors, CONTENDER_NAMES):
                points = sorted((row["length"], row["gflops"]) for row in panel if row["contender"] == name)
                if points:
                    lengths, rates = zip(*points)
                    axis.plot(lengths, rates, marker="o", color=color, label=name,
                              linewidth=2.5 if name == CHUNKED else 1.5)
            axis.axhline(record["jax_matmul_gflops"], color="gray", linestyle="--", label="JAX float32 matmul (median of the run)")
            axis.set_xscale("log", base=2)
            axis.set_xticks(record["lengths"], [str(length) for length in record["lengths"]])
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.set_title(f"{pass_name}, {'causal' if is_causal else 'non-causal'}")
            if row_index == 1:
                axis.set_xlabel("sequence length T = S")
            if column_index == 0:
                axis.set_ylabel("GFLOP/s (causal counts half)")
    handles = {}
    for axis in axes.flat:
        handles.update(zip(*reversed(axis.get_legend_handles_labels())))
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3, fontsize=9)
    machine = record["machine"]
    figure.suptitle(f"float32 attention, B={record['shape']['batch']}, N={record['shape']['heads']}, "
                    f"H={record['shape']['head_dim']} on {machine['cpu_model']} ({machine['usable_cores']} cores)\n"
                    f"FLOPs: forward 4*B*N*T*S*H, causal half, forward+backward {FORWARD_BACKWARD_FLOP_FACTOR}x forward")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------
# Long sequence in a child process


def run_long_child(length: int, batch: int, heads: int, head_dim: int, seed: int) -> None:
    """Run one causal chunked forward pass and print its timings as one JSON line."""
    shape = (batch, length, heads, head_dim)
    keys = jax.random.split(jax.random.key(seed), 3)
    query, key, value = (jax.random.normal(k, shape, jnp.float32) for k in keys)
    jax.block_until_ready((query, key, value))
    # On Linux ru_maxrss is in KiB. This peak covers the interpreter, JAX and the inputs.
    baseline_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    start = time.perf_counter()
    compiled = jax.jit(lambda q, k, v: attention_jax_chunked(q, k, v, is_causal=True)).lower(query, key, value).compile()
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    output = compiled(query, key, value).block_until_ready()
    run_seconds = time.perf_counter() - start
    print(json.dumps({
        "peak_rss_before_compile_bytes": baseline_bytes,
        "compile_s": compile_seconds,
        "run_s": run_seconds,
        "output_is_finite": bool(jnp.isfinite(output).all()),
    }))


def long_markdown(record: dict[str, Any]) -> str:
    machine = record["machine"]
    shape = record["shape"]
    return "\n".join([
        f"- Command: `{record['command']}`",
        f"- Date (UTC): {record['date']}",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores; "
        f"jax {machine['versions']['jax']}; attention_jax at {machine['attention_jax_revision']}",
        f"- One causal chunked forward pass, float32, T=S={record['length']}, B={shape['batch']}, "
        f"N={shape['heads']}, H={shape['head_dim']}: {record['run_s']:.1f} s ({record['gflops']:.1f} GFLOP/s, "
        f"causal counts half), compilation {record['compile_s']:.1f} s",
        f"- Peak resident memory of the child process: {record['peak_rss_bytes'] / 2**30:.2f} GiB, of which "
        f"{record['peak_rss_before_compile_bytes'] / 2**30:.2f} GiB before compiling (interpreter, JAX and inputs). "
        f"One [B, N, T, S] float32 array would take {record['full_weights_bytes'] / 2**30:.0f} GiB.",
    ])


def run_long(args: argparse.Namespace) -> None:
    config = Config(args.long, True, FORWARD, args.batch, args.heads, args.head_dim)
    command = [sys.executable, os.path.abspath(__file__), "--long-child", str(args.long), "--batch", str(args.batch),
               "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--seed", str(args.seed)]
    print(f"Running one chunked causal forward pass at T=S={args.long} in a child process ...", flush=True)
    start = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True)
    wall_seconds = time.perf_counter() - start
    # RUSAGE_CHILDREN covers the one child started above.
    peak_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if child.returncode != 0:
        sys.exit(f"The child process failed with exit code {child.returncode}:\n{child.stderr[-4000:]}")
    timings = json.loads(child.stdout.strip().splitlines()[-1])

    input_bytes = 4 * 4 * args.batch * args.long * args.heads * args.head_dim  # query, key, value, output
    record = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "length": args.long,
        "shape": {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim},
        "peak_rss_bytes": peak_bytes,
        "query_key_value_output_bytes": input_bytes,
        "full_weights_bytes": 4 * config.batch * config.heads * config.length**2,
        "child_wall_s": wall_seconds,
        "gflops": config.flops() / timings["run_s"] / 1e9,
        **timings,
    }
    print(f"T=S={args.long}, causal forward, B={args.batch}, N={args.heads}, H={args.head_dim}, float32")
    print(f"  time: {timings['run_s']:.1f} s ({record['gflops']:.1f} GFLOP/s, causal counts half), "
          f"compile {timings['compile_s']:.1f} s, output finite: {timings['output_is_finite']}")
    print(f"  peak resident memory of the child: {peak_bytes / 2**30:.2f} GiB, of which "
          f"{timings['peak_rss_before_compile_bytes'] / 2**30:.2f} GiB before compiling "
          f"(query, key, value and output: {input_bytes / 2**30:.2f} GiB; "
          f"one [B, N, T, S] float32 array would be {record['full_weights_bytes'] / 2**30:.0f} GiB)")
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "attention_speed_long.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=2)
        file.write("\n")
    print(f"Result written to {path}")
    if args.update_readme:
        update_readme("attention_speed_long", long_markdown(record))


# ---------------------------------------------------------------------------
# Main


def torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def run_comparison(args: argparse.Namespace) -> None:
    machine = machine_info()
    contenders, missing = load_contenders(args.contenders)
    for name, reason in missing.items():
        print(f"{name}: missing: {reason}", flush=True)
    print(f"Measuring the NumPy and JAX float32 matmul rates ({MATMUL_SIZE}x{MATMUL_SIZE}) ...", flush=True)
    numpy_rate = numpy_matmul_rate()
    matmul = jax_matmul_runner()

    rows = []
    groups = config_groups(args)
    inputs = None
    start = time.perf_counter()
    for index, group in enumerate(groups, 1):
        config = group[0]
        print(f"[{index}/{len(groups)}] {config.pass_name} T=S={config.length}, causal and non-causal "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
        if inputs is None or inputs.query.shape[1] != config.length:
            inputs = make_inputs(args.batch, config.length, args.heads, args.head_dim, args.seed)
        rows += benchmark_group(group, contenders, inputs, matmul, args.repeats, args.max_materialized_gib * 2**30)

    matmul_rates = list({(row["length"], row["pass"]): row["matmul_gflops"] for row in rows if "matmul_gflops" in row}.values())
    record = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch_threads() if TORCH in args.contenders else None,
        "shape": {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim},
        "lengths": args.lengths,
        "repeats": args.repeats,
        "flop_convention": {"forward": "4*B*N*T*S*H", "causal": "half of the forward count",
                            "forward_backward_factor": FORWARD_BACKWARD_FLOP_FACTOR},
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "numpy_matmul_gflops": numpy_rate / 1e9,
        "jax_matmul_gflops": statistics.median(matmul_rates) if matmul_rates else float("nan"),
        "missing": missing,
        "rows": rows,
    }
    record["targets"] = evaluate_targets(rows)

    print()
    for line in describe_run(record):
        print(line.replace("`", ""))
    print()
    print(text_table(rows))
    print()
    print("Targets (peer/chunked time above 1 means chunked is faster):")
    for result in record["targets"]:
        print(f"  {format_target(result)}")
    for name, reason in missing.items():
        print(f"Missing: {name}: {reason}")

    os.makedirs(args.output_dir, exist_ok=True)
    paths = [os.path.join(args.output_dir, f"attention_speed.{suffix}") for suffix in ("json", "md", "png")]
    with open(paths[0], "w", encoding="utf-8") as file:
        json.dump(record, file, indent=2)
        file.write("\n")
    with open(paths[1], "w", encoding="utf-8") as file:
        file.write(f"# Attention speed\n\n{markdown_report(record)}\n")
    if not write_plot(paths[2], record):
        print("matplotlib is missing, so no plot was drawn; install it with `pip install matplotlib`")
        paths.pop()
    print("Results written to " + ", ".join(paths))
    if args.update_readme:
        update_readme("attention_speed", markdown_report(record, heading="####"))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.long_child is not None:
        run_long_child(args.long_child, args.batch, args.heads, args.head_dim, args.seed)
    elif args.long is not None:
        run_long(args)
    else:
        run_comparison(args)


if __name__ == "__main__":
    main()
