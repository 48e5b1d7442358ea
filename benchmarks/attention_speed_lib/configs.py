"""Contender names, passes, the FLOP convention and the configurations and inputs they run on."""

from __future__ import annotations

import dataclasses

import numpy as np

CHUNKED = "attention_jax chunked"
REFERENCE = "attention_jax reference"
JAX_NN = "jax.nn xla"
TOKAMAX = "tokamax xla_chunked"
TORCH = "torch sdpa"
MATMUL = "JAX matmul"
CONTENDER_NAMES = (CHUNKED, REFERENCE, JAX_NN, TOKAMAX, TORCH)
CONTENDER_KEYS = {"chunked": CHUNKED, "reference": REFERENCE, "jax-nn": JAX_NN, "tokamax": TOKAMAX, "torch": TORCH}

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"

# FLOP convention: the forward pass counts the two matrix products,
# 4 * B * N * T * S * H (softmax not counted), and a causal pass counts half
# of it, the unmasked part. Forward+backward counts 2.5 times the forward.
# NOTE: the FlashAttention repository's benchmark scripts count the backward
# pass alone as 2.5 times the forward and forward+backward as 3.5 times, so
# their GFLOP/s for the same time are 1.4 times the forward+backward GFLOP/s
# printed here. Time ratios do not depend on the convention.
FORWARD_BACKWARD_FLOP_FACTOR = 2.5

MATMUL_SIZE = 2048

# Choices of --dtype, spelled as jnp.dtype accepts them. Every contender casts
# the float32 inputs to the chosen dtype itself.
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
    length: int
    is_causal: bool
    pass_name: str
    batch: int
    heads: int
    head_dim: int
    dtype: str  # one of DTYPES

    @property
    def label(self) -> str:
        mask = "causal" if self.is_causal else "non-causal"
        return f"{self.pass_name} {mask} T=S={self.length}"

    def flops(self) -> float:
        """Return the FLOP count of one call under the convention of FORWARD_BACKWARD_FLOP_FACTOR."""
        forward = 4 * self.batch * self.heads * self.length * self.length * self.head_dim
        if self.is_causal:
            forward /= 2
        return forward * (FORWARD_BACKWARD_FLOP_FACTOR if self.pass_name == FORWARD_BACKWARD else 1)

    def materialized_bytes(self) -> int:
        """Estimate the peak bytes of [B, N, T, S] float32 arrays in a path that builds them.

        The estimate counts two such arrays in the forward pass (logits and
        weights) and four in forward+backward. It is a rule of thumb, not a
        measurement of XLA's buffer assignment. It counts 4 bytes per element
        for bfloat16 inputs too, because both contenders that build these
        arrays, attention_jax's reference path and jax.nn's xla path (jax
        0.10.2), compute logits and softmax in float32.
        """
        one_array = 4 * self.batch * self.heads * self.length * self.length
        return one_array * (4 if self.pass_name == FORWARD_BACKWARD else 2)


@dataclasses.dataclass
class Inputs:
    """Random float32 query, key, value and output cotangent, all [B, T, N, H] with T = S.

    Each contender casts them to the dtype of its Config.
    """

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    cotangent: np.ndarray


def make_inputs(batch: int, length: int, heads: int, head_dim: int, seed: int) -> Inputs:
    rng = np.random.default_rng([seed, length])
    shape = (batch, length, heads, head_dim)
    arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
    return Inputs(*arrays)
