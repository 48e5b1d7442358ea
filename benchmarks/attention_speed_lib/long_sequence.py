"""Long sequence: the causal chunked forward pass that `--long` runs in a child process, and its Markdown summary."""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp

from .contenders import attention_jax_chunked


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
        f"One [B, N, T, S] float32 array would take {record['full_weights_bytes'] / 2**30:.3g} GiB.",
    ])
