"""Attention speed: attention_jax's chunked path against its reference path, jax.nn, tokamax and PyTorch.

Every contender runs on the same random inputs (batch 1, 8 heads, head
dimension 64 by default) for each sequence length, causal and non-causal
(and with `--window W` a causal sliding window of W keys before each query),
forward and forward+backward. The inputs are drawn in float32, and each
contender casts them to `--dtype` (float32 by default, or bfloat16).
Compilation happens before the timed region. Every timed call waits for
its result: `block_until_ready` in JAX, and a plain call in PyTorch, which
is synchronous on the CPU. The contenders take turns within each repeat, in
a new random order each time, so that drift of a shared machine hits all
alike, and each call starts once the process is idle.
A jitted matrix multiply in that dtype, with a float32 result, takes its
turn with them, so each attention throughput is also given as a fraction of
the matmul rate of the same moment.

    python benchmarks/attention_speed.py                  # lengths 1024 2048 4096
    python benchmarks/attention_speed.py --quick          # lengths 512 1024, about 25 s on 2 idle cores
    python benchmarks/attention_speed.py --lengths 8192   # other lengths
    python benchmarks/attention_speed.py --dtype bfloat16 # bfloat16 inputs
    python benchmarks/attention_speed.py --window 1023 --masks window  # sliding window only
    python benchmarks/attention_speed.py --kv-heads 2     # grouped-query attention, 4 query heads per key head
    python benchmarks/attention_speed.py --long 131072    # peak memory of one long causal pass

Results go to `--output-dir` (benchmarks/results, or benchmarks/results/quick
with --quick) as attention_speed.json, attention_speed.md and
attention_speed.png; runs with a window mask or --kv-heads add _window or
_gqa to the name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

# Python puts the folder of a script it runs, benchmarks/, first on sys.path,
# so the package next to this file imports by its plain name.
from attention_speed_lib.configs import (
    CAUSAL, CONTENDER_KEYS, DTYPES, FORWARD, FORWARD_BACKWARD_FLOP_FACTOR, MASK_KINDS, MATMUL_SIZE, NON_CAUSAL, TORCH,
    WINDOW, Config, make_inputs,
)
from attention_speed_lib.contenders import load_contenders
from attention_speed_lib.long_sequence import long_markdown, run_long_child
from attention_speed_lib.machine import command_line, machine_info, torch_threads
from attention_speed_lib.report import describe_run, markdown_report, text_table, update_readme, write_plot
from attention_speed_lib.targets import evaluate_targets, format_target
from attention_speed_lib.timing import TOLERANCES, benchmark_group, config_groups, jax_matmul_runner, numpy_matmul_rate

DEFAULT_LENGTHS = (1024, 2048, 4096)
QUICK_LENGTHS = (512, 1024)
RESULTS_DIR = "benchmarks/results"
QUICK_RESULTS_DIR = "benchmarks/results/quick"


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=None,
        help=f"sequence lengths T = S to compare (default: {' '.join(map(str, DEFAULT_LENGTHS))})",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender and configuration (default: 7, or 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"lengths {' '.join(map(str, QUICK_LENGTHS))} and 3 repeats, about 25 s on 2 idle cores")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default: 1)")
    parser.add_argument("--heads", type=int, default=8, help="number of heads N = K (default: 8)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension H (default: 64)")
    parser.add_argument(
        "--kv-heads", type=int, default=None,
        help="key and value heads K, a divisor of --heads, for grouped-query (K > 1) or multi-query (K = 1) "
             "attention (default: K = N)",
    )
    parser.add_argument(
        "--window", type=int, default=None, metavar="W",
        help="also run a causal sliding window in which each query sees itself and the W keys before it "
             "(jax.nn's local_window_size=(W, 0); PyTorch gets the same mask as a boolean [T, S] array)",
    )
    parser.add_argument(
        "--masks", nargs="+", choices=MASK_KINDS, default=None,
        help=f"mask kinds to run, in this order within each length and pass (default: {NON_CAUSAL} {CAUSAL}, "
             f"and {WINDOW} when --window is given)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32",
        help="dtype that every contender casts the float32 random query, key, value and cotangent to, and of "
             "the JAX matmul that 'of matmul' divides by (default: float32). Outputs and gradients are compared "
             "in float32. --long and --update-readme accept only float32.",
    )
    parser.add_argument(
        "--contenders", nargs="+", choices=list(CONTENDER_KEYS), default=list(CONTENDER_KEYS), metavar="NAME",
        help=f"contenders to run (default: all of {' '.join(CONTENDER_KEYS)})",
    )
    parser.add_argument(
        "--max-materialized-gib", type=float, default=4.0,
        help="skip a contender that builds [B, N, T, S] arrays (reference, jax.nn xla, which build them in "
             "float32 at either --dtype) when their estimated size exceeds this many GiB (default: 4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument(
        "--output-dir", default=None,
        help=f"folder for the JSON, Markdown and PNG results (default: {RESULTS_DIR}, or {QUICK_RESULTS_DIR} "
             "with --quick, so that a quick run leaves the committed results alone)",
    )
    parser.add_argument(
        "--long", type=int, default=None, metavar="LENGTH",
        help="instead of the comparison, run one causal chunked forward pass at this length in a child "
             "process and report its time and peak resident memory (minutes at 131072)",
    )
    parser.add_argument(
        "--update-readme", action="store_true",
        help="also copy the results into benchmarks/README.md, between the begin and end marker lines of its "
             "block: attention_speed, with --long attention_speed_long, and with a window mask or --kv-heads "
             "the suffix _window or _gqa (the same name as the result files). Accepts only --dtype float32, "
             "because the README tables are float32.",
    )
    parser.add_argument("--long-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.lengths is None:
        args.lengths = list(QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.output_dir is None:
        args.output_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    sizes = {"--lengths": min(args.lengths), "--repeats": args.repeats, "--batch": args.batch,
             "--heads": args.heads, "--head-dim": args.head_dim}
    for option, value in sizes.items():
        if value < 1:
            parser.error(f"{option} must be positive, but got {value}")
    if args.long is not None and args.long < 1:
        parser.error(f"--long must be positive, but got {args.long}")
    if args.kv_heads is not None and (args.kv_heads < 1 or args.heads % args.kv_heads):
        parser.error(f"--kv-heads must be a positive divisor of --heads {args.heads}, but got {args.kv_heads}")
    if args.window is not None and args.window < 0:
        parser.error(f"--window must be at least 0, but got {args.window}")
    if args.masks is None:
        args.masks = [NON_CAUSAL, CAUSAL] + ([WINDOW] if args.window is not None else [])
    args.masks = list(dict.fromkeys(args.masks))
    if WINDOW in args.masks and args.window is None:
        parser.error("--masks window needs --window W, the number of keys each query sees before itself")
    if args.window is not None and WINDOW not in args.masks:
        parser.error(f"--window {args.window} is given, but --masks {' '.join(args.masks)} leaves out window")
    if args.long is not None and (args.window is not None or args.kv_heads is not None
                                  or args.masks != [NON_CAUSAL, CAUSAL]):
        parser.error("--long runs one causal pass with K = N, so it takes none of --window, --kv-heads and --masks")
    if args.long is not None and args.dtype != "float32":
        parser.error(f"--long supports only float32, but got --dtype {args.dtype}. Remove --dtype or --long.")
    if args.update_readme and args.dtype != "float32":
        parser.error(f"--update-readme copies results into the float32 table of benchmarks/README.md, so it "
                     f"requires --dtype float32, but got --dtype {args.dtype}. Remove --update-readme; the "
                     "results are still written to --output-dir.")
    if "chunked" not in args.contenders:
        parser.error("--contenders must include chunked, the baseline of every ratio and numerics check")
    args.contenders = [CONTENDER_KEYS[key] for key in dict.fromkeys(args.contenders)]
    return args


# ---------------------------------------------------------------------------
# Long sequence in a child process


def run_long(args: argparse.Namespace) -> None:
    config = Config(args.long, True, FORWARD, args.batch, args.heads, args.head_dim, "float32")
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
          f"one [B, N, T, S] float32 array would be {record['full_weights_bytes'] / 2**30:.3g} GiB)")
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



def result_name(args: argparse.Namespace) -> str:
    """Return the stem of the result files and README block: attention_speed, plus _window and _gqa where they apply."""
    return ("attention_speed" + ("_window" if WINDOW in args.masks else "")
            + ("_gqa" if args.kv_heads is not None else ""))


def run_comparison(args: argparse.Namespace) -> None:
    machine = machine_info()
    contenders, missing = load_contenders(args.contenders)
    for name, reason in missing.items():
        print(f"{name}: missing: {reason}", flush=True)
    if args.dtype == "float32":
        matmul_dtypes = "NumPy and JAX float32"
    else:
        matmul_dtypes = f"NumPy float32 and JAX {args.dtype}"
    print(f"Measuring the {matmul_dtypes} matmul rates ({MATMUL_SIZE}x{MATMUL_SIZE}) ...", flush=True)
    numpy_rate = numpy_matmul_rate()
    matmul = jax_matmul_runner(args.dtype)

    rows = []
    groups = config_groups(args)
    inputs = None
    start = time.perf_counter()
    for index, group in enumerate(groups, 1):
        config = group[0]
        masks = ", ".join(member.mask for member in group)
        print(f"[{index}/{len(groups)}] {config.pass_name} T=S={config.length}, {masks} "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
        if inputs is None or inputs.query.shape[1] != config.length:
            inputs = make_inputs(args.batch, config.length, args.heads, args.head_dim, args.seed, args.kv_heads)
        rows += benchmark_group(group, contenders, inputs, matmul, args.repeats, args.max_materialized_gib * 2**30)

    matmul_rates = list({(row["length"], row["pass"]): row["matmul_gflops"] for row in rows if "matmul_gflops" in row}.values())
    record = {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine,
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch_threads() if TORCH in args.contenders else None,
        "shape": {"batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim},
        "dtype": args.dtype,
        "lengths": args.lengths,
        "masks": [member.mask for member in groups[0]] if groups else [],
        "repeats": args.repeats,
        "flop_convention": {"forward": "4*B*N*T*S*H", "causal": "half of the forward count",
                            "window": "the share of (query, key) pairs that the mask leaves visible",
                            "forward_backward_factor": FORWARD_BACKWARD_FLOP_FACTOR},
        "tolerance": TOLERANCES[args.dtype],
        "numpy_matmul_gflops": numpy_rate / 1e9,
        "jax_matmul_gflops": statistics.median(matmul_rates) if matmul_rates else float("nan"),
        "missing": missing,
        "rows": rows,
    }
    # The speed targets were set for float32, against the float32 matmul rate,
    # with K = N, and they all include a non-causal configuration.
    reasons = {"they are set for float32 and this run is " + args.dtype: args.dtype != "float32",
               "they are set for K = N and this run has --kv-heads": args.kv_heads is not None,
               f"they all involve {NON_CAUSAL} runs and this one has none": NON_CAUSAL not in args.masks}
    skip_reason = next((reason for reason, applies in reasons.items() if applies), None)
    record["targets"] = evaluate_targets(rows) if skip_reason is None else []

    print()
    for line in describe_run(record):
        print(line.replace("`", ""))
    print()
    print(text_table(rows))
    print()
    if record["targets"]:
        print("Targets (peer/chunked time above 1 means chunked is faster):")
        for result in record["targets"]:
            print(f"  {format_target(result)}")
    else:
        print(f"Targets: not evaluated, because {skip_reason}.")
    for name, reason in missing.items():
        print(f"Missing: {name}: {reason}")

    os.makedirs(args.output_dir, exist_ok=True)
    name = result_name(args)
    paths = [os.path.join(args.output_dir, f"{name}.{suffix}") for suffix in ("json", "md", "png")]
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
        update_readme(name, markdown_report(record, heading="####"))


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
