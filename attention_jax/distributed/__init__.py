"""Attention across a device mesh: sharding rules and ring attention.

`shard_module` places an NNX attention module's parameters on a mesh
(batch over a data axis, heads over a model axis) so that `jax.jit` runs it
sharded. `ring_attention` shards the sequence itself over a mesh axis, and
`to_zigzag` reorders a sequence so that causal ring attention gives every
device the same work.

This sub-package is not imported by `import attention_jax`; import it as
`attention_jax.distributed`.
"""

from attention_jax.distributed.layout import LAYOUTS
from attention_jax.distributed.layout import from_zigzag
from attention_jax.distributed.layout import sequence_positions
from attention_jax.distributed.layout import to_zigzag
from attention_jax.distributed.ring import ring_attention
from attention_jax.distributed.sharding import DATA_AXIS
from attention_jax.distributed.sharding import MODEL_AXIS
from attention_jax.distributed.sharding import activation_spec
from attention_jax.distributed.sharding import parameter_spec
from attention_jax.distributed.sharding import parameter_specs
from attention_jax.distributed.sharding import shard_activations
from attention_jax.distributed.sharding import shard_module

__all__ = [
    "DATA_AXIS",
    "LAYOUTS",
    "MODEL_AXIS",
    "activation_spec",
    "from_zigzag",
    "parameter_spec",
    "parameter_specs",
    "ring_attention",
    "sequence_positions",
    "shard_activations",
    "shard_module",
    "to_zigzag",
]
