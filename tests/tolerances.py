"""Comparison tolerances per input dtype, stated once for the whole suite.

Tolerances hold for outputs and weights compared with the float64 oracle
computed from the same (already rounded) inputs, for values of order 1.
bfloat16 and float16 inputs compute in float32 but round the weights and
the output to the input dtype, so their error is a few units in the last
place of that dtype.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

TOLERANCES: dict[np.dtype, dict[str, float]] = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
    np.dtype(jnp.float16): dict(rtol=5e-3, atol=5e-3),
    np.dtype(jnp.bfloat16): dict(rtol=3e-2, atol=3e-2),
}


def tolerance(dtype) -> dict[str, float]:
  """Return `rtol` and `atol` for arrays computed from inputs of `dtype`."""
  return TOLERANCES[np.dtype(dtype)]
