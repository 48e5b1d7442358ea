"""Rotary position embeddings (RoPE; Su et al., "RoFormer: Enhanced
Transformer with Rotary Position Embedding", 2021).

RoPE rotates pairs of query and key channels by an angle proportional to
the token's position, so the dot product of a rotated query and key
depends on their positions only through the offset between them. Pair i
of R rotated channels turns by `position * base^(-2i / R)`.

Two channel pairings are in use, selected by name and never mixed:

* `"half"`: channel i pairs with channel `i + R/2` (GPT-NeoX, Hugging Face
  LLaMA);
* `"interleaved"`: channel `2i` pairs with `2i + 1` (GPT-J, the original
  RoFormer).

Shape letters: B batch (any number of leading axes), L sequence length
(T for queries, S for keys), N heads (K for keys), H head dimension, R
rotated channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from attention_jax import _checks

PAIRINGS: tuple[str, ...] = ("half", "interleaved")
DEFAULT_BASE = 10000.0


def rope_frequencies(rotary_dim: int, base: float = DEFAULT_BASE) -> jax.Array:
  """Return the angular frequency of each channel pair, `[R / 2]` float32.

  Pair i turns by `base^(-2i / R)` radians per position.
  """
  exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
  return jnp.asarray(float(base) ** -exponents, jnp.float32)


def _check_rotary_dim(rotary_dim: int | None, head_dim: int) -> int:
  if rotary_dim is None:
    if head_dim % 2:
      raise ValueError(
          f"RoPE rotates channel pairs, so the head dimension H={head_dim} "
          "should be even; pass an even `rotary_dim` below it to rotate "
          "only the first channels")
    return head_dim
  rotary_dim = int(rotary_dim)
  if rotary_dim <= 0 or rotary_dim % 2:
    raise ValueError(
        f"`rotary_dim` should be a positive even integer, but got "
        f"{rotary_dim}")
  if rotary_dim > head_dim:
    raise ValueError(
        f"`rotary_dim` should be at most the head dimension H={head_dim}, "
        f"but got {rotary_dim}")
  return rotary_dim


def _check_positions(x: jax.Array, positions: ArrayLike) -> jax.Array:
  _checks.check_integer("positions", positions)
  shape = _checks.shape_of(positions)
  leading = tuple(x.shape[:-2])
  try:
    broadcast = np.broadcast_shapes(shape, leading)
  except ValueError:
    broadcast = None
  if not shape or broadcast != leading:
    raise ValueError(
        f"`positions` should have shape [L] or [B..., L] broadcasting to "
        f"[B..., L] = {leading} of the input {x.shape}, but got {shape}")
  return jnp.asarray(positions)


def apply_rope(
    x: ArrayLike,
    positions: ArrayLike,
    *,
    base: float = DEFAULT_BASE,
    rotary_dim: int | None = None,
    pairing: str = "half",
) -> jax.Array:
  """Rotate the first `rotary_dim` channels of `x` by its positions.

  Apply it to the query and the key with their own positions, before the
  attention call. Integer position arrays make packed sequences (positions
  restarting per segment) and decoding with a cache (positions starting
  at the cache length) work. Angles and the rotation are computed in
  float32 (or float64 for float64 input); the result has the dtype of `x`.

  Args:
    x: `[B..., L, N, H]`, a query or key.
    positions: integer `[L]` or `[B..., L]`, broadcasting to `[B..., L]`.
    base: frequency base; pair i turns by `base^(-2i / R)` per position.
    rotary_dim: R, the number of leading channels to rotate (even, at most
      H); the remaining `H - R` channels pass through unchanged. None
      rotates all H channels.
    pairing: `"half"` or `"interleaved"` (see the module docstring).

  Returns:
    The rotated `[B..., L, N, H]` in the dtype of `x`.

  Raises:
    ValueError: for an unknown pairing, an odd or too large `rotary_dim`,
      an odd H without `rotary_dim`, a non-positive base or positions that
      do not match `[B..., L]`.
    TypeError: for a non-floating `x` or non-integer positions.
  """
  x = jnp.asarray(x)
  _checks.check_floating("x", x)
  _checks.check_rank("x", x, 3, "[B..., L, N, H]")
  if pairing not in PAIRINGS:
    raise ValueError(
        f"`pairing` should be one of {PAIRINGS}, but got {pairing!r}")
  if not float(base) > 0:
    raise ValueError(f"`base` should be positive, but got {base}")
  rotary_dim = _check_rotary_dim(rotary_dim, x.shape[-1])
  positions = _check_positions(x, positions)

  compute = jnp.promote_types(x.dtype, jnp.float32)
  frequencies = rope_frequencies(rotary_dim, base).astype(compute)
  # [B..., L] positions -> [B..., L, 1, R / 2] angles, shared by the heads.
  angles = positions.astype(compute)[..., None, None] * frequencies
  cos, sin = jnp.cos(angles), jnp.sin(angles)

  rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
  rotated = rotated.astype(compute)
  if pairing == "half":
    first, second = jnp.split(rotated, 2, axis=-1)
  else:
    first, second = rotated[..., 0::2], rotated[..., 1::2]
  new_first = first * cos - second * sin
  new_second = second * cos + first * sin
  if pairing == "half":
    rotated = jnp.concatenate([new_first, new_second], axis=-1)
  else:
    rotated = jnp.stack([new_first, new_second], axis=-1).reshape(
        new_first.shape[:-1] + (rotary_dim,))
  return jnp.concatenate([rotated.astype(x.dtype), passed], axis=-1)
