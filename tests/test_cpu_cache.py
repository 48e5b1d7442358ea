"""Tests for reading the host's L2 cache size from sysfs."""

import pytest

from attention_jax import _cpu_cache


@pytest.mark.parametrize("text, expected",
                         [("1024K", 1 << 20), ("2M", 2 << 20), ("512", 512),
                          (" 48k\n", 48 << 10), ("", None), ("K", None),
                          ("1.5M", None), ("12T", None)])
def test_parse_size(text, expected):
  assert _cpu_cache.parse_size(text) == expected


def _write_cache(folder, index, level, kind, size):
  entry = folder / f"index{index}"
  entry.mkdir()
  (entry / "level").write_text(f"{level}\n")
  (entry / "type").write_text(f"{kind}\n")
  (entry / "size").write_text(f"{size}\n")


def test_reads_level_two(tmp_path):
  _write_cache(tmp_path, 0, 1, "Data", "48K")
  _write_cache(tmp_path, 1, 1, "Instruction", "32K")
  _write_cache(tmp_path, 2, 2, "Unified", "2048K")
  _write_cache(tmp_path, 3, 3, "Unified", "32768K")

  assert _cpu_cache.read_l2_bytes(str(tmp_path)) == 2 << 20


def test_unknown_without_level_two(tmp_path):
  _write_cache(tmp_path, 0, 1, "Data", "48K")
  _write_cache(tmp_path, 1, 2, "Instruction", "1024K")

  assert _cpu_cache.read_l2_bytes(str(tmp_path)) is None
  assert _cpu_cache.read_l2_bytes(str(tmp_path / "missing")) is None


def test_this_host_reads_or_is_unknown():
  size = _cpu_cache.read_l2_bytes()

  assert size is None or size >= 64 << 10
