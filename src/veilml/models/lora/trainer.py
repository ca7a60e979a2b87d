"""LoRA fine-tuning whose frozen linear layers run on remote workers (or locally, for comparison).

:class:`LoraTrainer` follows the transformers/PEFT habits: the model is a ``PeftModel``, adapters are
saved with ``save_pretrained`` (so ``PeftModel.from_pretrained`` reads them), checkpoints live in
``output_dir/checkpoint-STEP`` with ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and
``trainer_state.json``, and ``train(resume_from_checkpoint=True)`` picks up the latest one. How it
trains (steps, learning rate, logging, checkpoints...) is one frozen :class:`~.options.LoraTrainingOptions`.

Resuming is exact: the data order is a function of (seed, step) alone, and the adapters, the
optimizer and scheduler state and the RNG states are restored bit for bit, so k steps, a crash, and
a resume end on the same adapter weights as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veilml.models.lora.options import InvalidLoraOptionError, LoraTrainingOptions
from veilml.models.lora.remote import outsource_linear_layers, remote_layer_names
from veilml.models.lora.weights import DEFAULT_REMOTE_PATTERNS

__all__ = ["LoraTrainer", "TrainOutput", "TrainerState", "default_lora_config"]

Batch = Mapping[str, torch.Tensor]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_STATE_FILE = "trainer_state.json"


def default_lora_config(model: nn.Module, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0, **kwargs: Any):
    """A causal-LM ``LoraConfig`` on every linear layer except the LM head (``target_modules="all-linear"``).

    GPT-2-style ``Conv1D`` models get ``fan_in_fan_out=True``, as PEFT expects for them.
    """
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())
    options = {"target_modules": "all-linear", "fan_in_fan_out": fan_in_fan_out, **kwargs}
    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **options)


@dataclass
class TrainerState:
    """What a checkpoint records besides tensors (``trainer_state.json``)."""

    global_step: int = 0
    max_steps: int = 0
    n_train_batches: int = 0
    log_history: list[dict[str, float]] = field(default_factory=list)
    unlogged_losses: list[float] = field(default_factory=list)  # step losses since the last log entry


@dataclass(frozen=True)
class TrainOutput:
    global_step: int
    training_loss: float  # mean training loss over the steps this call ran
    metrics: dict[str, float]


class LoraTrainer:
    """Fine-tune the LoRA adapters of a causal LM; the frozen projections optionally run remotely.

    What the trainer works with is given by keyword; how it trains is one :class:`LoraTrainingOptions`,
    or its fields as keywords (``LoraTrainer(model, max_steps=200)`` is
    ``LoraTrainer(model, options=LoraTrainingOptions(max_steps=200))``; both together apply the keywords
    to ``options`` with :meth:`LoraTrainingOptions.replace`, which checks them).

    Args:
        model: a transformers causal LM (LoRA is added with ``lora_config``) or a ``PeftModel``.
        options: how to train, log, evaluate and checkpoint; default ``LoraTrainingOptions()``.
        lora_config: a ``peft.LoraConfig``; default :func:`default_lora_config`. Not allowed with a
            ``PeftModel``.
        executor: an ``EncryptedLinearExecutor``; the layers matching ``remote_patterns`` are then
            replaced by remote ones (after LoRA is added). ``None`` trains in plain float.
        optimizer_factory: ``params -> torch.optim.Optimizer``; default AdamW(learning_rate, weight_decay).
        **option_changes: fields of :class:`LoraTrainingOptions` (``max_steps``, ``learning_rate``...).

    Attributes:
        options: the options in force. ``model``, ``optimizer``, ``scheduler``: the PEFT model and what
        trains it. ``state``: the :class:`TrainerState` a checkpoint records. ``remote_layers``: the
        names of the layers computed by the workers.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        options: LoraTrainingOptions | None = None,
        lora_config: Any = None,
        executor: Any = None,
        remote_patterns: Sequence[str] = DEFAULT_REMOTE_PATTERNS,
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        **option_changes: Any,
    ) -> None:
        from transformers import get_scheduler

        if options is not None and not isinstance(options, LoraTrainingOptions):
            raise InvalidLoraOptionError(f"options must be a LoraTrainingOptions, got {type(options).__name__}")
        self.options = (options or LoraTrainingOptions()).replace(**option_changes)
        torch.manual_seed(self.options.seed)  # as transformers' set_seed: reproducible LoRA init and dropout
        random.seed(self.options.seed)
        self.model = _with_adapters(model, lora_config)
        self.executor = executor
        if executor is not None:
            outsource_linear_layers(self.model, executor, remote_patterns)
        self.remote_layers = remote_layer_names(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameter; check the LoRA target modules")
        self.optimizer = (
            optimizer_factory(self.trainable)
            if optimizer_factory is not None
            else torch.optim.AdamW(self.trainable, lr=self.options.learning_rate, weight_decay=self.options.weight_decay)
        )
        self.scheduler = get_scheduler(
            self.options.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=self.options.warmup_steps,
            num_training_steps=self.options.max_steps,
        )
        self.state = TrainerState(max_steps=self.options.max_steps)

    # ---- data ---------------------------------------------------------------------------------

    def _micro_batch(self, train_data: Sequence[Batch], index: int) -> Batch:
        """The ``index``-th micro-batch of the whole run: a pure function of (seed, index)."""
        epoch, position = divmod(index, len(train_data))
        if self.options.shuffle:
            position = int(np.random.default_rng([self.options.seed, epoch]).permutation(len(train_data))[position])
        return train_data[position]

    def _loss(self, batch: Batch) -> torch.Tensor:
        device = self.trainable[0].device
        inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        inputs.setdefault("labels", inputs["input_ids"])
        return self.model(**inputs, use_cache=False).loss

    # ---- training -----------------------------------------------------------------------------

    def train(
        self,
        train_data: Sequence[Batch],
        eval_data: Iterable[Batch] | None = None,
        *,
        resume_from_checkpoint: bool | str | Path | None = None,
    ) -> TrainOutput:
        """Run optimizer steps until ``max_steps``; ``resume_from_checkpoint=True`` resumes from the
        latest checkpoint in ``output_dir`` (a path resumes from that checkpoint)."""
        from tqdm import tqdm

        if len(train_data) == 0:
            raise ValueError("train_data holds no batch")
        if resume_from_checkpoint:
            path = self.last_checkpoint() if resume_from_checkpoint is True else Path(resume_from_checkpoint)
            if path is None:
                raise FileNotFoundError(f"no checkpoint-* folder in {self.options.output_dir} to resume from")
            self.load_checkpoint(path)
        if self.state.n_train_batches not in (0, len(train_data)):
            raise ValueError(
                f"the checkpoint was trained on {self.state.n_train_batches} batches per epoch, got {len(train_data)}; "
                "resume with the same training data"
            )
        self.state.n_train_batches = len(train_data)
        self.model.train()
        start_step, losses, started = self.state.global_step, [], time.perf_counter()
        max_steps = self.options.max_steps
        bar = tqdm(total=max_steps, initial=start_step, disable=not self.options.progress, desc="LoRA fine-tuning", unit="step")
        try:
            while self.state.global_step < max_steps:
                loss = self._step(train_data)
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                self._after_step(loss, eval_data)
        finally:
            bar.close()
        runtime = time.perf_counter() - started
        steps = self.state.global_step - start_step
        metrics = {"train_runtime": runtime, "train_steps_per_second": steps / runtime if runtime > 0 else 0.0}
        return TrainOutput(self.state.global_step, float(np.mean(losses)) if losses else float("nan"), metrics)

    def _due(self, every: int | None) -> bool:
        """Whether the step just done is a multiple of ``every`` (None: never) or the last one."""
        step = self.state.global_step
        return step == self.options.max_steps or (every is not None and step % every == 0)

    def _after_step(self, loss: float, eval_data: Iterable[Batch] | None) -> None:
        """Log, evaluate and checkpoint as the options say, once the step that ended with ``loss`` is done."""
        options, state = self.options, self.state
        state.unlogged_losses.append(loss)
        if self._due(options.logging_steps):
            mean_loss = float(np.mean(state.unlogged_losses))
            state.log_history.append(
                {"step": state.global_step, "loss": mean_loss, "learning_rate": self.scheduler.get_last_lr()[0]}
            )
            state.unlogged_losses = []
        if eval_data is not None and self._due(options.eval_steps):
            state.log_history.append({"step": state.global_step, **self.evaluate(eval_data)})
        if options.output_dir is not None and self._due(options.save_steps):
            self.save_checkpoint()

    def _step(self, train_data: Sequence[Batch]) -> float:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the mean loss."""
        accumulation = self.options.gradient_accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(accumulation):
            loss = self._loss(self._micro_batch(train_data, self.state.global_step * accumulation + j)) / accumulation
            loss.backward()
            total += loss.item()
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss is {total} at step {self.state.global_step + 1}; lower the learning rate")
        if self.options.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.trainable, self.options.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.state.global_step += 1
        return total

    @torch.no_grad()
    def evaluate(self, eval_data: Iterable[Batch]) -> dict[str, float]:
        """Token-weighted mean causal-LM loss over ``eval_data`` and its perplexity (no dropout)."""
        was_training = self.model.training
        self.model.eval()
        total, tokens = 0.0, 0
        try:
            for batch in eval_data:
                labels = batch.get("labels", batch["input_ids"])
                count = int((labels[..., 1:] != -100).sum())
                total += self._loss(batch).item() * count
                tokens += count
        finally:
            self.model.train(was_training)
        if tokens == 0:
            raise ValueError("eval_data holds no token to predict")
        loss = total / tokens
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    # ---- adapters -----------------------------------------------------------------------------

    def save_adapters(self, directory: str | Path) -> Path:
        """The adapters in PEFT's format; read them back with ``PeftModel.from_pretrained(base, directory)``."""
        directory = Path(directory)
        self.model.save_pretrained(str(directory))
        return directory

    def load_adapters(self, directory: str | Path) -> None:
        """Overwrite the adapters with those saved in ``directory`` (by :meth:`save_adapters` or PEFT)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no adapter_model.safetensors in {directory}; save adapters with save_adapters first")
        result = set_peft_model_state_dict(self.model, load_file(str(path)))
        missing = [key for key in result.missing_keys if "lora_" in key]
        if missing:
            raise ValueError(f"{path} lacks adapter weights for {missing[:3]}...; it was saved from another LoRA configuration")

    # ---- checkpoints --------------------------------------------------------------------------

    def _checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every ``checkpoint-STEP`` folder in ``output_dir``, oldest first."""
        directory = self.options.output_dir
        if directory is None or not directory.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name)))

    def last_checkpoint(self) -> Path | None:
        """The ``checkpoint-STEP`` folder with the highest step in ``output_dir``, if any."""
        found = self._checkpoints()
        return found[-1][1] if found else None

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Adapters, optimizer, scheduler, RNG states and trainer state; written whole or not at all."""
        if directory is None:
            if self.options.output_dir is None:
                raise ValueError("save_checkpoint needs a directory or the trainer's output_dir")
            directory = self.options.output_dir / f"checkpoint-{self.state.global_step}"
        final = Path(directory)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.save_adapters(partial)
        torch.save(self.optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), partial / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, partial / "rng_state.pth")
        (partial / _STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)  # a crash before this line leaves the previous checkpoints intact
        self._rotate_checkpoints()
        return final

    def _rotate_checkpoints(self) -> None:
        """Delete the oldest checkpoints beyond ``save_total_limit``."""
        limit = self.options.save_total_limit
        if limit is None:
            return
        found = self._checkpoints()
        for _, path in found[: max(0, len(found) - limit)]:
            shutil.rmtree(path)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote, so that training continues exactly."""
        directory = Path(directory)
        state_file = directory / _STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} is not a checkpoint (no {_STATE_FILE})")
        state = TrainerState(**json.loads(state_file.read_text()))
        if state.max_steps != self.options.max_steps:
            raise ValueError(
                f"the checkpoint belongs to a run of max_steps={state.max_steps}, this trainer has {self.options.max_steps}; "
                "the learning-rate schedule would differ"
            )
        self.load_adapters(directory)
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        rng = torch.load(directory / "rng_state.pth", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_tuples(rng["python"]))
        self.state = state


def _with_adapters(model: nn.Module, lora_config: Any) -> nn.Module:
    """``model`` with LoRA adapters: a ``PeftModel`` as it is, else wrapped with ``lora_config`` (or the default)."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        if lora_config is not None:
            raise ValueError("the model already carries LoRA adapters; pass lora_config=None or the plain base model")
        return model
    return get_peft_model(model, lora_config if lora_config is not None else default_lora_config(model))


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples all the way down."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
