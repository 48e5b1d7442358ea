"""Ring attention on 2, 4 and 8 host devices against single-device attention.

Every parity case runs one compiled program that returns the output, the
log-sum-exp and the gradients with respect to query, key and value of a
loss with random cotangents, on inputs sharded over the sequence axis.
Sizes: B = 4, T = S = 48 (T = 32 for cross-attention), N = 6, K in
{1, 2, 3, 6}, H = 5, H_v = 7.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import attention_jax as aj
import oracle
from attention_jax.distributed import _schedule
from attention_jax.distributed import from_zigzag
from attention_jax.distributed import ring
from attention_jax.distributed import ring_attention
from attention_jax.distributed import sequence_positions
from attention_jax.distributed import to_zigzag
from inputs import attention_inputs
from tolerances import tolerance

BATCH, NUM_HEADS, HEAD_DIM, VALUE_DIM, LENGTH = 4, 6, 5, 7, 48
# Batch 1 is fully padded, so its queries see no key at all.
LENGTHS = (48, 0, 29, 7)
TOLERANCE = tolerance(np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
  num_devices: int
  layout: str
  is_causal: bool
  num_kv_heads: int
  query_length: int = LENGTH
  key_length: int = LENGTH
  lengths: tuple[int, ...] | None = LENGTHS


CASES = {
    "zigzag-causal-gqa-p2": Case(2, "zigzag", True, 2),
    "zigzag-causal-gqa-p4": Case(4, "zigzag", True, 2),
    "zigzag-causal-gqa-p8": Case(8, "zigzag", True, 2),
    "contiguous-causal-mqa-p4": Case(4, "contiguous", True, 1),
    "contiguous-plain-gqa-p2": Case(2, "contiguous", False, 3, lengths=None),
    "zigzag-cross-mha-p8": Case(8, "zigzag", False, 6, query_length=32),
}
MEMORY_CASES = ("zigzag-causal-gqa-p2", "zigzag-causal-gqa-p4",
                "zigzag-causal-gqa-p8")


def sequence_mesh(num_devices: int, axis_types=(AxisType.Auto,)):
  return jax.make_mesh((num_devices,), ("seq",), axis_types=axis_types)


def case_inputs(case: Case, seed: int = 0):
  """Return query, key, value and output/lse cotangents in original order."""
  query, key, value = attention_inputs(
      seed, batch=(BATCH,), query_length=case.query_length,
      key_length=case.key_length, num_heads=NUM_HEADS,
      num_kv_heads=case.num_kv_heads, head_dim=HEAD_DIM, value_dim=VALUE_DIM)
  rng = np.random.default_rng(seed + 1)
  d_out = rng.standard_normal(
      (BATCH, case.query_length, NUM_HEADS, VALUE_DIM)).astype(np.float32)
  d_lse = rng.standard_normal(
      (BATCH, case.query_length, NUM_HEADS)).astype(np.float32)
  return query, key, value, d_out, d_lse


def lengths_of(case: Case):
  return None if case.lengths is None else np.asarray(case.lengths, np.int32)


def loss_and_aux(attention, query, key, value, lengths, d_out, d_lse):
  """Return `(sum(out * d_out) + sum(lse * d_lse), (out, lse))`.

  Rows with lse = -inf (no visible key) are left out of the lse term.
  """
  out, lse = attention(query, key, value, lengths)
  finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
  loss = jnp.sum(out * d_out) + jnp.sum(finite_lse * d_lse)
  return loss, (out, lse)


def reordered(case: Case, x, axis: int = 1):
  if case.layout == "zigzag":
    return np.asarray(to_zigzag(x, case.num_devices, axis=axis))
  return x


def restored(case: Case, x, axis: int = 1):
  if case.layout == "zigzag":
    return np.asarray(from_zigzag(x, case.num_devices, axis=axis))
  return np.asarray(x)


@functools.cache
def compiled_ring(case: Case):
  """Return `(compiled, arguments)` of the ring's loss and gradients.

  The arguments are sharded over the sequence axis in the case's layout.
  The compiled program is shared by the parity and the memory tests.
  """
  mesh = sequence_mesh(case.num_devices)

  def attention(query, key, value, lengths):
    return ring_attention(
        query, key, value, mesh=mesh, axis_name="seq",
        is_causal=case.is_causal, key_value_seq_lengths=lengths,
        layout=case.layout, return_residual=True)

  function = jax.value_and_grad(
      functools.partial(loss_and_aux, attention), argnums=(0, 1, 2),
      has_aux=True)
  query, key, value, d_out, d_lse = case_inputs(case)
  sequence = NamedSharding(mesh, PartitionSpec(None, "seq"))
  arguments = [jax.device_put(reordered(case, x), sequence)
               for x in (query, key, value)]
  lengths = lengths_of(case)
  arguments.append(None if lengths is None else jax.device_put(
      lengths, NamedSharding(mesh, PartitionSpec())))
  arguments += [jax.device_put(reordered(case, x), sequence)
                for x in (d_out, d_lse)]
  compiled = jax.jit(function).lower(*arguments).compile()
  return compiled, arguments


def reference_results(case: Case, seed: int = 0):
  """Return `((loss, (out, lse)), grads)` of single-device attention."""

  def attention(query, key, value, lengths):
    return aj.dot_product_attention(
        query, key, value, is_causal=case.is_causal,
        key_value_seq_lengths=lengths, implementation="reference",
        return_residual=True)

  function = jax.value_and_grad(
      functools.partial(loss_and_aux, attention), argnums=(0, 1, 2),
      has_aux=True)
  query, key, value, d_out, d_lse = case_inputs(case, seed)
  return jax.jit(function)(query, key, value, lengths_of(case), d_out, d_lse)


def ring_results(case: Case):
  """Return ring outputs and gradients, restored to the original order."""
  compiled, arguments = compiled_ring(case)
  (loss, (out, lse)), grads = compiled(*arguments)
  grads = tuple(restored(case, grad) for grad in grads)
  return loss, restored(case, out), restored(case, lse), grads


@pytest.mark.parametrize("name", list(CASES))
def test_ring_matches_single_device(name):
  case = CASES[name]
  loss, out, lse, grads = ring_results(case)
  (ref_loss, (ref_out, ref_lse)), ref_grads = reference_results(case)

  np.testing.assert_allclose(out, ref_out, **TOLERANCE)
  np.testing.assert_allclose(lse, ref_lse, **TOLERANCE)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-4)
  for grad_name, grad, ref_grad in zip(("query", "key", "value"), grads,
                                       ref_grads):
    np.testing.assert_allclose(grad, ref_grad, **TOLERANCE,
                               err_msg=f"gradient with respect to {grad_name}")


@pytest.mark.parametrize("name", list(CASES))
def test_ring_matches_float64_oracle(name):
  case = CASES[name]
  _, out, lse, _ = ring_results(case)
  query, key, value, _, _ = case_inputs(case)
  allowed = oracle.attention_mask(
      (BATCH,), NUM_HEADS, case.query_length, case.key_length,
      is_causal=case.is_causal, key_value_seq_lengths=lengths_of(case))
  expected_out, _, expected_lse = oracle.dot_product_attention(
      query, key, value, allowed=allowed)

  np.testing.assert_allclose(out, expected_out, **TOLERANCE)
  np.testing.assert_allclose(lse, expected_lse, **TOLERANCE)


@pytest.mark.parametrize("name", ["zigzag-causal-gqa-p4",
                                  "contiguous-causal-mqa-p4"])
def test_fully_padded_sequence_is_zero(name):
  case = CASES[name]
  padded = LENGTHS.index(0)
  _, out, lse, (d_query, d_key, d_value) = ring_results(case)

  for array_name, array in (("out", out), ("d_query", d_query),
                            ("d_key", d_key), ("d_value", d_value)):
    assert not np.isnan(array).any(), f"{array_name} has NaN"
  np.testing.assert_array_equal(out[padded], 0.0)
  np.testing.assert_array_equal(lse[padded], -np.inf)
  np.testing.assert_array_equal(d_query[padded], 0.0)
  np.testing.assert_array_equal(d_key[padded], 0.0)
  np.testing.assert_array_equal(d_value[padded], 0.0)


def test_memory_per_device_falls_with_devices():
  per_device = []
  for name in MEMORY_CASES:
    compiled, _ = compiled_ring(CASES[name])
    analysis = compiled.memory_analysis()
    per_device.append(analysis.temp_size_in_bytes
                      + analysis.argument_size_in_bytes)

  devices = [CASES[name].num_devices for name in MEMORY_CASES]
  assert per_device[0] > per_device[1] > per_device[2], (
      f"bytes per device for {devices} devices: {per_device}")


# name: (mesh shape, mesh axis names, batch_axis_name, head_axis_name)
MULTI_AXIS_MESHES = {
    "batch-and-heads-sharded": ((2, 2, 2), ("data", "model", "seq"), "data",
                                "model"),
    # The ring ignores "data", so inputs and gradients are replicated on it.
    "replicated-over-data": ((2, 4), ("data", "seq"), None, None),
}


@pytest.mark.parametrize("name", list(MULTI_AXIS_MESHES))
def test_ring_with_other_mesh_axes(name):
  shape, axis_names, batch_axis, head_axis = MULTI_AXIS_MESHES[name]
  mesh = jax.make_mesh(shape, axis_names,
                       axis_types=(AxisType.Auto,) * len(shape))
  case = Case(shape[-1], "zigzag", True, 2)
  query, key, value, d_out, d_lse = case_inputs(case, seed=5)
  lengths = lengths_of(case)

  def attention(query, key, value, lengths):
    return ring_attention(
        query, key, value, mesh=mesh, axis_name="seq", is_causal=True,
        key_value_seq_lengths=lengths, layout="zigzag",
        batch_axis_name=batch_axis, head_axis_name=head_axis,
        return_residual=True)

  function = jax.jit(jax.value_and_grad(
      functools.partial(loss_and_aux, attention), argnums=(0, 1, 2),
      has_aux=True))
  (_, (out, _)), grads = function(
      *(reordered(case, x) for x in (query, key, value)), lengths,
      *(reordered(case, x) for x in (d_out, d_lse)))

  (_, (ref_out, _)), ref_grads = reference_results(case, seed=5)
  np.testing.assert_allclose(restored(case, out), ref_out, **TOLERANCE)
  for grad_name, grad, ref_grad in zip(("query", "key", "value"), grads,
                                       ref_grads):
    np.testing.assert_allclose(restored(case, grad), ref_grad, **TOLERANCE,
                               err_msg=f"gradient with respect to {grad_name}")
  expected = NamedSharding(mesh, PartitionSpec(batch_axis, "seq", head_axis,
                                               None))
  assert out.sharding.is_equivalent_to(expected, out.ndim), out.sharding


def test_ring_on_explicit_mesh():
  mesh = sequence_mesh(4, axis_types=(AxisType.Explicit,))
  case = Case(4, "contiguous", True, 3)
  query, key, value, _, _ = case_inputs(case, seed=7)
  lengths = lengths_of(case)

  with jax.set_mesh(mesh):
    out = jax.jit(lambda q, k, v, n: ring_attention(
        q, k, v, mesh=mesh, axis_name="seq", is_causal=True,
        key_value_seq_lengths=n))(query, key, value, lengths)
  expected = aj.dot_product_attention(
      query, key, value, is_causal=True, key_value_seq_lengths=lengths,
      implementation="reference")
  np.testing.assert_allclose(out, expected, **TOLERANCE)


@pytest.mark.parametrize("num_devices", [2, 4, 8])
def test_schedule_skips_exactly_hidden_blocks(num_devices):
  # Chunk length 3, so that positions inside a chunk matter.
  length = 2 * num_devices * 3
  for layout in ("contiguous", "zigzag"):
    kinds = _schedule.block_kinds(num_devices, layout, is_causal=True)
    positions = sequence_positions(length, num_devices, layout)
    chunks = kinds.shape[-1]
    for device in range(num_devices):
      for step in range(num_devices):
        owner = _schedule.key_owner(device, step, num_devices)
        for a, queries in enumerate(np.split(positions[device], chunks)):
          for b, keys in enumerate(np.split(positions[owner], chunks)):
            visible = keys[None, :] <= queries[:, None]
            kind = kinds[device, step, a, b]
            where = f"{layout}, device {device}, step {step}, block {a},{b}"
            assert (kind == _schedule.SKIP) == (not visible.any()), where
            assert (kind == _schedule.FULL) == bool(visible.all()), where


def test_zigzag_balances_computed_blocks():
  num_devices = 8
  mesh = sequence_mesh(num_devices)
  query, key, value = attention_inputs(
      3, batch=(1,), query_length=2 * num_devices, key_length=2 * num_devices,
      num_heads=2, num_kv_heads=1, head_dim=3, value_dim=3)
  counts = {}
  for layout in ("contiguous", "zigzag"):
    counts[layout] = np.asarray(ring._count_computed_blocks(
        query, key, value, mesh=mesh, axis_name="seq", is_causal=True,
        layout=layout))

  # Contiguous: device i computes its diagonal block and i blocks before.
  np.testing.assert_array_equal(counts["contiguous"],
                                np.arange(1, num_devices + 1))
  # Zigzag: three of four chunk pairs at step 0, then two per step.
  np.testing.assert_array_equal(counts["zigzag"],
                                np.full(num_devices, 2 * num_devices + 1))
  for layout, count in counts.items():
    planned = _schedule.computed_blocks_per_device(
        _schedule.block_kinds(num_devices, layout, is_causal=True))
    np.testing.assert_array_equal(count, planned, err_msg=layout)


BAD_CALLS = {
    "axis not in mesh": (
        dict(axis_name="sequence"), ValueError,
        ["`axis_name`", "('seq',)", "'sequence'"]),
    "zigzag length": (
        dict(layout="zigzag", length=12), ValueError,
        ["`query` sequence length T", "2 x 4 devices = 8", "12"]),
    "contiguous length": (
        dict(length=10), ValueError, ["divisible by 1 x 4 devices = 4", "10"]),
    "causal cross": (
        dict(is_causal=True, query_length=8), ValueError,
        ["T == S", "T=8", "S=16"]),
    "unknown layout": (
        dict(layout="striped"), ValueError, ["`layout`", "'striped'"]),
    "batch axis missing": (
        dict(batch_axis_name="data"), ValueError,
        ["`batch_axis_name`", "'data'"]),
    "batch axis repeated": (
        dict(batch_axis_name="seq"), ValueError,
        ["`batch_axis_name`", "'seq'"]),
    "rank": (
        dict(rank=5), ValueError, ["`query`", "[B, T, N, H]", "(2, 3, 16,"]),
    "lengths shape": (
        dict(key_value_seq_lengths=np.zeros((3,), np.int32)), ValueError,
        ["key_value_seq_lengths", "(2,)", "(3,)"]),
    "lengths dtype": (
        dict(key_value_seq_lengths=np.zeros((2,), np.float32)), TypeError,
        ["key_value_seq_lengths", "integer", "float32"]),
    "mesh type": (
        dict(mesh="seq"), TypeError, ["`mesh`", "str"]),
    # K = 3 key/value heads do not split over a model axis of size 2.
    "heads not divisible": (
        dict(model_axis=True, head_axis_name="model"), ValueError,
        ["`key` head count K", "size 2 of mesh axis 'model'", "got 3"]),
    "batch not divisible": (
        dict(model_axis=True, batch_axis_name="model", batch=3), ValueError,
        ["`query` batch size B", "size 2", "got 3"]),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises(name):
  options, error, fragments = BAD_CALLS[name]
  options = dict(options)
  length = options.pop("length", 16)
  query_length = options.pop("query_length", length)
  batch = (options.pop("batch", 2),)
  if options.pop("rank", 4) == 5:
    batch = (2, 3)
  query, key, value = attention_inputs(
      0, batch=batch, query_length=query_length, key_length=length,
      num_heads=6, num_kv_heads=3, head_dim=5, value_dim=7)
  if options.pop("model_axis", False):
    options["mesh"] = jax.make_mesh((2, 4), ("model", "seq"),
                                    axis_types=(AxisType.Auto,) * 2)
  options.setdefault("mesh", sequence_mesh(4))
  options.setdefault("axis_name", "seq")

  with pytest.raises(error) as raised:
    ring_attention(query, key, value, **options)
  for fragment in fragments:
    assert fragment in str(raised.value)


def test_bfloat16_matches_single_device():
  mesh = sequence_mesh(4)
  case = Case(4, "zigzag", True, 2)
  query, key, value = (jnp.asarray(x, jnp.bfloat16)
                       for x in case_inputs(case, seed=9)[:3])
  lengths = lengths_of(case)

  out = jax.jit(lambda q, k, v: ring_attention(
      q, k, v, mesh=mesh, axis_name="seq", is_causal=True,
      key_value_seq_lengths=lengths, layout="zigzag"))(
          *(reordered(case, x) for x in (query, key, value)))
  expected = aj.dot_product_attention(
      query, key, value, is_causal=True, key_value_seq_lengths=lengths,
      implementation="reference")

  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      restored(case, out.astype(jnp.float32)),
      np.asarray(expected.astype(jnp.float32)), **tolerance(jnp.bfloat16))
