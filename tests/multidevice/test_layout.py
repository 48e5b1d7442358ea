"""Sequence layouts across devices: zigzag reordering and device positions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.distributed import from_zigzag
from attention_jax.distributed import sequence_positions
from attention_jax.distributed import to_zigzag


def test_zigzag_positions_by_hand():
  # P = 2, L = 8: four chunks of 2 positions. Device 0 stores chunks 0 and
  # 3, device 1 stores chunks 1 and 2.
  expected = np.array([[0, 1, 6, 7], [2, 3, 4, 5]])
  np.testing.assert_array_equal(sequence_positions(8, 2, "zigzag"), expected)


def test_contiguous_positions_are_natural_order():
  np.testing.assert_array_equal(sequence_positions(12, 3, "contiguous"),
                                np.arange(12).reshape(3, 4))


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_zigzag_devices_share_positions_evenly(num_devices):
  length = 2 * num_devices * 5
  positions = sequence_positions(length, num_devices, "zigzag")

  np.testing.assert_array_equal(np.sort(positions.reshape(-1)),
                                np.arange(length))
  # A query at position p attends to p + 1 keys under a causal mask, and
  # the zigzag layout gives every device the same total.
  work = np.sum(positions + 1, axis=1)
  np.testing.assert_array_equal(work, np.full(num_devices, work[0]))


def test_to_zigzag_matches_positions_and_round_trips():
  tokens = np.arange(3 * 24).reshape(3, 24)
  reordered = to_zigzag(tokens, 4)

  np.testing.assert_array_equal(
      reordered[0], sequence_positions(24, 4, "zigzag").reshape(-1))
  np.testing.assert_array_equal(from_zigzag(reordered, 4), tokens)


def test_zigzag_on_another_axis():
  query = np.random.default_rng(0).standard_normal((2, 16, 3, 5)).astype(
      np.float32)
  moved = np.moveaxis(query, 1, 0)

  np.testing.assert_array_equal(
      np.moveaxis(np.asarray(to_zigzag(moved, 2, axis=0)), 0, 1),
      to_zigzag(query, 2))
  np.testing.assert_array_equal(
      from_zigzag(to_zigzag(query, 2, axis=-3), 2, axis=-3), query)


@pytest.mark.parametrize("call, fragments", [
    (lambda: to_zigzag(jnp.zeros((2, 12)), 4),
     ["sequence axis 1 of `x`", "2 x 4 devices = 8", "12"]),
    (lambda: sequence_positions(9, 2, "contiguous"),
     ["1 x 2 devices = 2", "9"]),
    (lambda: sequence_positions(8, 2, "striped"), ["`layout`", "'striped'"]),
    (lambda: sequence_positions(8, 0), ["`num_devices`", "0"]),
    (lambda: from_zigzag(jnp.zeros((2, 8)), 2, axis=2), ["`axis`", "2"]),
])
def test_bad_layout_input_raises(call, fragments):
  with pytest.raises(ValueError) as raised:
    call()
  for fragment in fragments:
    assert fragment in str(raised.value)
