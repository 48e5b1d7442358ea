"""The host CPU's L2 cache size, which some default tile sizes depend on.

Linux describes each cache of a CPU under
`/sys/devices/system/cpu/cpu0/cache/index*/` with its `level`, `type` and
`size` (for example `1024K`). Elsewhere, or when those files cannot be
read, the size is unknown and the tile sizes keep their defaults.
"""

from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger(__name__)

CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def parse_size(text: str) -> int | None:
  """Return the bytes of a sysfs cache size such as `2048K`, or None."""
  text = text.strip().upper()
  digits = text.rstrip("KMG")
  unit = text[len(digits):]
  if not digits.isdigit() or unit not in _UNITS:
    return None
  return int(digits) * _UNITS[unit]


def _read(path: str) -> str | None:
  try:
    with open(path, encoding="ascii") as handle:
      return handle.read().strip()
  except (OSError, UnicodeDecodeError):
    return None


def read_l2_bytes(cache_dir: str = CACHE_DIR) -> int | None:
  """Return the size of the first CPU's level-2 data cache in bytes, or None.

  Reads the sysfs layout described in the module docstring under
  `cache_dir`. None when no entry describes a unified or data cache of
  level 2.
  """
  try:
    entries = sorted(os.listdir(cache_dir))
  except OSError:
    return None
  for entry in entries:
    if not entry.startswith("index"):
      continue
    folder = os.path.join(cache_dir, entry)
    if (_read(os.path.join(folder, "level")) == "2"
        and _read(os.path.join(folder, "type")) in ("Unified", "Data")):
      size = _read(os.path.join(folder, "size"))
      return None if size is None else parse_size(size)
  return None


@functools.cache
def l2_bytes_per_core() -> int | None:
  """Return the host's L2 cache per core in bytes, or None if unknown.

  The size is that of the first CPU's L2 cache, which on most x86
  processors belongs to that core alone (the efficiency cores of Intel's
  hybrid processors share theirs in clusters of four). It is read once per
  process.
  """
  size = read_l2_bytes()
  logger.debug("L2 cache of cpu0: %s bytes", size)
  return size
