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
# 4 * B * N * T * S * H (softmax not counted), a causal pass counts half of
# it, the unmasked part, and a window pass the share of (query, key) pairs
# that its mask leaves visible. Forward+backward counts 2.5 times the forward.
# NOTE: the FlashAttention repository's benchmark scripts count the backward
# pass alone as 2.5 times the forward and forward+backward as 3.5 times, so
# their GFLOP/s for the same time are 1.4 times the forward+backward GFLOP/s
# printed here. Time ratios do not depend on the convention.
FORWARD_BACKWARD_FLOP_FACTOR = 2.5

MATMUL_SIZE = 2048

# Choices of --dtype, spelled as jnp.dtype accepts them. Every contender casts
# the float32 inputs to the chosen dtype itself.
DTYPES = ("float32", "bfloat16")


NON_CAUSAL = "non-causal"
CAUSAL = "causal"
WINDOW = "window"
# Mask kinds of --masks. A window pass is causal, and each query also
# attends to the --window keys before it.
MASK_KINDS = (NON_CAUSAL, CAUSAL, WINDOW)


@dataclasses.dataclass(frozen=True)
class Config:
    length: int
    is_causal: bool
    pass_name: str
    batch: int
    heads: int
    head_dim: int
    dtype: str  # one of DTYPES
    window: int | None = None  # keys before each query that it attends to, besides its own; requires is_causal
    kv_heads: int | None = None  # key and value heads K; None for K = N

    def __post_init__(self):
        if self.window is not None and not self.is_causal:
            raise ValueError(f"a window configuration must be causal, but got window={self.window} "
                             "with is_causal=False")

    @property
    def mask(self) -> str:
        """Return the mask's label in tables: non-causal, causal or window W."""
        if self.window is not None:
            return f"{WINDOW} {self.window}"
        return CAUSAL if self.is_causal else NON_CAUSAL

    @property
    def key_heads(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def label(self) -> str:
        return f"{self.pass_name} {self.mask} T=S={self.length}"

    def visible_fraction(self) -> float:
        """Return the fraction of the T x S pairs that the FLOP count includes.

        Non-causal counts all, causal half (the convention of the tables
        before windows existed), and a window the exact share of pairs
        (t, s) with t - window <= s <= t.
        """
        if self.window is None:
            return 0.5 if self.is_causal else 1.0
        length, width = self.length, min(self.window, self.length - 1)
        # Rows 0..width see t + 1 keys, the later ones width + 1.
        visible = (width + 1) * (width + 2) // 2 + (length - width - 1) * (width + 1)
        return visible / length**2

    def flops(self) -> float:
        """Return the FLOP count of one call under the convention of FORWARD_BACKWARD_FLOP_FACTOR."""
        forward = 4 * self.batch * self.heads * self.length * self.length * self.head_dim
        forward *= self.visible_fraction()
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
    """Random float32 query and output cotangent `[B, T, N, H]`, key and value `[B, S, K, H]`, with T = S.

    Each contender casts them to the dtype of its Config.
    """

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    cotangent: np.ndarray


def make_inputs(batch: int, length: int, heads: int, head_dim: int, seed: int,
                kv_heads: int | None = None) -> Inputs:
    rng = np.random.default_rng([seed, length])
    query_shape = (batch, length, heads, head_dim)
    key_shape = (batch, length, heads if kv_heads is None else kv_heads, head_dim)
    shapes = (query_shape, key_shape, key_shape, query_shape)
    return Inputs(*(rng.standard_normal(shape, dtype=np.float32) for shape in shapes))
