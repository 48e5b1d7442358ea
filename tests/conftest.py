"""Fixtures shared by the test modules."""

import pytest

from attention_jax import _cpu_cache


@pytest.fixture
def wide_l2_cache(monkeypatch):
  """Report an L2 cache of 2 MB per core, which the wide backward tiles need.

  The default tiles then do not depend on the machine running the tests.
  """
  monkeypatch.setattr(_cpu_cache, "l2_bytes_per_core", lambda: 2 << 20)
