"""Delegation of dot-product attention to cuDNN through `jax.nn`.

On NVIDIA GPUs `jax.nn.dot_product_attention(..., implementation="cudnn")`
runs cuDNN's fused flash-attention kernels. Two of their behaviours differ
from this library's conventions and cannot be fixed after the call. JAX
turns a boolean mask into a large negative bias (`combine_bias_and_mask` in
`jax/_src/cudnn/fused_attention_stablehlo.py`), so a fully masked row gets
an average instead of zeros. Causal and window masks align top-left. So a
request is delegated only when the result is the same as on the other
paths, and `unsupported_features` names what prevents it.

NOTE: this library computes the softmax of float16 and bfloat16 inputs in
float32. The cuDNN path assumes cuDNN's kernel does the same. That was not
checked on a GPU here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The `implementation` that `attention` passes to `jax.nn`. Tests set it to
# "xla" to check the argument mapping on the CPU.
NN_IMPLEMENTATION = "cudnn"

_DTYPES = (jnp.float16, jnp.bfloat16)


def unavailable_reason() -> str | None:
  """Return why cuDNN cannot run here, or None when it can."""
  backend = jax.default_backend()
  if backend != "gpu":
    return f"the default JAX backend is {backend!r}, not an NVIDIA GPU"
  device = jax.devices()[0]
  version = str(getattr(device.client, "platform_version", ""))
  if "cuda" not in version.lower():
    return f"the GPU {device.device_kind!r} runs {version!r}, not CUDA"
  return None


def _max_head_dim() -> int:
  """Return cuDNN's largest head dimension: 256 from Hopper (9.0) on, else 128."""
  capability = str(getattr(jax.devices()[0], "compute_capability", "0.0"))
  major = capability.split(".")[0]
  return 256 if major.isdigit() and int(major) >= 9 else 128


def unsupported_features(query: jax.Array, key: jax.Array, value: jax.Array,
                         *, is_causal: bool,
                         window: tuple[int, int] | None,
                         max_head_dim: int | None = None,
                         **options) -> list[str]:
  """Return the parts of a request that the cuDNN path cannot honour.

  Args:
    query, key, value: the attention inputs.
    is_causal: whether a causal mask is requested.
    window: the normalized `(left, right)` window, or None.
    max_head_dim: cuDNN's largest head dimension; None reads it from the
      first device.
    **options: the other arguments of `dot_product_attention`, by name. Any
      that is set (not None, False or 0) is reported, because none of them
      is passed to cuDNN.

  Returns:
    One phrase per unsupported part; empty when cuDNN can run the request.
  """
  reasons = []
  dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
  supported = {jnp.dtype(dtype) for dtype in _DTYPES}
  if len(dtypes) != 1 or not dtypes <= supported:
    reasons.append(
        "query, key and value in one of float16 or bfloat16 (got "
        f"{query.dtype}, {key.dtype}, {value.dtype})")
  head_dim, value_dim = query.shape[-1], value.shape[-1]
  limit = _max_head_dim() if max_head_dim is None else max_head_dim
  if value_dim != head_dim:
    reasons.append(f"a value head dimension equal to the query's "
                   f"(got {value_dim} and {head_dim})")
  if head_dim % 8 or head_dim > limit:
    reasons.append(f"a head dimension that is a multiple of 8 and at most "
                   f"{limit} (got {head_dim})")
  query_length, key_length = query.shape[-3], key.shape[-3]
  if (is_causal or window is not None) and query_length != key_length:
    reasons.append(
        "T == S for a causal or window mask, because jax.nn aligns them "
        f"top-left and this library bottom-right (got T={query_length}, "
        f"S={key_length})")
  if window is not None and window[1] != 0 and not is_causal:
    reasons.append(f"a window with no keys to the right (got {window})")
  for name, setting in sorted(options.items()):
    if setting is not None and setting is not False and not (
        isinstance(setting, (int, float)) and setting == 0):
      reasons.append(f"no `{name}`")
  return reasons


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
              scale: float | None, is_causal: bool,
              window: tuple[int, int] | None) -> jax.Array:
  """Return `jax.nn.dot_product_attention` on inputs with any batch axes.

  The leading batch axes of `[B..., T, N, H]` inputs are merged into the
  one batch axis `jax.nn` takes, and split again in the output.
  """
  batch = query.shape[:-3]

  def merge(x):
    return x.reshape((-1,) + x.shape[-3:])

  out = jax.nn.dot_product_attention(
      merge(query), merge(key), merge(value), scale=scale,
      is_causal=is_causal, local_window_size=window,
      implementation=NN_IMPLEMENTATION)
  return out.reshape(batch + out.shape[1:])
