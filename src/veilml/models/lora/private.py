"""Private LoRA with transformers' own ``Trainer``: two more lines in an ordinary PEFT training script.

::

    model = get_peft_model(base, LoraConfig(...))                  # as usual (or leave LoRA to private_model)
    model = private_model(model, executor)                         # the frozen projections run on the workers
    trainer = Trainer(model=model, args=args, train_dataset=..., data_collator=...,
                      callbacks=[RemoteLayersCallback(executor)])  # checkpoints record the remote layers
    trainer.train()                                                # loss, AdamW, clipping, checkpoints, resume:
                                                                   # all the Trainer's own

:func:`private_model` adds LoRA adapters if the model has none, then replaces every frozen projection by a
:class:`~veilml.models.lora.remote_linear.RemoteLinear` on ``executor``: its weight leaves the model, the
adapters stay local and trainable. Nothing else changes, so a checkpoint the ``Trainer`` writes holds what a
PEFT checkpoint holds (adapters, optimizer, scheduler, RNG states, trainer state) and never a secret key:
those stay in the executor, which no checkpoint file references.

Resuming is bit-exact: the ``clear`` and the encrypted backends compute the same integers, and every
other state is the Trainer's. What veilml adds is :class:`RemoteLayersCallback`: each checkpoint gets
``veilml_remote.json``, the public description of the remote layers it was trained against (names,
shapes, bits, and a SHA-256 of the quantized weight's published aggregates), and a resumed run refuses a
worker serving other layers or other weights, which would silently continue another computation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from transformers import TrainerCallback

from veilml.errors import VeilmlError
from veilml.models.lora.remote import outsource_linear_layers, remote_layer_names
from veilml.models.lora.weights import DEFAULT_REMOTE_PATTERNS

__all__ = [
    "REMOTE_RECORD_FILE",
    "RemoteLayersCallback",
    "RemoteLayersMismatchError",
    "default_lora_config",
    "private_model",
    "check_remote_layers",
    "remote_layers_record",
    "with_adapters",
    "write_remote_layers_record",
]

#: The file :class:`RemoteLayersCallback` adds to each checkpoint folder.
REMOTE_RECORD_FILE = "veilml_remote.json"
_FORMAT = "veilml.remote_layers"


class RemoteLayersMismatchError(VeilmlError, ValueError):
    """A checkpoint was trained against other remote layers than the workers now serve."""


def default_lora_config(model: nn.Module, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0, **kwargs: Any):
    """A causal-LM ``LoraConfig`` on every linear layer except the LM head (``target_modules="all-linear"``).

    GPT-2-style ``Conv1D`` models get ``fan_in_fan_out=True``, as PEFT expects for them.
    """
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())
    options = {"target_modules": "all-linear", "fan_in_fan_out": fan_in_fan_out, **kwargs}
    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **options)


def with_adapters(model: nn.Module, lora_config: Any = None) -> nn.Module:
    """``model`` with LoRA adapters: a ``PeftModel`` as it is, else wrapped with ``lora_config`` (or the default)."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        if lora_config is not None:
            raise ValueError("the model already carries LoRA adapters; pass lora_config=None or the plain base model")
        return model
    return get_peft_model(model, lora_config if lora_config is not None else default_lora_config(model))


def private_model(
    model: nn.Module,
    executor: Any,
    patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS,
    *,
    lora_config: Any = None,
    max_rows: int | None = None,
) -> nn.Module:
    """``model`` ready for private LoRA training: adapters added (with ``lora_config``, or
    :func:`default_lora_config`) unless it is a ``PeftModel`` already, then its frozen projections matching
    ``patterns`` computed by ``executor``'s workers (see :func:`~veilml.models.lora.remote.outsource_linear_layers`).

    Returns the ``PeftModel``, changed in place: pass it to ``transformers.Trainer`` as any PEFT model. Its
    ``save_pretrained`` writes the adapters only (the base weights are on the workers). A worker serving other base
    weights than ``model``'s is refused first, before anything is sent to it
    (:class:`~veilml.linear.errors.BaseWeightsMismatchError`, naming both fingerprints).
    """
    peft_model = with_adapters(model, lora_config)
    outsource_linear_layers(peft_model, executor, patterns, max_rows=max_rows)
    return peft_model


def _fingerprint(info: Any) -> str:
    """SHA-256 of a layer's published aggregates of its quantized weight (and its bias)."""
    digest = hashlib.sha256()
    for array, dtype in ((info.weight_scale, np.float64), (info.col_sums, np.int64), (info.row_sums, np.int64)):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    if info.bias is not None:
        digest.update(np.ascontiguousarray(info.bias, dtype=np.float64).tobytes())
    return digest.hexdigest()


def remote_layers_record(model: nn.Module, executor: Any) -> dict[str, Any]:
    """The public description of ``model``'s remote layers as ``executor``'s workers serve them (JSON-ready).

    The backend is recorded but not compared on resume: ``clear`` and the encrypted backends give the
    same integers, so a run may continue on another one.
    """
    layers = {}
    for name in remote_layer_names(model):
        info = executor.layer(name)
        layers[name] = {
            "d_in": info.d_in,
            "d_out": info.d_out,
            "input_bits": info.input_bits,
            "weight_bits": info.weight_bits,
            "sha256": _fingerprint(info),
        }
    backend = executor.backend
    return {"format": _FORMAT, "version": 1, "backend": backend.name, "encrypts": bool(backend.encrypts), "layers": layers}


def write_remote_layers_record(folder: str | Path, model: nn.Module, executor: Any) -> Path:
    """Write :func:`remote_layers_record` into ``folder`` as :data:`REMOTE_RECORD_FILE`."""
    path = Path(folder) / REMOTE_RECORD_FILE
    path.write_text(json.dumps(remote_layers_record(model, executor), indent=1) + "\n")
    return path


def check_remote_layers(checkpoint: str | Path, model: nn.Module, executor: Any) -> None:
    """Raise :class:`RemoteLayersMismatchError` unless ``checkpoint``'s record (if it has one) names the
    layers ``executor`` serves for ``model``, with the same shapes, bits and weights."""
    path = Path(checkpoint) / REMOTE_RECORD_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    if recorded.get("format") != _FORMAT:
        raise RemoteLayersMismatchError(f"{path} is not a veilml remote-layers record")
    now = remote_layers_record(model, executor)["layers"]
    differ = sorted(name for name in set(recorded["layers"]) | set(now) if recorded["layers"].get(name) != now.get(name))
    if differ:
        raise RemoteLayersMismatchError(
            f"{Path(checkpoint).name} was trained against other remote layers than the workers serve now "
            f"({len(differ)} differ, e.g. {differ[0]!r}): resume against workers holding the same base weights "
            "with the same bits, or start a new run"
        )


class RemoteLayersCallback(TrainerCallback):
    """Writes :data:`REMOTE_RECORD_FILE` into each checkpoint; on resume, checks it against the workers.

    Give it to ``transformers.Trainer(callbacks=[...])`` with the executor of :func:`private_model`. It
    holds the executor only to read its public layer descriptions; nothing of it is saved but those.
    A resume is checked against ``output_dir/checkpoint-<step>`` (where the Trainer writes checkpoints)
    and ``args.resume_from_checkpoint`` when that is a path; a checkpoint from elsewhere can be checked
    with :func:`check_remote_layers` before ``trainer.train(resume_from_checkpoint=...)``.
    """

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def _checkpoint(self, args: Any, state: Any) -> Path:
        return Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def on_save(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        folder = self._checkpoint(args, state)
        if model is not None and folder.is_dir():
            write_remote_layers_record(folder, model, self.executor)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None or state.global_step == 0:
            return
        # resumed: from output_dir/checkpoint-<global_step> (the Trainer's own place), or args.resume_from_checkpoint
        folders = [self._checkpoint(args, state)]
        if isinstance(args.resume_from_checkpoint, str):
            folders.append(Path(args.resume_from_checkpoint))
        for folder in folders:
            check_remote_layers(folder, model, self.executor)
