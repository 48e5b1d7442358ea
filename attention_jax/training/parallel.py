"""Data- and sequence-parallel training over the available devices.

A `ParallelPlan` lays the devices out as a mesh with a "data" axis, which
splits each batch, and a "sequence" axis, which splits each window for
ring attention (`attention_jax.distributed.ring_attention`). Parameters and
optimizer state are replicated on every device. Windows are reordered into
the zigzag layout before they enter the model, so that every device of the
sequence axis does the same causal work, and the model receives the
original positions of the reordered tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from attention_jax.training.errors import UserInputError

DATA_AXIS = "data"
SEQUENCE_AXIS = "sequence"
LAYOUT = "zigzag"
# Mechanisms whose attention ring attention computes: plain dot-product ones.
SEQUENCE_PARALLEL_MECHANISMS = ("dot", "scaled", "gqa")


@dataclasses.dataclass(frozen=True)
class ParallelPlan:
    """The mesh of one training run; hashable, so jit-compiled steps take it as a static argument."""

    mesh: Mesh

    @property
    def data(self) -> int:
        return int(self.mesh.shape[DATA_AXIS])

    @property
    def sequence(self) -> int:
        return int(self.mesh.shape[SEQUENCE_AXIS])

    @property
    def uses_ring(self) -> bool:
        return self.sequence > 1

    def replicate(self, tree):
        """Place every array of `tree` on every device of the mesh."""
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def shard_batch(self, windows: np.ndarray) -> jax.Array:
        """Place windows [B, T + 1] with the batch split over the data axis."""
        return jax.device_put(windows, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS)))

    def reorder(self, *sequences: jax.Array):
        """Return `sequences` [B, T] in the zigzag layout of the sequence axis, then their original positions [T].

        Without sequence parallelism nothing moves and the positions are None.
        """
        if not self.uses_ring:
            return (*sequences, None)
        from attention_jax.distributed import sequence_positions, to_zigzag

        length = sequences[0].shape[1]
        positions = np.asarray(sequence_positions(length, self.sequence, LAYOUT)).reshape(-1)
        return (*(to_zigzag(x, self.sequence) for x in sequences), positions)

    def ring_options(self) -> dict:
        """Return the keyword arguments of `ring_attention` for this mesh."""
        return dict(mesh=self.mesh, axis_name=SEQUENCE_AXIS, layout=LAYOUT, batch_axis_name=DATA_AXIS)


def make_plan(
    data_parallel: int, sequence_parallel: int, *, batch_size: int, seq_len: int, mechanism: str, attention: str
) -> ParallelPlan | None:
    """Return the plan for `data_parallel` x `sequence_parallel` devices, or None for one device.

    Raises UserInputError when there are not enough devices or the batch,
    window or mechanism do not fit the split.
    """
    if data_parallel * sequence_parallel == 1:
        return None
    available = jax.device_count()
    if data_parallel * sequence_parallel > available:
        raise UserInputError(
            f"data_parallel={data_parallel} x sequence_parallel={sequence_parallel} needs "
            f"{data_parallel * sequence_parallel} devices, but JAX sees {available}; on a CPU, set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting"
        )
    if batch_size % data_parallel:
        raise UserInputError(f"batch_size={batch_size} must be divisible by data_parallel={data_parallel}")
    if sequence_parallel > 1:
        if seq_len % (2 * sequence_parallel):
            raise UserInputError(
                f"seq_len={seq_len} must be divisible by 2 x sequence_parallel = {2 * sequence_parallel}, "
                "because each device of the sequence axis holds two chunks of every window"
            )
        if attention != "attention_jax" or mechanism not in SEQUENCE_PARALLEL_MECHANISMS:
            raise UserInputError(
                f"sequence_parallel needs one of the mechanisms {', '.join(SEQUENCE_PARALLEL_MECHANISMS)} "
                f"with attention='attention_jax', but got mechanism={mechanism!r}, attention={attention!r}"
            )
    devices = np.asarray(jax.devices()[: data_parallel * sequence_parallel]).reshape(data_parallel, sequence_parallel)
    mesh = Mesh(devices, (DATA_AXIS, SEQUENCE_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))
    return ParallelPlan(mesh)
