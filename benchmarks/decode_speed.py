"""Decoding speed with a key/value cache versus recomputing every step.

For each context length, one attention layer decodes `--steps` tokens after
a prompt that fills the context. It does so once by appending to a `KVCache`
and attending from the new token only, and once by recomputing causal
attention over the whole sequence at every step. Both run inside `lax.scan` under
`jit`; compilation is excluded from the timings. The cached run also
creates and prefills its cache, so a third function does only that, and the
decoding steps take the difference. Prints tokens per second and the
speed-up per decoded token, and writes JSON.

With `--window W`, both attend only to the W keys before each query and
the query itself (a sliding window), as in models with local attention.

Usage:
  python benchmarks/decode_speed.py [--contexts 1024 4096] [--steps 32]
      [--window 1023]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import dot_product_attention
from attention_jax import kv_cache

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 8, 8, 64


def _tokens(context, steps, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  total = context + steps
  query = jax.random.normal(keys[0], (1, total, NUM_HEADS, HEAD_DIM))
  key = jax.random.normal(keys[1], (1, total, NUM_KV_HEADS, HEAD_DIM))
  value = jax.random.normal(keys[2], (1, total, NUM_KV_HEADS, HEAD_DIM))
  return query, key, value


def make_cached(context, steps, window=None, decode=True):
  """Return a jitted function decoding `steps` tokens with a cache.

  With `decode=False` it stops after creating and prefilling the cache, and
  returns the cache.
  """

  @jax.jit
  def run(query, key, value):
    cache = kv_cache.init_cache((1,), context + steps, NUM_KV_HEADS, HEAD_DIM)
    cache = kv_cache.prefill(cache, key[:, :context], value[:, :context])
    if not decode:
      return cache

    def step(cache, index):
      position = context + index
      key_t = jax.lax.dynamic_slice_in_dim(key, position, 1, axis=1)
      value_t = jax.lax.dynamic_slice_in_dim(value, position, 1, axis=1)
      query_t = jax.lax.dynamic_slice_in_dim(query, position, 1, axis=1)
      cache = kv_cache.append(cache, key_t, value_t)
      out = kv_cache.cached_attention(query_t, cache,
                                      local_window_size=window)
      return cache, out[:, 0]

    _, outs = jax.lax.scan(step, cache, jnp.arange(steps))
    return outs

  return run


def make_recomputed(context, steps, window=None):
  """Return a jitted function that recomputes attention over the whole
  (fixed-size, masked) sequence at every step."""
  total = context + steps

  @jax.jit
  def run(query, key, value):
    def step(carry, index):
      length = context + index + 1
      out = dot_product_attention(
          query, key, value, is_causal=True, local_window_size=window,
          key_value_seq_lengths=jnp.full((1,), length, jnp.int32))
      return carry, jax.lax.dynamic_index_in_dim(out, length - 1, axis=1,
                                                 keepdims=False)

    _, outs = jax.lax.scan(step, 0, jnp.arange(steps))
    return outs

  del total
  return run


def _seconds(function, args):
  start = time.perf_counter()
  jax.block_until_ready(function(*args))
  return time.perf_counter() - start


def _median_seconds(functions, args, repeats):
  """Call the functions in turns `repeats` times; return each one's median and all the seconds."""
  for function in functions:
    jax.block_until_ready(function(*args))
  times = [[_seconds(function, args) for function in functions]
           for _ in range(repeats)]
  return [float(np.median(column)) for column in zip(*times)], times


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096],
                      help="context lengths (tokens already in the cache)")
  parser.add_argument("--steps", type=int, default=32,
                      help="tokens decoded per timed run")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs per contender; the median is kept")
  parser.add_argument("--window", type=int, default=None,
                      help="attend only to this many keys before each query "
                           "(default: all of them)")
  parser.add_argument("--output", default="benchmarks/results",
                      help="folder for decode_speed.json (with --window W, "
                           "decode_speed_windowW.json)")
  args = parser.parse_args(argv)
  if args.window is not None and args.window < 0:
    parser.error(f"--window should be at least 0, but got {args.window}")
  window = None if args.window is None else (args.window, 0)

  print(f"jax {jax.__version__} on {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores; float32, 1 sequence, {NUM_HEADS} heads, "
        f"head dim {HEAD_DIM}, {args.steps} decoded tokens per run, window "
        f"{'none' if window is None else args.window}")
  rows = []
  for context in args.contexts:
    inputs = _tokens(context, args.steps)
    cached = make_cached(context, args.steps, window)
    recomputed = make_recomputed(context, args.steps, window)
    setup = make_cached(context, args.steps, window, decode=False)
    difference = float(jnp.max(jnp.abs(cached(*inputs)
                                       - recomputed(*inputs))))
    (cached_time, setup_time, recomputed_time), times = _median_seconds(
        [cached, setup, recomputed], inputs, args.repeats)
    # The set-up and the full cached run of one repeat are called back to
    # back, so their difference is steadier than a difference of medians.
    steps_time = float(np.median([full - prefill
                                  for full, prefill, _ in times]))
    row = dict(
        context=context, steps=args.steps, window=args.window,
        cached_tokens_per_second=args.steps / cached_time,
        cache_setup_ms=setup_time * 1e3,
        cached_steps_tokens_per_second=args.steps / steps_time,
        recomputed_tokens_per_second=args.steps / recomputed_time,
        speedup=recomputed_time / steps_time, max_abs_difference=difference)
    rows.append(row)
    print(f"context {context:>6}: cache {row['cached_tokens_per_second']:9.1f}"
          f" tok/s with set-up ({row['cache_setup_ms']:.1f} ms of it), "
          f"{row['cached_steps_tokens_per_second']:9.1f} tok/s without; "
          f"recompute {row['recomputed_tokens_per_second']:8.1f} tok/s; "
          f"speed-up per token {row['speedup']:6.1f}x; max abs diff "
          f"{difference:.1e}")

  os.makedirs(args.output, exist_ok=True)
  name = ("decode_speed.json" if window is None
          else f"decode_speed_window{args.window}.json")
  path = os.path.join(args.output, name)
  with open(path, "w", encoding="utf-8") as file:
    json.dump(dict(jax=jax.__version__, rows=rows), file, indent=2)
  print(f"Wrote {path}")


if __name__ == "__main__":
  main()
