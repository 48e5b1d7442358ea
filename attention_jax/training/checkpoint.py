"""Orbax checkpoints of a training run, with the model and tokenizer config as JSON beside them.

A checkpoint folder contains one subfolder per saved step (parameters,
optimizer state and loss history) plus `model_config.json` and
`tokenizer.json`, which are enough to rebuild the model without the
training options.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from attention_jax.training.errors import UserInputError
from attention_jax.training.loop import TrainState
from attention_jax.training.model import ModelConfig
from attention_jax.training.tokenizers import Tokenizer, tokenizer_from_dict

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"


def _write_json(path: str, values: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(values, file, indent=2)
        file.write("\n")


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


class Checkpoints:
    """Save and restore training states in `folder` with an orbax `CheckpointManager`.

    Only the latest `max_to_keep` steps are kept.
    """

    def __init__(self, folder: str, *, max_to_keep: int = 2):
        self.folder = os.path.abspath(folder)
        self.max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep,
            create=True,
            # Saving is synchronous because the train step donates the arrays being saved.
            enable_async_checkpointing=False,
        )
        return ocp.CheckpointManager(self.folder, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def check_compatible(self, model_config: ModelConfig, tokenizer: Tokenizer) -> None:
        """Raise UserInputError if the saved checkpoints belong to another model or tokenizer."""
        config_path = os.path.join(self.folder, MODEL_CONFIG_FILE)
        tokenizer_path = os.path.join(self.folder, TOKENIZER_FILE)
        if not os.path.exists(config_path) or not os.path.exists(tokenizer_path):
            raise UserInputError(
                f"checkpoints in {self.folder} have no {MODEL_CONFIG_FILE} or {TOKENIZER_FILE}; "
                "use another --output folder or pass --no-resume to start over"
            )
        saved_config = _read_json(config_path)
        if saved_config != model_config.to_dict():
            changed = sorted(
                key
                for key in set(saved_config) | set(model_config.to_dict())
                if saved_config.get(key) != model_config.to_dict().get(key)
            )
            details = ", ".join(
                f"{key} {saved_config.get(key)!r} -> {model_config.to_dict().get(key)!r}" for key in changed
            )
            raise UserInputError(
                f"checkpoints in {self.folder} are of a different model ({details}); "
                "use another --output folder or pass --no-resume to start over"
            )
        if _read_json(tokenizer_path) != tokenizer.to_dict():
            raise UserInputError(
                f"checkpoints in {self.folder} use a different tokenizer or vocabulary; "
                "use another --output folder or pass --no-resume to start over"
            )

    def write_configs(self, model_config: ModelConfig, tokenizer: Tokenizer) -> None:
        os.makedirs(self.folder, exist_ok=True)
        model_config.save(os.path.join(self.folder, MODEL_CONFIG_FILE))
        _write_json(os.path.join(self.folder, TOKENIZER_FILE), tokenizer.to_dict())

    def save(self, state: TrainState, history: dict[str, Any]) -> None:
        """Save the state under its step, replacing a saved checkpoint of the same step."""
        if state.step in self._manager.all_steps():
            self._manager.delete(state.step)
        self._manager.save(
            state.step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": state.params, "opt_state": state.opt_state}),
                history=ocp.args.JsonSave(history),
            ),
        )
        self._manager.wait_until_finished()
        logger.info("Saved checkpoint of step %d in %s", state.step, self.folder)

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Restore the state and history saved at `step`; `like` gives the tree structure, shapes and dtypes."""
        abstract = jax.tree.map(
            ocp.utils.to_shape_dtype_struct, {"params": like.params, "opt_state": like.opt_state}
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()),
        )
        logger.info("Restored checkpoint of step %d from %s", step, self.folder)
        state = TrainState(restored.state["params"], restored.state["opt_state"], step)
        return state, restored.history

    def delete_all(self) -> None:
        """Delete every saved step and the two config files; other files in the folder stay."""
        for step in self._manager.all_steps():
            self._manager.delete(step)
        for name in (MODEL_CONFIG_FILE, TOKENIZER_FILE):
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                os.remove(path)

    def close(self) -> None:
        self._manager.close()


def load_model_files(folder: str) -> tuple[ModelConfig, Tokenizer]:
    """Read the model config and tokenizer saved next to the checkpoints in `folder`."""
    config_path = os.path.join(folder, MODEL_CONFIG_FILE)
    tokenizer_path = os.path.join(folder, TOKENIZER_FILE)
    for path in (config_path, tokenizer_path):
        if not os.path.exists(path):
            raise UserInputError(f"{path} not found; pass the checkpoints folder of a training run")
    return ModelConfig.load(config_path), tokenizer_from_dict(_read_json(tokenizer_path))
