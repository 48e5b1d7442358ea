"""The ring schedule: the kind of every (query chunk, key chunk) block.

At step r of the ring, device i works on the key/value shard that device
`(i - r) mod P` owns. The query shard and the key/value shard each
consist of one chunk (contiguous layout) or two (zigzag layout) of
contiguous positions. Each pair of a query chunk
and a key chunk is one block, of one of three kinds:

* `SKIP`: the causal mask hides every key from every query, so the block
  is not computed at all.
* `FULL`: no causal mask inside the block (no key comes after any query,
  or attention is not causal). Padding still applies.
* `DIAGONAL`: query and key chunk cover the same positions, so the block
  is causal with its own diagonal.

The kinds are decided from chunk ids alone. The table is static, and the
ring reads its entry for `(axis_index, step)` at run time to pick a branch
of `lax.switch`.
"""

from __future__ import annotations

import numpy as np

from attention_jax.distributed import layout as layout_lib

SKIP = 0
FULL = 1
DIAGONAL = 2


def key_owner(device: int, step: int, num_devices: int) -> int:
  """Return the owner of the key/value shard that `device` has at `step`."""
  return (device - step) % num_devices


def block_kinds(num_devices: int, layout: layout_lib.Layout,
                is_causal: bool) -> np.ndarray:
  """Return the kind of every block, integer `[P, P, C, C]`.

  Index order: device i, step r, query chunk a, key chunk b, where C is the
  number of chunks per device. Causal attention needs T == S, so a query
  chunk and a key chunk with the same id cover the same positions.
  """
  chunk_ids = layout_lib.device_chunk_ids(num_devices, layout)
  per_device = chunk_ids.shape[1]
  kinds = np.full((num_devices, num_devices, per_device, per_device), FULL,
                  dtype=np.int32)
  if not is_causal:
    return kinds
  for device in range(num_devices):
    for step in range(num_devices):
      owner = key_owner(device, step, num_devices)
      for a, query_chunk in enumerate(chunk_ids[device]):
        for b, key_chunk in enumerate(chunk_ids[owner]):
          if key_chunk > query_chunk:
            kinds[device, step, a, b] = SKIP
          elif key_chunk == query_chunk:
            kinds[device, step, a, b] = DIAGONAL
  return kinds


def computed_blocks_per_device(kinds: np.ndarray) -> np.ndarray:
  """Return how many blocks each device computes, integer `[P]`."""
  return np.sum(kinds != SKIP, axis=(1, 2, 3))
