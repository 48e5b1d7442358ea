"""Causal chunked attention at lengths between whole query blocks.

A causal call whose T is not a multiple of the query block (1024 by
default) cannot split its diagonal squares as it is. When padding T would
add more than an eighth, and few rows are left after the last whole block,
the chunked path runs the whole blocks as one call and the rows after them
as a second (`attention_jax/_row_split.py`). This script times that against
the single call it replaced, traced with the second call turned off
(`_tile_sizes.MAX_TAIL_SHARES` set to zeros), forward and forward+backward,
the two taking turns in one loop. It prints the median times and the
median over repeats of the paired ratio, and writes JSON. With
`--window W`, each query attends only to itself and the W keys before it.

Usage:
  python benchmarks/causal_row_split.py [--lengths 1100 1800 2100 3300]
      [--window 1023] [--repeats 7] [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics

import jax
import jax.numpy as jnp

from attention_jax import _tile_sizes
from attention_jax import chunked
from attention_jax import dot_product_attention
from attention_speed_lib.machine import command_line, machine_info
from attention_speed_lib.timing import paired_median, time_in_turns

NUM_HEADS, HEAD_DIM = 8, 64
DEFAULT_LENGTHS = (1100, 1200, 1800, 2100, 2300, 3300, 4200)


@contextlib.contextmanager
def _one_call():
  """Turn the second call off while tracing, for the single-call baseline."""
  saved = _tile_sizes.MAX_TAIL_SHARES
  _tile_sizes.MAX_TAIL_SHARES = (0.0, 0.0)
  try:
    yield
  finally:
    _tile_sizes.MAX_TAIL_SHARES = saved


def _inputs(length: int):
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (1, length, NUM_HEADS, HEAD_DIM)
  return (*(jax.random.normal(k, shape) for k in keys[:3]),
          jax.random.normal(keys[3], shape))


def _compile(pass_name: str, window, query, key, value, cotangent):
  """Return the compiled forward or forward+backward causal chunked call."""

  def attend(query, key, value):
    return dot_product_attention(query, key, value, is_causal=True,
                                 local_window_size=window,
                                 implementation="chunked")

  if pass_name == "forward":
    function = attend
  else:
    def loss(query, key, value):
      return jnp.sum(attend(query, key, value) * cotangent)
    function = jax.grad(loss, argnums=(0, 1, 2))
  # A fresh function each time, so that jit does not reuse the trace.
  return jax.jit(lambda *args: function(*args)).lower(
      query, key, value).compile()


def _first_call_rows(window, query, key, value) -> int | None:
  prepared = chunked._prepare(  # pylint: disable=protected-access
      query, key, value, None, None, scale=None, is_causal=True,
      query_seq_lengths=None, key_value_seq_lengths=None,
      local_window_size=window, query_offset=None, query_segment_ids=None,
      key_segment_ids=None, logits_soft_cap=None, score_mod=None,
      score_mod_params=None, mask_mod=None, dropout_rate=0.0,
      dropout_rng=None, deterministic=True, block_q=None, block_k=None,
      split_rows=True)
  return prepared.split_rows


def measure(length: int, window, repeats: int) -> list[dict]:
  """Return one row per pass at `length`."""
  query, key, value, cotangent = _inputs(length)
  rows = _first_call_rows(window, query, key, value)
  results = []
  for pass_name in ("forward", "forward+backward"):
    two_calls = _compile(pass_name, window, query, key, value, cotangent)
    with _one_call():
      one_call = _compile(pass_name, window, query, key, value, cotangent)
    outputs = [jax.tree.leaves(compiled(query, key, value))
               for compiled in (two_calls, one_call)]
    difference = max(float(jnp.max(jnp.abs(a - b)))
                     for a, b in zip(*outputs, strict=True))
    runners = {
        "two": lambda: jax.block_until_ready(two_calls(query, key, value)),
        "one": lambda: jax.block_until_ready(one_call(query, key, value)),
    }
    seconds = time_in_turns(runners, repeats)
    results.append({
        "length": length, "window": window, "pass": pass_name,
        "first_call_rows": rows,
        "one_call_ms": 1e3 * statistics.median(seconds["one"]),
        "two_calls_ms": 1e3 * statistics.median(seconds["two"]),
        "speed_up": paired_median(seconds["one"], seconds["two"]),
        "max_abs_diff": difference,
    })
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=list(DEFAULT_LENGTHS))
  parser.add_argument("--window", type=int, default=None,
                      help="keys before each query that it attends to")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--output-dir", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"))
  args = parser.parse_args()
  window = None if args.window is None else (args.window, 0)

  mask = "causal" if window is None else f"causal, window {window}"
  print(f"float32, B=1, N=K={NUM_HEADS}, H={HEAD_DIM}, {mask}; "
        f"median of {args.repeats} calls each")
  header = (f"{'T=S':>6} {'first call':>10} {'pass':>17} {'one call':>10} "
            f"{'two calls':>10} {'speed-up':>9} {'max abs diff':>13}")
  print(header)
  rows = []
  for length in args.lengths:
    for row in measure(length, window, args.repeats):
      rows.append(row)
      first = row["first_call_rows"] or "-"
      print(f"{row['length']:>6} {first:>10} {row['pass']:>17} "
            f"{row['one_call_ms']:>8.1f}ms {row['two_calls_ms']:>8.1f}ms "
            f"{row['speed_up']:>8.2f}x {row['max_abs_diff']:>13.1e}",
            flush=True)
  os.makedirs(args.output_dir, exist_ok=True)
  name = "causal_row_split"
  if window is not None:
    name += f"_window{args.window}"
  path = os.path.join(args.output_dir, name + ".json")
  with open(path, "w", encoding="utf-8") as file:
    json.dump({"command": command_line(), "machine": machine_info(),
               "rows": rows}, file, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
