"""Reports of a comparison: text and Markdown tables, the README block and the plot."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

from .configs import CHUNKED, CONTENDER_NAMES, FORWARD, FORWARD_BACKWARD, FORWARD_BACKWARD_FLOP_FACTOR, MATMUL_SIZE
from .targets import format_target


TABLE_HEADER = ("pass", "mask", "T=S", "contender", "time (ms)", "spread", "GFLOP/s", "of matmul",
                "peer/chunked time", "max abs diff", "numerics")


def table_cells(row: dict[str, Any]) -> tuple[str, ...]:
    config = (row["pass"], row["mask"], str(row["length"]), row["contender"])
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


def matmul_description(record: dict[str, Any]) -> str:
    """Format the JAX and NumPy matmul rates of a run, with the dtypes they were measured in, as one line."""
    size = f"{MATMUL_SIZE}x{MATMUL_SIZE} @ {MATMUL_SIZE}x{MATMUL_SIZE}"
    jax_rate = f"{record['jax_matmul_gflops']:.0f} GFLOP/s (median over the run)"
    numpy_rate = f"{record['numpy_matmul_gflops']:.0f} GFLOP/s"
    if record["dtype"] == "float32":
        return f"Matmul rate (float32 {size}): JAX jitted {jax_rate}, NumPy {numpy_rate}"
    return (f"Matmul rate ({size}): JAX jitted, {record['dtype']} inputs and float32 result, {jax_rate}; "
            f"NumPy, float32 because NumPy has no {record['dtype']}, {numpy_rate}")


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
        f"Shape: {record['dtype']}, B={shape['batch']}, {heads_description(shape)}, H={shape['head_dim']}; "
        f"median of {record['repeats']} timed calls after one untimed call",
        matmul_description(record),
        f"FLOPs: {flop_description(record)}",
    ]


def heads_description(shape: dict[str, Any]) -> str:
    kv_heads = shape.get("kv_heads")
    if kv_heads is None or kv_heads == shape["heads"]:
        return f"N=K={shape['heads']}"
    return f"N={shape['heads']}, K={kv_heads}"


def flop_description(record: dict[str, Any]) -> str:
    """Describe the FLOP convention, with the window rule only when the run has a window."""
    window = ("; a window W counts the (query, key) pairs with t - W <= s <= t"
              if any(row["window"] is not None for row in record["rows"]) else "")
    return (f"forward 4*B*N*T*S*H, causal half of it{window}; forward+backward "
            f"{FORWARD_BACKWARD_FLOP_FACTOR} times the forward count")


def markdown_report(record: dict[str, Any], heading: str = "##") -> str:
    """Format the run description, the table, the targets and the missing contenders as Markdown."""
    lines = [f"- {line}" for line in describe_run(record)]
    lines += ["", "`peer/chunked time` above 1 means attention_jax chunked is faster. It is the median over repeats "
              "of the ratio of two calls in the same repeat, and `of matmul` likewise divides the attention rate by "
              "the JAX matmul rate of the same repeat. `spread` is (slowest - fastest) / median "
              "of the timed calls. `max abs diff` compares outputs (forward) or gradients with respect to query, "
              "key and value (forward+backward) with chunked's.", ""]
    lines += [markdown_table(record["rows"])]
    if record["targets"]:
        lines += ["", f"{heading} Targets", ""]
        lines += [f"- {format_target(result)}" for result in record["targets"]]
    if record["missing"]:
        lines += ["", f"{heading} Missing contenders", ""]
        lines += [f"- {name}: {reason}" for name, reason in record["missing"].items()]
    return "\n".join(lines)


# benchmarks/README.md, in the folder above this package.
README_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


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
    matmul_label = f"JAX {record['dtype']} matmul (median of the run)"
    if record["dtype"] != "float32":
        matmul_label = f"JAX {record['dtype']} matmul, float32 result (median of the run)"
    masks = list(dict.fromkeys(row["mask"] for row in record["rows"]))
    figure, axes = plt.subplots(2, len(masks), figsize=(5.5 * len(masks), 8), sharex=True, squeeze=False,
                                constrained_layout=True)
    for row_index, pass_name in enumerate((FORWARD, FORWARD_BACKWARD)):
        for column_index, mask in enumerate(masks):
            axis = axes[row_index][column_index]
            panel = [row for row in rows if row["pass"] == pass_name and row["mask"] == mask]
            for color, name in zip(plt.get_cmap("tab10").colors, CONTENDER_NAMES):
                points = sorted((row["length"], row["gflops"]) for row in panel if row["contender"] == name)
                if points:
                    lengths, rates = zip(*points)
                    axis.plot(lengths, rates, marker="o", color=color, label=name,
                              linewidth=2.5 if name == CHUNKED else 1.5)
            axis.axhline(record["jax_matmul_gflops"], color="gray", linestyle="--", label=matmul_label)
            axis.set_xscale("log", base=2)
            axis.set_xticks(record["lengths"], [str(length) for length in record["lengths"]])
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.set_title(f"{pass_name}, {mask}")
            if row_index == 1:
                axis.set_xlabel("sequence length T = S")
            if column_index == 0:
                axis.set_ylabel("GFLOP/s (masked pairs not counted)")
    handles = {}
    for axis in axes.flat:
        handles.update(zip(*reversed(axis.get_legend_handles_labels())))
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3, fontsize=9)
    machine = record["machine"]
    shape = record["shape"]
    # About nine characters of the title font fit per inch of figure width.
    flops = textwrap.wrap(f"FLOPs: {flop_description(record)}", int(9 * figure.get_figwidth()))
    figure.suptitle("\n".join([f"{record['dtype']} attention, B={shape['batch']}, {heads_description(shape)}, "
                               f"H={shape['head_dim']} on {machine['cpu_model']} ({machine['usable_cores']} cores)",
                               *flops]))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
