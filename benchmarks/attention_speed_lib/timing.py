"""Matrix-multiply rate, numerics check and timing of contenders that take turns."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .configs import CHUNKED, FORWARD, FORWARD_BACKWARD, MATMUL, MATMUL_SIZE, NON_CAUSAL, WINDOW, Config, Inputs
from .contenders import Contender, Runner

# Outputs and gradients must agree with the chunked contender's within
# atol + rtol * max|chunked|, with the atol and rtol of the run's dtype. The
# float32 contenders, which sum in different orders, differed from chunked by
# at most 4e-6 at lengths 512 to 4096 in runs of this script on a 2-core
# x86-64 CPU. In bfloat16 the contenders also round intermediate results at
# different steps, and one bfloat16 rounding alone is off by up to 2**-8
# (0.4%) relative. In one `--quick --dtype bfloat16` run on that CPU they
# differed from chunked by at most 3.1e-2 (torch sdpa's causal gradients).
TOLERANCES = {
    "float32": {"atol": 1e-5, "rtol": 1e-4},
    "bfloat16": {"atol": 1e-2, "rtol": 2e-2},
}


def jax_matmul_runner(dtype: str, size: int = MATMUL_SIZE) -> Runner:
    """Return a runner of one jitted matmul of two `dtype` matrices with a float32 result."""
    rng = np.random.default_rng(1)
    left = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32)).astype(dtype)
    right = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32)).astype(dtype)

    def matmul(left, right):
        return jnp.matmul(left, right, preferred_element_type=jnp.float32)

    compiled = jax.jit(matmul).lower(left, right).compile()
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


def max_abs_difference(arrays: list[np.ndarray], baseline: list[np.ndarray], dtype: str) -> tuple[float, bool]:
    """Return the largest |array - baseline| over all pairs and whether it is within atol + rtol * max|baseline|.

    The atol and rtol are those of `dtype` in TOLERANCES.
    """
    tolerance = TOLERANCES[dtype]
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(arrays, baseline, strict=True))
    scale = max(float(np.max(np.abs(b))) for b in baseline)
    return difference, difference <= tolerance["atol"] + tolerance["rtol"] * scale


def prepare_runner(config: Config, contender: Contender, inputs: Inputs,
                   max_materialized_bytes: float) -> tuple[dict[str, Any], Runner | None, list[np.ndarray] | None]:
    """Compile and call one contender once.

    Returns its row, runner and result, or a row with the reason and two
    Nones when the contender is skipped or fails.
    """
    row = {"length": config.length, "mask": config.mask, "is_causal": config.is_causal, "window": config.window,
           "pass": config.pass_name,
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


def wait_until_idle(window_s: float = 0.02, busy_fraction: float = 0.05, limit_s: float = 2.0) -> float:
    """Sleep until this process uses less than `busy_fraction` of one core over `window_s`; return the seconds waited.

    A call can leave work running after it returns: JAX frees a large
    computation's buffers on another thread (about 0.1 s of system time after
    a 4096-token `jax.nn` pass), and PyTorch's OpenMP threads spin before they
    sleep. Without this wait that work slowed the next contender's call by up
    to a third on a 2-core CPU. Gives up after `limit_s`.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        cpu = time.process_time()
        time.sleep(window_s)
        if time.process_time() - cpu < busy_fraction * window_s:
            break
    return time.perf_counter() - start


def paired_median(numerators: list[float], denominators: list[float]) -> float:
    """Return the median over repeats of one time divided by another from the same repeat.

    When a shared machine slows down for a few repeats, both times of a
    repeat slow down together, so their ratio is steadier than the ratio of
    the two medians.
    """
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def time_in_turns(runners: dict[Any, Runner], repeats: int, seed: int = 0) -> dict[Any, list[float]]:
    """Call every runner once per repeat and return the seconds of each call.

    Each repeat calls the runners in a new random order (seeded), so no
    runner always follows the same one, and each call starts once the
    process is idle (`wait_until_idle`).
    """
    order = list(runners)
    shuffler = random.Random(seed)
    seconds: dict[Any, list[float]] = {name: [] for name in order}
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            wait_until_idle()
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def benchmark_group(configs: list[Config], contenders: list[Contender], inputs: Inputs, matmul: Runner,
                    repeats: int, max_materialized_bytes: float) -> list[dict[str, Any]]:
    """Time every contender on each configuration, all taking turns in one loop, and return one row for each.

    The group contains the configurations of every mask kind for one length
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
    matmul_seconds = seconds.pop(MATMUL)
    matmul_flops = 2 * MATMUL_SIZE**3
    matmul_rate = matmul_flops / statistics.median(matmul_seconds)

    for (config, name), samples in seconds.items():
        row = rows[(config, name)]
        median = statistics.median(samples)
        chunked = seconds.get((config, CHUNKED))
        row.update({
            "seconds": samples,
            "median_s": median,
            "spread": (max(samples) - min(samples)) / median,
            "gflops": config.flops() / median / 1e9,
            "matmul_gflops": matmul_rate / 1e9,
            "fraction_of_matmul": config.flops() / matmul_flops * paired_median(matmul_seconds, samples),
            "ratio_to_chunked": paired_median(samples, chunked) if chunked else None,
        })
        if (config, CHUNKED) in outputs:
            difference, within = max_abs_difference(outputs[(config, name)], outputs[(config, CHUNKED)], config.dtype)
            row["max_abs_diff"] = difference
            row["numerics_ok"] = within
    return list(rows.values())


def config_groups(args: argparse.Namespace) -> list[list[Config]]:
    """Return the configurations to run, grouped by length and pass, each group in the order of `args.masks`."""

    def config(length: int, pass_name: str, mask: str) -> Config:
        return Config(length, mask != NON_CAUSAL, pass_name, args.batch, args.heads, args.head_dim, args.dtype,
                      window=args.window if mask == WINDOW else None, kv_heads=args.kv_heads)

    return [[config(length, pass_name, mask) for mask in args.masks]
            for length in args.lengths
            for pass_name in (FORWARD, FORWARD_BACKWARD)]
