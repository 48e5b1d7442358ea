"""Mask constructors against hand-written expected arrays."""

from __future__ import annotations

import numpy as np
import pytest

import attention_jax as aj

X = True
_ = False


def assert_mask_equal(actual, expected):
  assert actual.dtype == np.bool_
  np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


def test_causal_mask_square():
  expected = [
      [X, _, _],
      [X, X, _],
      [X, X, X],
  ]
  assert_mask_equal(aj.causal_mask(3, 3), expected)


def test_causal_mask_fewer_queries_bottom_right():
  # Two queries over four keys sit at positions 2 and 3.
  expected = [
      [X, X, X, _],
      [X, X, X, X],
  ]
  assert_mask_equal(aj.causal_mask(2, 4), expected)


def test_causal_mask_more_queries_than_keys():
  # Four queries over two keys sit at positions -2, -1, 0 and 1, so the first
  # two see no key.
  expected = [
      [_, _],
      [_, _],
      [X, _],
      [X, X],
  ]
  assert_mask_equal(aj.causal_mask(4, 2), expected)


def test_causal_mask_scalar_offset():
  expected = [
      [X, _, _, _],
      [X, X, _, _],
  ]
  assert_mask_equal(aj.causal_mask(2, 4, query_offset=0), expected)


def test_causal_mask_batched_offset():
  expected = [
      [[[X, _, _, _],
        [X, X, _, _]]],
      [[[X, X, X, _],
        [X, X, X, X]]],
  ]
  mask = aj.causal_mask(2, 4, query_offset=np.array([0, 2]))
  assert mask.shape == (2, 1, 2, 4)
  assert_mask_equal(mask, expected)


def test_sliding_window_left_only():
  expected = [
      [X, _, _, _],
      [X, X, _, _],
      [_, X, X, _],
      [_, _, X, X],
  ]
  assert_mask_equal(aj.sliding_window_mask(4, 4, (1, 0)), expected)


def test_sliding_window_right_only():
  expected = [
      [X, X, _, _],
      [_, X, X, _],
      [_, _, X, X],
      [_, _, _, X],
  ]
  assert_mask_equal(aj.sliding_window_mask(4, 4, (0, 1)), expected)


def test_sliding_window_int_is_symmetric():
  expected = [
      [X, X, _, _],
      [X, X, X, _],
      [_, X, X, X],
      [_, _, X, X],
  ]
  assert_mask_equal(aj.sliding_window_mask(4, 4, 1), expected)


def test_sliding_window_fewer_queries():
  # Two queries over five keys sit at positions 3 and 4.
  expected = [
      [_, X, X, X, X],
      [_, _, X, X, X],
  ]
  assert_mask_equal(aj.sliding_window_mask(2, 5, (2, 1)), expected)


def test_sliding_window_scalar_offset():
  expected = [
      [X, X, _, _, _],
      [X, X, X, _, _],
  ]
  assert_mask_equal(
      aj.sliding_window_mask(2, 5, (2, 1), query_offset=0), expected)


def test_sliding_window_batched_offset():
  expected = [
      [[[X, _, _, _, _],
        [X, X, _, _, _]]],
      [[[_, _, X, X, _],
        [_, _, _, X, X]]],
  ]
  mask = aj.sliding_window_mask(2, 5, (1, 0), query_offset=np.array([0, 3]))
  assert mask.shape == (2, 1, 2, 5)
  assert_mask_equal(mask, expected)


def test_padding_mask_both_lengths():
  expected = [
      [[[X, X, X],
        [_, _, _]]],
      [[[X, _, _],
        [X, _, _]]],
  ]
  mask = aj.padding_mask(2, 3, query_seq_lengths=np.array([1, 2]),
                         key_value_seq_lengths=np.array([3, 1]))
  assert mask.shape == (2, 1, 2, 3)
  assert_mask_equal(mask, expected)


def test_padding_mask_key_lengths_only():
  expected = [
      [[[X, X, _]]],
      [[[_, _, _]]],
  ]
  mask = aj.padding_mask(2, 3, key_value_seq_lengths=np.array([2, 0]))
  assert mask.shape == (2, 1, 1, 3)
  assert_mask_equal(mask, expected)


def test_padding_mask_query_lengths_only():
  expected = [
      [[[X], [_]]],
      [[[X], [X]]],
  ]
  mask = aj.padding_mask(2, 3, query_seq_lengths=np.array([1, 2]))
  assert mask.shape == (2, 1, 2, 1)
  assert_mask_equal(mask, expected)


def test_padding_mask_no_lengths():
  assert aj.padding_mask(2, 3) is None


def test_segment_mask_packed():
  expected = [[[
      [X, _, _, _],
      [X, _, _, _],
      [_, X, X, _],
  ]]]
  mask = aj.segment_mask(np.array([[0, 0, 1]]), np.array([[0, 1, 1, 2]]))
  assert mask.shape == (1, 1, 3, 4)
  assert_mask_equal(mask, expected)


def test_combine_masks_logical_and():
  first = np.array([[X, X], [_, X]])
  second = np.array([[X, _], [X, X]])
  expected = [[X, _], [_, X]]
  assert_mask_equal(aj.combine_masks(first, second), expected)


def test_combine_masks_skips_none():
  first = np.array([[X, _], [_, X]])
  assert_mask_equal(aj.combine_masks(None, first, None), first)


def test_combine_masks_all_none():
  assert aj.combine_masks(None, None) is None


def test_combine_masks_broadcasts():
  causal = aj.causal_mask(2, 2)
  padding = aj.padding_mask(2, 2, key_value_seq_lengths=np.array([1, 2]))
  expected = [
      [[[X, _],
        [X, _]]],
      [[[X, _],
        [X, X]]],
  ]
  combined = aj.combine_masks(causal, padding)
  assert combined.shape == (2, 1, 2, 2)
  assert_mask_equal(combined, expected)


@pytest.mark.parametrize(
    "window", [np.int64(1), np.array([1, 1]), [1, 1]],
    ids=["numpy_int", "numpy_pair", "list_pair"])
def test_sliding_window_accepts_window_types(window):
  expected = [
      [X, X, _],
      [X, X, X],
      [_, X, X],
  ]
  assert_mask_equal(aj.sliding_window_mask(3, 3, window), expected)
