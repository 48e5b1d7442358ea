"""Speed targets of the chunked path, their evaluation on the rows of a run and their formatting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .configs import CAUSAL, CHUNKED, FORWARD, FORWARD_BACKWARD, JAX_NN, NON_CAUSAL, TOKAMAX, TORCH
from .timing import paired_median


@dataclasses.dataclass(frozen=True)
class Target:
    description: str
    minimum: float
    unit: str  # "x" for a time ratio, "%" for a fraction of the matmul rate
    measure: Callable[[dict], float | None]
    # The peer's row, for a ratio to a peer. Its share of the matmul rate
    # times the minimum is the share the chunked path needs to meet it.
    peer_row: Callable[[dict], dict | None] | None = None


def find_row(rows_by_key: dict, pass_name: str, mask: str, length: int, contender: str) -> dict | None:
    row = rows_by_key.get((pass_name, mask, length, contender))
    return row if row is not None and row["status"] == "ok" else None


def peer_target(description: str, minimum: float, pass_name: str, mask: str, length: int, peer: str) -> Target:
    def peer_row(rows_by_key):
        return find_row(rows_by_key, pass_name, mask, length, peer)

    def measure(rows_by_key):
        row = peer_row(rows_by_key)
        return None if row is None else row["ratio_to_chunked"]
    return Target(description, minimum, "x", measure, peer_row)


def chunked_fraction(pass_name: str, mask: str, length: int) -> Callable[[dict], float | None]:
    def measure(rows_by_key):
        row = find_row(rows_by_key, pass_name, mask, length, CHUNKED)
        return None if row is None else row["fraction_of_matmul"]
    return measure


def causal_speedup(pass_name: str, length: int) -> Callable[[dict], float | None]:
    def measure(rows_by_key):
        full = find_row(rows_by_key, pass_name, NON_CAUSAL, length, CHUNKED)
        causal = find_row(rows_by_key, pass_name, CAUSAL, length, CHUNKED)
        return None if full is None or causal is None else paired_median(full["seconds"], causal["seconds"])
    return measure


# Speed targets for the chunked implementation on a CPU. A ratio is the other
# time divided by the chunked time, so above 1 means chunked is faster.
TARGETS = (
    peer_target("forward non-causal 4096: chunked vs torch sdpa", 1.5, FORWARD, NON_CAUSAL, 4096, TORCH),
    peer_target("forward non-causal 4096: chunked vs tokamax xla_chunked", 2.0, FORWARD, NON_CAUSAL, 4096, TOKAMAX),
    peer_target("forward non-causal 4096: chunked vs jax.nn xla", 4.0, FORWARD, NON_CAUSAL, 4096, JAX_NN),
    Target("forward non-causal 4096: chunked fraction of matmul rate", 0.55, "%", chunked_fraction(FORWARD, NON_CAUSAL, 4096)),
    Target("forward 4096: chunked causal vs chunked non-causal", 1.8, "x", causal_speedup(FORWARD, 4096)),
    peer_target("forward+backward non-causal 2048: chunked vs torch sdpa", 1.2, FORWARD_BACKWARD, NON_CAUSAL, 2048, TORCH),
    peer_target("forward+backward non-causal 2048: chunked vs jax.nn xla", 3.0, FORWARD_BACKWARD, NON_CAUSAL, 2048, JAX_NN),
)


def evaluate_targets(rows: list[dict]) -> list[dict[str, Any]]:
    rows_by_key = {(row["pass"], row["mask"], row["length"], row["contender"]): row for row in rows}
    results = []
    for target in TARGETS:
        value = target.measure(rows_by_key)
        peer = None if target.peer_row is None else target.peer_row(rows_by_key)
        results.append({
            "target": target.description,
            "minimum": target.minimum,
            "unit": target.unit,
            "measured": value,
            "met": None if value is None else value >= target.minimum,
            # The chunked path's share of the matmul rate at which the ratio
            # equals the minimum. Above 100%, the target is out of reach.
            "needed_fraction_of_matmul": None if peer is None else peer["fraction_of_matmul"] * target.minimum,
        })
    return results


def format_target(result: dict[str, Any]) -> str:
    def show(value):
        return f"{value:.0%}" if result["unit"] == "%" else f"{value:.2f}x"

    if result["measured"] is None:
        return f"{result['target']}: not measured in this run (target >= {show(result['minimum'])})"
    verdict = "met" if result["met"] else "not met"
    line = f"{result['target']}: {show(result['measured'])} (target >= {show(result['minimum'])}): {verdict}"
    needed = result.get("needed_fraction_of_matmul")
    if needed is not None:
        line += f"; needs {needed:.0%} of the matmul rate"
    return line
