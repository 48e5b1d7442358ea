"""Invalid inputs raise `ValueError` or `TypeError` with a message that names
the argument and shows the shape or dtype it received."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import attention_jax as aj
from inputs import attention_inputs
from inputs import random_normal

# Dot-product inputs: query [2, 7, 6, 5], key [2, 11, 3, 5],
# value [2, 11, 3, 13].
QUERY, KEY, VALUE = attention_inputs(0)
MASK = np.ones((2, 6, 7, 11), dtype=bool)


def attention(query=QUERY, key=KEY, value=VALUE, **options):
  return aj.dot_product_attention(query, key, value, **options)


def weights(query=QUERY, key=KEY, **options):
  return aj.dot_product_attention_weights(query, key, **options)


def zeros(shape, dtype=np.float32):
  return np.zeros(shape, dtype)


# Per-head inputs: query [2, 7, 3, 5], key [2, 11, 3, 4], value
# [2, 11, 3, 13], hidden size 17.
PH_QUERY = random_normal(1, (2, 7, 3, 5))
PH_KEY = random_normal(2, (2, 11, 3, 4))
PH_VALUE = random_normal(3, (2, 11, 3, 13))
ADDITIVE_PARAMS = dict(query_kernel=random_normal(4, (3, 5, 17)),
                       key_kernel=random_normal(5, (3, 4, 17)),
                       score_vector=random_normal(6, (3, 17)))
KERNEL = random_normal(7, (3, 5, 4))


def additive(query=PH_QUERY, key=PH_KEY, value=PH_VALUE, **options):
  arguments = dict(ADDITIVE_PARAMS)
  for name in ADDITIVE_PARAMS:
    if name in options:
      arguments[name] = options.pop(name)
  return aj.additive_attention(query, key, value, **arguments, **options)


def multiplicative(query=PH_QUERY, key=PH_KEY, value=PH_VALUE, kernel=KERNEL,
                   **options):
  return aj.multiplicative_attention(query, key, value, kernel, **options)


# Basic attention inputs: [2, 11, 5], kernel [5, 7], bias and score vector [7].
INPUTS = random_normal(8, (2, 11, 5))
BASIC_PARAMS = dict(kernel=random_normal(9, (5, 7)),
                    bias=random_normal(10, (7,)),
                    score_vector=random_normal(11, (7,)))


def basic(inputs=INPUTS, **options):
  arguments = dict(BASIC_PARAMS)
  for name in BASIC_PARAMS:
    if name in options:
      arguments[name] = options.pop(name)
  return aj.basic_attention(inputs, **arguments, **options)


INT_LENGTHS = np.array([3, 4], np.int32)

# (id, call, error type, fragments the message should contain)
BAD_INPUTS = [
    # dot_product_attention: query, key and value.
    ("query_rank", lambda: attention(query=QUERY[0, 0]), ValueError,
     ["`query`", "(6, 5)"]),
    ("key_rank", lambda: attention(key=KEY[0, 0]), ValueError,
     ["`key`", "(3, 5)"]),
    ("key_rank_differs", lambda: attention(key=KEY[0], value=VALUE[0]),
     ValueError, ["`key`", "(11, 3, 5)"]),
    ("kv_heads_not_dividing", lambda: attention(
        key=zeros((2, 11, 4, 5)), value=zeros((2, 11, 4, 13))), ValueError,
     ["`key`", "N=6", "(2, 11, 4, 5)"]),
    ("head_dim_mismatch", lambda: attention(key=zeros((2, 11, 3, 4))),
     ValueError, ["`key`", "H=5", "(2, 11, 3, 4)"]),
    ("batch_mismatch", lambda: attention(
        key=zeros((3, 11, 3, 5)), value=zeros((3, 11, 3, 13))), ValueError,
     ["`key`", "(3, 11, 3, 5)"]),
    ("value_length_mismatch", lambda: attention(value=zeros((2, 10, 3, 13))),
     ValueError, ["`value`", "(2, 10, 3, 13)"]),
    ("value_heads_mismatch", lambda: attention(value=zeros((2, 11, 2, 13))),
     ValueError, ["`value`", "(2, 11, 2, 13)"]),
    ("value_rank", lambda: attention(value=zeros((2, 11, 39))), ValueError,
     ["`value`", "(2, 11, 39)"]),
    ("query_integer", lambda: attention(query=QUERY.astype(np.int32)),
     TypeError, ["`query`", "int32"]),
    ("key_integer", lambda: attention(key=KEY.astype(np.int32)), TypeError,
     ["`key`", "int32"]),
    ("value_integer", lambda: attention(value=VALUE.astype(np.int32)),
     TypeError, ["`value`", "int32"]),
    # Masks and biases.
    ("mask_float", lambda: attention(mask=MASK.astype(np.float32)),
     TypeError, ["`mask`", "float32"]),
    ("mask_integer", lambda: attention(mask=MASK.astype(np.int32)),
     TypeError, ["`mask`", "int32"]),
    ("mask_not_broadcastable", lambda: attention(
        mask=np.ones((2, 6, 7, 10), bool)), ValueError,
     ["`mask`", "(2, 6, 7, 10)", "(2, 6, 7, 11)"]),
    ("mask_extra_axis", lambda: attention(
        mask=np.ones((3, 2, 6, 7, 11), bool)), ValueError,
     ["`mask`", "(3, 2, 6, 7, 11)"]),
    ("bias_not_broadcastable", lambda: attention(bias=zeros((6, 7, 10))),
     ValueError, ["`bias`", "(6, 7, 10)"]),
    ("bias_integer", lambda: attention(
        bias=np.zeros((6, 7, 11), np.int32)), TypeError, ["`bias`", "int32"]),
    # Sequence lengths, offsets and segment ids.
    ("query_lengths_shape", lambda: attention(
        query_seq_lengths=np.array([3, 4, 5], np.int32)), ValueError,
     ["`query_seq_lengths`", "(3,)"]),
    ("query_lengths_float", lambda: attention(
        query_seq_lengths=INT_LENGTHS.astype(np.float32)), TypeError,
     ["`query_seq_lengths`", "float32"]),
    ("key_lengths_shape", lambda: attention(
        key_value_seq_lengths=INT_LENGTHS[:, None]), ValueError,
     ["`key_value_seq_lengths`", "(2, 1)"]),
    ("key_lengths_float", lambda: attention(
        key_value_seq_lengths=INT_LENGTHS.astype(np.float32)), TypeError,
     ["`key_value_seq_lengths`", "float32"]),
    ("query_offset_shape", lambda: attention(
        is_causal=True, query_offset=np.array([0, 1, 2], np.int32)),
     ValueError, ["`query_offset`", "(3,)"]),
    ("query_offset_float", lambda: attention(
        is_causal=True, query_offset=np.array([0.0, 1.0], np.float32)),
     TypeError, ["`query_offset`", "float32"]),
    ("query_segment_ids_only", lambda: attention(
        query_segment_ids=np.zeros((2, 7), np.int32)), ValueError,
     ["`query_segment_ids`", "`key_segment_ids`"]),
    ("key_segment_ids_only", lambda: attention(
        key_segment_ids=np.zeros((2, 11), np.int32)), ValueError,
     ["`query_segment_ids`", "`key_segment_ids`"]),
    ("segment_ids_shape", lambda: attention(
        query_segment_ids=np.zeros((2, 7), np.int32),
        key_segment_ids=np.zeros((2, 7), np.int32)), ValueError,
     ["`key_segment_ids`", "(2, 7)"]),
    ("segment_ids_float", lambda: attention(
        query_segment_ids=np.zeros((2, 7), np.float32),
        key_segment_ids=np.zeros((2, 11), np.int32)), TypeError,
     ["`query_segment_ids`", "float32"]),
    # Windows, dropout and implementation.
    ("window_negative", lambda: attention(local_window_size=(-1, 2)),
     ValueError, ["`local_window_size`", "(-1, 2)"]),
    ("window_negative_int", lambda: attention(local_window_size=-3),
     ValueError, ["`local_window_size`", "-3"]),
    ("window_three_values", lambda: attention(local_window_size=(1, 2, 3)),
     ValueError, ["`local_window_size`", "(1, 2, 3)"]),
    ("window_string", lambda: attention(local_window_size="wide"),
     ValueError, ["`local_window_size`", "'wide'"]),
    ("window_float", lambda: attention(local_window_size=1.5), ValueError,
     ["`local_window_size`", "1.5"]),
    ("dropout_rate_one", lambda: attention(dropout_rate=1.0), ValueError,
     ["`dropout_rate`", "1.0"]),
    ("dropout_rate_negative", lambda: attention(dropout_rate=-0.1),
     ValueError, ["`dropout_rate`", "-0.1"]),
    ("implementation_unknown", lambda: attention(implementation="flash"),
     ValueError, ["`implementation`", "'flash'"]),
    # dot_product_attention_weights.
    ("weights_query_rank", lambda: weights(query=QUERY[0, 0]), ValueError,
     ["`query`", "(6, 5)"]),
    ("weights_kv_heads_not_dividing", lambda: weights(
        key=zeros((2, 11, 4, 5))), ValueError, ["`key`", "(2, 11, 4, 5)"]),
    ("weights_mask_float", lambda: weights(mask=MASK.astype(np.float32)),
     TypeError, ["`mask`", "float32"]),
    ("weights_bias_not_broadcastable", lambda: weights(
        bias=zeros((2, 1, 7, 3))), ValueError, ["`bias`", "(2, 1, 7, 3)"]),
    ("weights_dropout_rate", lambda: weights(dropout_rate=2.0), ValueError,
     ["`dropout_rate`", "2.0"]),
    # additive_attention.
    ("additive_query_rank", lambda: additive(query=PH_QUERY[0, 0]),
     ValueError, ["`query`", "(3, 5)"]),
    ("additive_key_batch_mismatch", lambda: additive(
        key=zeros((3, 11, 3, 4)), value=zeros((3, 11, 3, 13)),
        mask=np.ones((2, 3, 7, 11), bool)), ValueError,
     ["`key`", "(3, 11, 3, 4)"]),
    ("additive_key_heads_mismatch", lambda: additive(
        key=zeros((2, 11, 2, 4)), value=zeros((2, 11, 2, 13))), ValueError,
     ["`key`", "(2, 11, 2, 4)"]),
    ("additive_value_mismatch", lambda: additive(
        value=zeros((2, 10, 3, 13))), ValueError,
     ["`value`", "(2, 10, 3, 13)"]),
    ("additive_query_kernel_shape", lambda: additive(
        query_kernel=zeros((3, 4, 17))), ValueError,
     ["`query_kernel`", "(3, 4, 17)"]),
    ("additive_key_kernel_shape", lambda: additive(
        key_kernel=zeros((3, 5, 17))), ValueError,
     ["`key_kernel`", "(3, 5, 17)"]),
    ("additive_score_vector_heads", lambda: additive(
        score_vector=zeros((2, 17))), ValueError,
     ["`score_vector`", "(2, 17)"]),
    ("additive_query_integer", lambda: additive(
        query=PH_QUERY.astype(np.int32)), TypeError, ["`query`", "int32"]),
    ("additive_mask_float", lambda: additive(
        mask=np.ones((2, 3, 7, 11), np.float32)), TypeError,
     ["`mask`", "float32"]),
    ("additive_bias_not_broadcastable", lambda: additive(
        bias=zeros((3, 7, 5))), ValueError, ["`bias`", "(3, 7, 5)"]),
    ("additive_window_negative", lambda: additive(local_window_size=(0, -2)),
     ValueError, ["`local_window_size`", "(0, -2)"]),
    ("additive_dropout_rate", lambda: additive(dropout_rate=1.0), ValueError,
     ["`dropout_rate`", "1.0"]),
    # multiplicative_attention.
    ("multiplicative_kernel_shape", lambda: multiplicative(
        kernel=zeros((3, 5, 5))), ValueError, ["`kernel`", "(3, 5, 5)"]),
    ("multiplicative_kernel_integer", lambda: multiplicative(
        kernel=KERNEL.astype(np.int32)), TypeError, ["`kernel`", "int32"]),
    ("multiplicative_key_rank", lambda: multiplicative(key=PH_KEY[0, 0]),
     ValueError, ["`key`", "(3, 4)"]),
    ("multiplicative_key_batch_mismatch", lambda: multiplicative(
        key=zeros((3, 11, 3, 4)), value=zeros((3, 11, 3, 13)),
        key_value_seq_lengths=INT_LENGTHS), ValueError,
     ["`key`", "(3, 11, 3, 4)"]),
    ("multiplicative_lengths_shape", lambda: multiplicative(
        query_seq_lengths=np.array([1], np.int32)), ValueError,
     ["`query_seq_lengths`", "(1,)"]),
    # basic_attention.
    ("basic_inputs_rank", lambda: basic(inputs=INPUTS[0, 0]), ValueError,
     ["`inputs`", "(5,)"]),
    ("basic_inputs_integer", lambda: basic(inputs=INPUTS.astype(np.int32)),
     TypeError, ["`inputs`", "int32"]),
    ("basic_kernel_shape", lambda: basic(kernel=zeros((4, 7))), ValueError,
     ["`kernel`", "(4, 7)"]),
    ("basic_bias_shape", lambda: basic(bias=zeros((6,))), ValueError,
     ["`bias`", "(6,)"]),
    ("basic_score_vector_rank", lambda: basic(score_vector=zeros((7, 1))),
     ValueError, ["`score_vector`", "(7, 1)"]),
    ("basic_mask_float", lambda: basic(mask=np.ones((2, 11), np.float32)),
     TypeError, ["`mask`", "float32"]),
    ("basic_mask_not_broadcastable", lambda: basic(
        mask=np.ones((2, 10), bool)), ValueError, ["`mask`", "(2, 10)"]),
    ("basic_values_shape", lambda: basic(values=zeros((2, 10, 13))),
     ValueError, ["`values`", "(2, 10, 13)"]),
    ("basic_values_integer", lambda: basic(
        values=np.zeros((2, 11, 13), np.int32)), TypeError,
     ["`values`", "int32"]),
    # Mask constructors, dropout and scores.
    ("segment_mask_batch_mismatch", lambda: aj.segment_mask(
        np.zeros((1, 2), np.int32), np.zeros((2, 1), np.int32)), ValueError,
     ["`query_segment_ids`", "(1, 2)", "(2, 1)"]),
    ("segment_mask_float", lambda: aj.segment_mask(
        np.zeros((1, 2), np.int32), np.zeros((1, 2), np.float32)), TypeError,
     ["`key_segment_ids`", "float32"]),
    ("combine_masks_float", lambda: aj.combine_masks(
        np.ones((2, 2), bool), np.ones((2, 2), np.float32)), TypeError,
     ["`masks[1]`", "float32"]),
    ("causal_mask_float_offset", lambda: aj.causal_mask(
        2, 3, query_offset=np.float32(1.0)), TypeError,
     ["`query_offset`", "float32"]),
    ("sliding_window_negative", lambda: aj.sliding_window_mask(2, 3, (1, -1)),
     ValueError, ["`local_window_size`", "(1, -1)"]),
    ("padding_mask_float_lengths", lambda: aj.padding_mask(
        2, 3, key_value_seq_lengths=np.array([1.0], np.float32)), TypeError,
     ["`key_value_seq_lengths`", "float32"]),
    ("attention_dropout_rate", lambda: aj.attention_dropout(
        zeros((2, 3)), 1.5, jax.random.key(0)), ValueError,
     ["`dropout_rate`", "1.5"]),
    ("dot_product_scores_heads", lambda: aj.dot_product_scores(
        QUERY, zeros((2, 11, 4, 5))), ValueError, ["`key`", "(2, 11, 4, 5)"]),
    ("feedforward_scores_kernel", lambda: aj.feedforward_scores(
        INPUTS, zeros((5, 6)), BASIC_PARAMS["bias"],
        BASIC_PARAMS["score_vector"]), ValueError, ["`kernel`", "(5, 6)"]),
]


@pytest.mark.parametrize(
    "call, error, fragments", [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises(call, error, fragments):
  with pytest.raises(error) as raised:
    call()
  message = str(raised.value)
  for fragment in fragments:
    assert fragment in message


# Array arguments that are traced under `jax.jit`. Checks on their static
# shapes and dtypes still raise while tracing.
JIT_BAD_INPUTS = {
    "query_rank": (dict(query=QUERY[0, 0]), ValueError),
    "kv_heads_not_dividing": (dict(key=zeros((2, 11, 4, 5)),
                                   value=zeros((2, 11, 4, 13))), ValueError),
    "value_length_mismatch": (dict(value=zeros((2, 10, 3, 13))), ValueError),
    "mask_float": (dict(mask=MASK.astype(np.float32)), TypeError),
    "bias_not_broadcastable": (dict(bias=zeros((6, 7, 10))), ValueError),
    "key_lengths_float": (dict(
        key_value_seq_lengths=INT_LENGTHS.astype(np.float32)), TypeError),
    "query_offset_shape": (dict(query_offset=np.array([0, 1, 2], np.int32)),
                           ValueError),
}


@pytest.mark.parametrize("name", list(JIT_BAD_INPUTS))
def test_bad_input_raises_under_jit(name):
  arrays, error = JIT_BAD_INPUTS[name]
  with pytest.raises(error):
    jax.jit(attention, static_argnames="is_causal")(is_causal=True, **arrays)
