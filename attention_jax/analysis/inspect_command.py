"""The `attention-jax inspect` command: look inside the pretrained all-MiniLM-L6-v2.

Runs the sentence encoder on the given sentences and writes heat maps of
every head of every layer, a per-head diagnostics table (Markdown and
JSON) and head importance scores to an output folder. A pruning curve
shows how far the sentence embeddings drift from the unpruned model's as
heads are removed by importance or at random.

Head importance follows Michel, Levy and Neubig (2019): the absolute
gradient of a loss with respect to per-head gates at 1. The pretrained
model has no task head, so the loss is a self-distillation proxy, see
`distillation_loss`. Heads are removed by setting their gates to 0, which
gives the same outputs as structural pruning with
`attention_jax.analysis.pruning.prune_heads`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.cli.help_format import DefaultsHelpFormatter
from attention_jax.analysis import diagnostics
from attention_jax.analysis import importance as importance_lib
from attention_jax.analysis import plots
from attention_jax.models.bert import sentence_embeddings

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "runs/inspect"

# Temperature dividing the cosine similarities of the proxy loss. A small
# value keeps the softmax sharp, so the loss reacts to small drifts.
# NOTE: chosen by hand and not tuned.
TEMPERATURE = 0.05

DESCRIPTION = """\
Run the pretrained all-MiniLM-L6-v2 sentence encoder (6 layers, 12 heads)
on the given sentences and write, to an output folder: attention heat maps
of every head of every layer, a per-head diagnostics table (entropy,
distance, concentrated or dispersed) as Markdown and JSON, head importance
scores, and a pruning curve comparing removal by importance with removal
at random. Needs the `models` and `plot` extras.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Register `inspect` on an argparse subparsers object; `args.run` is set to `run`."""
  parser = subparsers.add_parser(
      "inspect",
      help="inspect the attention heads of a pretrained sentence encoder",
      description=DESCRIPTION,
      formatter_class=DefaultsHelpFormatter,
  )
  parser.set_defaults(run=run)
  parser.add_argument("sentences", nargs="+", help="sentences to encode (quote each one)")
  parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for the PNG, JSON and Markdown files")
  parser.add_argument("--max-length", type=int, default=64,
                      help="truncate each sentence to this many tokens, [CLS] and [SEP] included")
  parser.add_argument("--prune-points", type=int, default=13,
                      help="number of pruning levels from 0 heads to all heads on the pruning curve")
  parser.add_argument("--random-trials", type=int, default=3,
                      help="random pruning orders averaged for the random baseline")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random pruning orders")
  parser.add_argument("--quiet", action="store_true", help="print only the output paths")
  return parser


def distillation_loss(
    hidden: jax.Array, embeddings: jax.Array, reference_hidden: jax.Array,
    reference_embeddings: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Compute the proxy loss for head importance: contrastive self-distillation.

  Token term: each real token's final hidden state should pick out the
  unpruned model's hidden state at the same position among all real
  tokens of its sentence (cross-entropy over cosine similarities divided by
  `TEMPERATURE`). Sentence term (with two or more sentences): each sentence
  embedding should pick out the unpruned embedding of the same sentence.
  A plain distance to the unpruned model would have zero gradient at gates
  of 1, where the distance is minimal, so it could not rank heads.

  Args:
    hidden, reference_hidden: `[B, T, D]` gated and unpruned hidden states.
    embeddings, reference_embeddings: `[B, D]` L2-normalized embeddings.
    attention_mask: `[B, T]`, nonzero at real tokens.
  """
  real = attention_mask.astype(bool)
  normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  logits = jnp.einsum("btd,bsd->bts", normalize(hidden), normalize(reference_hidden)) / TEMPERATURE
  logits = jnp.where(real[:, None, :], logits, -jnp.inf)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  own = jnp.diagonal(log_probs, axis1=-2, axis2=-1)
  token_loss = -jnp.sum(jnp.where(real, own, 0.0)) / jnp.maximum(jnp.sum(real), 1)
  sentence_logits = embeddings @ reference_embeddings.T / TEMPERATURE
  sentence_loss = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(sentence_logits, axis=-1)))
  return token_loss + sentence_loss


def _encoder_fn(graphdef):
  """Build a jitted `(state, gates, ids, mask, types, return_weights) -> (hidden, embeddings, weights)`."""

  def encode(state, gates, input_ids, attention_mask, token_type_ids, return_weights=False):
    model = nnx.merge(graphdef, state)
    output = model(input_ids, attention_mask, token_type_ids, head_gates=gates,
                   return_weights=return_weights)
    hidden, weights = output if return_weights else (output, None)
    return hidden, sentence_embeddings(hidden, attention_mask), weights

  return jax.jit(encode, static_argnames="return_weights")


def _layer_diagnostics(weights: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
  """Summarize weights `[L, B, N, T, T]` per head over real query rows: `[L, N]` arrays."""
  key_mask = attention_mask.astype(bool)[:, None, None, :]
  # Zeroing padding queries' rows makes the diagnostics skip them.
  real_rows = weights * attention_mask[None, :, None, :, None]
  per_layer = [diagnostics.head_diagnostics(layer, key_mask) for layer in real_rows]
  return {name: np.stack([np.asarray(d[name]) for d in per_layer]) for name in per_layer[0]}


def _write_heatmaps(output: pathlib.Path, weights: np.ndarray, tokens: list[list[str]]) -> list[pathlib.Path]:
  """Write one grid PNG of all heads per layer and sentence; return the paths."""
  paths = []
  num_layers = weights.shape[0]
  for sentence, sentence_tokens in enumerate(tokens):
    length = len(sentence_tokens)
    for layer in range(num_layers):
      path = output / "heatmaps" / f"sentence{sentence}_layer{layer}.png"
      plots.plot_attention_grid(
          weights[layer, sentence, :, :length, :length], sentence_tokens,
          title=f"sentence {sentence}, layer {layer}", first_layer=layer,
          path=path)
      paths.append(path)
  return paths


def _markdown_table(summary: dict[str, np.ndarray], importance: np.ndarray) -> str:
  lines = [
      "| layer | head | entropy (nats) | normalized entropy | max weight | mean distance | sparsity | class | importance |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
  ]
  num_layers, num_heads = importance.shape
  for layer in range(num_layers):
    for head in range(num_heads):
      label = "concentrated" if summary["concentrated"][layer, head] else "dispersed"
      lines.append(
          f"| {layer} | {head} | {summary['entropy'][layer, head]:.3f} "
          f"| {summary['normalized_entropy'][layer, head]:.3f} "
          f"| {summary['max_weight'][layer, head]:.3f} "
          f"| {summary['mean_distance'][layer, head]:.2f} "
          f"| {summary['sparsity'][layer, head]:.3f} | {label} "
          f"| {importance[layer, head]:.4f} |")
  return "\n".join(lines) + "\n"


def _pruning_curve(encode, state, batch_arrays, reference, importance, args) -> dict[str, Any]:
  """Measure mean cosine similarity to the unpruned embeddings as heads are removed."""
  gate_shape = importance.shape
  total = int(np.prod(gate_shape))
  counts = sorted({int(round(x)) for x in np.linspace(0, total, args.prune_points)})
  rng = np.random.default_rng(args.seed)
  orders = {"importance": importance_lib.pruning_order(importance)}
  random_orders = [rng.permutation(total) for _ in range(args.random_trials)]

  def similarity(order, count):
    gates = jnp.asarray(importance_lib.gates_without(order, count, gate_shape))
    _, embeddings, _ = encode(state, gates, *batch_arrays)
    return float(jnp.mean(jnp.sum(embeddings * reference, axis=-1)))

  curves = {"by importance (least important first)": [similarity(orders["importance"], c) for c in counts]}
  random_values = np.array([[similarity(order, c) for c in counts] for order in random_orders])
  curves[f"random (mean of {len(random_orders)} orders)"] = random_values.mean(axis=0).tolist()
  return {"pruned_heads": counts, "total_heads": total, "curves": curves}


def inspect(sentences: list[str], output: str | pathlib.Path, *, max_length: int = 64,
            prune_points: int = 13, random_trials: int = 3, seed: int = 0) -> dict[str, pathlib.Path]:
  """Run the whole inspection and return the written files by kind."""
  from attention_jax.models import minilm

  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  encoder = minilm.MiniLM()
  encoder.tokenizer.enable_truncation(max_length=max_length)
  try:
    batch = encoder.tokenize(sentences)
  finally:
    encoder.tokenizer.enable_truncation(max_length=minilm.MAX_SEQ_LENGTH)
  batch_arrays = (jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
                  jnp.asarray(batch.token_type_ids))
  graphdef, state = nnx.split(encoder.model)
  gate_shape = encoder.model.gate_shape
  encode = _encoder_fn(graphdef)
  logger.info("Loaded all-MiniLM-L6-v2 from %s in %.1f s", encoder.model_dir, time.perf_counter() - start)

  ones = jnp.ones(gate_shape, dtype=jnp.float32)
  reference_hidden, reference, weights = encode(state, ones, *batch_arrays, return_weights=True)
  weights = np.stack([np.asarray(w) for w in weights])
  attention_mask = np.asarray(batch.attention_mask, dtype=np.float32)

  logger.info("Writing heat maps of %d layers x %d heads", *gate_shape)
  heatmaps = _write_heatmaps(output, weights, batch.tokens)
  summary = _layer_diagnostics(weights, attention_mask)

  def loss_fn(gates, _):
    hidden, embeddings, _ = encode(state, gates, *batch_arrays)
    return distillation_loss(hidden, embeddings, reference_hidden, reference, batch_arrays[1])

  logger.info("Computing head importance")
  importance = np.asarray(importance_lib.head_importance(loss_fn, [None], gate_shape))

  logger.info("Measuring the pruning curve")
  args = argparse.Namespace(prune_points=prune_points, random_trials=random_trials, seed=seed)
  curve = _pruning_curve(encode, state, batch_arrays, reference, importance, args)

  files = {
      "heatmaps": output / "heatmaps",
      "diagnostics_markdown": output / "diagnostics.md",
      "diagnostics_json": output / "diagnostics.json",
      "entropy_plot": output / "head_entropy.png",
      "importance_plot": output / "head_importance.png",
      "pruning_curve_plot": output / "pruning_curve.png",
      "pruning_curve_json": output / "pruning_curve.json",
  }
  files["diagnostics_markdown"].write_text(
      "# all-MiniLM-L6-v2 attention heads\n\n"
      f"Sentences: {json.dumps(sentences, ensure_ascii=False)}\n\n"
      f"A head is concentrated when its mean normalized entropy is at most "
      f"{diagnostics.CONCENTRATED_MAX_NORMALIZED_ENTROPY}; sparsity is the fraction of weights "
      f"below {diagnostics.DEFAULT_SPARSITY_THRESHOLD}. Importance is normalized per layer.\n\n"
      + _markdown_table(summary, importance), encoding="utf-8")
  heads = []
  for layer in range(gate_shape[0]):
    for head in range(gate_shape[1]):
      record = {name: float(values[layer, head]) for name, values in summary.items() if name != "concentrated"}
      record.update(layer=layer, head=head, importance=float(importance[layer, head]),
                    **{"class": "concentrated" if summary["concentrated"][layer, head] else "dispersed"})
      heads.append(record)
  files["diagnostics_json"].write_text(json.dumps(
      {"sentences": sentences, "tokens": batch.tokens, "heads": heads}, ensure_ascii=False, indent=1),
      encoding="utf-8")
  plots.plot_head_entropy(summary["normalized_entropy"], path=files["entropy_plot"])
  plots.plot_head_entropy(importance, title="head importance (normalized per layer)",
                          path=files["importance_plot"])
  plots.plot_pruning_curve(curve["pruned_heads"], curve["curves"], total_heads=curve["total_heads"],
                           path=files["pruning_curve_plot"])
  files["pruning_curve_json"].write_text(json.dumps(curve, indent=1), encoding="utf-8")
  logger.info("Wrote %d heat maps; total time %.1f s", len(heatmaps), time.perf_counter() - start)
  return files


def run(args: argparse.Namespace) -> int:
  """Run `inspect` with parsed options and print where the files are."""
  from attention_jax.cli.logs import configure_logging
  from attention_jax.training.errors import UserInputError

  if args.max_length < 2:
    raise UserInputError(f"--max-length should be at least 2 ([CLS] and [SEP]), but got {args.max_length}")
  if args.prune_points < 2:
    raise UserInputError(f"--prune-points should be at least 2 (no head and all heads pruned), but got {args.prune_points}")
  if args.random_trials < 1:
    raise UserInputError(f"--random-trials should be at least 1, but got {args.random_trials}")
  configure_logging(logging.WARNING if args.quiet else logging.INFO)
  try:
    files = inspect(args.sentences, args.output, max_length=args.max_length,
                    prune_points=args.prune_points, random_trials=args.random_trials, seed=args.seed)
  except ImportError as error:
    raise UserInputError(str(error)) from error
  print(f"Output folder: {pathlib.Path(args.output).resolve()}")
  for kind, path in files.items():
    print(f"  {kind}: {path}")
  return 0
