"""Give this folder's tests eight CPU devices, or skip them.

XLA reads `XLA_FLAGS` once, when JAX first initializes a backend, so the
flag is set here, at import time, before any test touches a device. Run
these tests in their own pytest session:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m pytest -q tests/multidevice

The main session does not collect this folder (see `norecursedirs` in
pyproject.toml) because it initializes JAX with one device first.
"""

from __future__ import annotations

import os
import pathlib
import sys

REQUIRED_DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={REQUIRED_DEVICES}"
if "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _FLAG).strip()

# Shared test helpers (oracle, tolerances, inputs) live one folder up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _require_devices():
  """Skip each test unless JAX has at least `REQUIRED_DEVICES` devices."""
  count = jax.device_count()
  if count < REQUIRED_DEVICES:
    pytest.skip(
        f"needs {REQUIRED_DEVICES} devices but JAX has {count}: JAX was "
        f"initialized before {_FLAG} took effect; run this folder in its "
        "own session: XLA_FLAGS=" + _FLAG
        + " python -m pytest -q tests/multidevice")
