"""Contenders: attention_jax's chunked and reference paths, jax.nn, tokamax and PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax

from .configs import CHUNKED, FORWARD, FORWARD_BACKWARD, JAX_NN, REFERENCE, TOKAMAX, TORCH, Config, Inputs

# A builder takes a Config and Inputs and returns two functions. The runner
# takes no arguments, computes once and returns only after the result exists.
# The converter turns that result into float32 NumPy arrays laid out as
# [B, T, N, H], whatever the dtype of the run.

Runner = Callable[[], Any]
Builder = Callable[[Config, Inputs], tuple[Runner, Callable[[Any], list[np.ndarray]]]]


def mask_arguments(config: Config) -> dict[str, Any]:
    """Return the keyword arguments of the config's mask, spelled as jax.nn, tokamax and attention_jax take them."""
    arguments: dict[str, Any] = {"is_causal": config.is_causal}
    if config.window is not None:
        arguments["local_window_size"] = (config.window, 0)
    return arguments


def jax_builder(attention: Callable[..., jax.Array]) -> Builder:
    """Return a builder for a JAX attention function with jax.nn's signature.

    It is called as `attention(query, key, value, is_causal=...)`, with
    `local_window_size=(W, 0)` added for a window configuration.
    """

    def build(config: Config, inputs: Inputs):
        dtype = jnp.dtype(config.dtype)
        query, key, value, cotangent = (jnp.asarray(array).astype(dtype) for array in dataclasses.astuple(inputs))
        arguments = mask_arguments(config)

        def forward(query, key, value):
            return attention(query, key, value, **arguments)

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
            return [np.asarray(array).astype(np.float32, copy=False) for array in jax.tree.leaves(result)]

        return run, to_numpy

    return build


def attention_jax_chunked(query, key, value, **mask):
    return attention_jax.dot_product_attention(query, key, value, **mask, implementation="chunked")


def attention_jax_reference(query, key, value, **mask):
    return attention_jax.dot_product_attention(query, key, value, **mask, implementation="reference")


def jax_nn_xla(query, key, value, **mask):
    return jax.nn.dot_product_attention(query, key, value, **mask, implementation="xla")


def tokamax_builder() -> Builder:
    import tokamax
    from absl import flags

    # tokamax 0.0.12 reads its options as absl flags and, when no absl app
    # has parsed them, parses sys.argv itself, which rejects this script's
    # options. Marking the flags as parsed keeps tokamax's defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

    def tokamax_xla_chunked(query, key, value, **mask):
        return tokamax.dot_product_attention(query, key, value, **mask, implementation="xla_chunked")

    return jax_builder(tokamax_xla_chunked)


def torch_builder() -> Builder:
    """Return a builder for torch.nn.functional.scaled_dot_product_attention on the CPU.

    PyTorch takes [B, N, T, H], so the inputs are cast to the run's dtype,
    transposed and made contiguous before timing. The forward pass runs
    under `torch.no_grad()`, as a JAX forward pass keeps no residuals
    either. With T = S, PyTorch's
    top-left causal alignment equals attention_jax's bottom-right one.
    SDPA has no window argument, so a window configuration passes a
    boolean `[T, S]` mask (True where a query sees a key), built before
    timing, as a PyTorch user would. Fewer key and value heads than query
    heads use `enable_gqa=True`.
    """
    import torch

    def build(config: Config, inputs: Inputs):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]

        def to_torch(array: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
            tensor = torch.from_numpy(array).to(dtype).transpose(1, 2).contiguous()
            return tensor.requires_grad_(requires_grad)

        needs_grad = config.pass_name == FORWARD_BACKWARD
        query, key, value = (to_torch(array, needs_grad) for array in (inputs.query, inputs.key, inputs.value))
        cotangent = to_torch(inputs.cotangent)
        arguments: dict[str, Any] = {"is_causal": config.is_causal}
        if config.window is not None:
            offsets = torch.arange(config.length)[:, None] - torch.arange(config.length)[None, :]
            arguments = {"attn_mask": (offsets >= 0) & (offsets <= config.window)}
        if config.key_heads != config.heads:
            arguments["enable_gqa"] = True

        def attention(query, key, value):
            return torch.nn.functional.scaled_dot_product_attention(query, key, value, **arguments)

        if config.pass_name == FORWARD:
            def run():
                with torch.no_grad():
                    return (attention(query, key, value),)
        else:
            def run():
                loss = torch.sum(attention(query, key, value) * cotangent)
                return torch.autograd.grad(loss, (query, key, value))

        def to_numpy(result):
            return [tensor.detach().transpose(1, 2).to(torch.float32).numpy() for tensor in result]

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
