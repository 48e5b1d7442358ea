"""Tools to inspect, regularize and prune attention: diagnostics, rollout,
head importance, pruning, training monitors, penalties and plots.

Plots need matplotlib (the `plot` extra) and are imported from
`attention_jax.analysis.plots` on demand.
"""

from attention_jax.analysis.diagnostics import attention_entropy
from attention_jax.analysis.diagnostics import attention_sparsity
from attention_jax.analysis.diagnostics import classify_heads
from attention_jax.analysis.diagnostics import head_diagnostics
from attention_jax.analysis.diagnostics import max_attention_weight
from attention_jax.analysis.diagnostics import mean_attention_distance
from attention_jax.analysis.diagnostics import normalized_attention_entropy
from attention_jax.analysis.importance import head_importance
from attention_jax.analysis.importance import prune_mask
from attention_jax.analysis.monitors import EntropyCollapseMonitor
from attention_jax.analysis.monitors import attention_gradient_norms
from attention_jax.analysis.monitors import detect_entropy_collapse
from attention_jax.analysis.monitors import flag_gradients
from attention_jax.analysis.pruning import gated_attention
from attention_jax.analysis.pruning import prune_heads
from attention_jax.analysis.regularizers import entropy_penalty
from attention_jax.analysis.regularizers import l1_attention_penalty
from attention_jax.analysis.regularizers import l2_attention_penalty
from attention_jax.analysis.regularizers import logit_z_loss
from attention_jax.analysis.rollout import attention_rollout
