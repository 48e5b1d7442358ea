"""Load a trained `TransformerLM` from the checkpoints of a training run."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from attention_jax.training.checkpoint import load_model_files
from attention_jax.training.errors import UserInputError
from attention_jax.training.model import TransformerLM
from attention_jax.training.tokenizers import Tokenizer

logger = logging.getLogger(__name__)


def _unwrap(tree: Any) -> Any:
    """Turn a restored state tree (`{"value": array}` leaves) into a pure dict."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return np.asarray(tree["value"])
        return {_key(name): _unwrap(child) for name, child in tree.items()}
    return tree


def _key(name: str):
    return int(name) if isinstance(name, str) and name.isdigit() else name


def _on_one_device(metadata: Any) -> Any:
    """Return restore targets on this process's first device for saved array metadata."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), metadata)


def checkpoints_folder(path: str) -> str:
    """Return the checkpoints folder for a run folder or a checkpoints folder."""
    if not os.path.isdir(path):
        raise UserInputError(f"checkpoint folder {path} not found")
    nested = os.path.join(path, "checkpoints")
    return nested if os.path.isdir(nested) else path


def load_trained_model(path: str) -> tuple[TransformerLM, Tokenizer, int]:
    """Return `(model, tokenizer, step)` from the latest checkpoint under `path`.

    Args:
      path: the `--output` folder of `attention-jax train`, or its
        `checkpoints` subfolder.

    Raises:
      UserInputError: when the folder, its config files or a saved step are
        missing, or the saved parameters do not fit the saved config.
    """
    folder = checkpoints_folder(path)
    model_config, tokenizer = load_model_files(folder)
    manager = ocp.CheckpointManager(
        os.path.abspath(folder), item_handlers={"state": ocp.StandardCheckpointHandler()})
    step = manager.latest_step()
    if step is None:
        raise UserInputError(f"no saved step found in {folder}; train first")
    # Without a target, orbax restores each array onto the devices it was
    # saved from, so it rejects a multi-device run's checkpoint on one device.
    target = _on_one_device(manager.item_metadata(step)["state"])
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    manager.close()

    model = TransformerLM(model_config, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    try:
        nnx.replace_by_pure_dict(state, _unwrap(restored.state["params"]))
    except (KeyError, ValueError, TypeError) as error:
        raise UserInputError(
            f"the parameters saved in {folder} do not fit its model config: {error}") from error
    nnx.update(model, state)
    logger.info("Loaded step %d of a %s-layer model from %s", step, model_config.num_layers, folder)
    return model, tokenizer, step
