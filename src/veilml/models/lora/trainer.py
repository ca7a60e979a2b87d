"""LoRA fine-tuning in a few lines: :class:`LoraTrainer`, a thin convenience over transformers' ``Trainer``.

``LoraTrainer(model, executor=..., max_steps=...)`` adds the adapters, sends the frozen projections to the
workers (:func:`~veilml.models.lora.private.private_model`) and trains with a stock ``transformers.Trainer``
(:attr:`LoraTrainer.trainer`) on ready batches: its AdamW, scheduler, gradient clipping, logging and
checkpoints (``output_dir/checkpoint-STEP`` with the adapters in PEFT's format, ``optimizer.pt``,
``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``) and ``resume_from_checkpoint``. How it trains is
one frozen :class:`~.options.LoraTrainingOptions` with ``TrainingArguments``' names.

A run with an ``output_dir`` resumes by itself: ``train`` continues from the latest checkpoint there (and says so
in the log), so a script run again picks up where it stopped and never overwrites the checkpoints of an earlier
run; ``train(resume_from_checkpoint=False)`` insists on a fresh start and refuses a folder that holds checkpoints.

It gives the same numbers as the hand-written loop it replaces, bit for bit: micro-batch ``i`` of a run is
a pure function of ``(seed, i)``, each micro-batch's mean loss is divided by the accumulation steps, and the
optimizer is torch's (non-fused) AdamW; see :mod:`.trainer_parts`. Resuming is exact: k steps, a crash and
a resume end on the same adapters, optimizer state and log history as one uninterrupted run.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerState
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import TrainOutput

from veilml.models.lora.options import InvalidLoraOptionError, LoraTrainingOptions
from veilml.models.lora.private import (
    RemoteLayersCallback,
    check_remote_layers,
    default_lora_config,
    private_model,
    with_adapters,
    write_remote_layers_record,
)
from veilml.models.lora.remote import remote_layer_names
from veilml.models.lora.trainer_parts import (
    LoraHFTrainer,
    LoraSchedule,
    LoraStateCallback,
    MicroBatches,
    eval_loss,
    first_item,
    read_lora_state,
    training_arguments,
    write_lora_state,
)
from veilml.models.lora.weights import DEFAULT_REMOTE_PATTERNS

__all__ = ["LoraTrainer", "TrainOutput", "TrainerState", "default_lora_config"]

Batch = Mapping[str, torch.Tensor]

logger = logging.getLogger("veilml.lora")

#: learning-rate schedules that do not depend on ``max_steps``: a run of them may continue to more steps
_SCHEDULES_WITHOUT_END = frozenset({"constant", "constant_with_warmup", "inverse_sqrt"})


def _rng_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_rng_states(states: tuple[Any, Any, Any]) -> None:
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


def _checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-STEP`` folder, -1 for another name."""
    step = path.name.removeprefix("checkpoint-")
    return int(step) if path.name.startswith("checkpoint-") and step.isdigit() else -1


class LoraTrainer:
    """Fine-tune the LoRA adapters of a causal LM with ``transformers.Trainer``; the frozen projections
    optionally run remotely.

    What the trainer works with is given by keyword; how it trains is one :class:`LoraTrainingOptions`, or
    its fields as keywords (``LoraTrainer(model, max_steps=200)`` is
    ``LoraTrainer(model, options=LoraTrainingOptions(max_steps=200))``; both together apply the keywords to
    ``options`` with :meth:`LoraTrainingOptions.replace`, which checks them).

    Args:
        model: a transformers causal LM (LoRA is added with ``lora_config``) or a ``PeftModel``.
        options: how to train, log, evaluate and checkpoint; default ``LoraTrainingOptions()``.
        lora_config: a ``peft.LoraConfig``; default :func:`default_lora_config`. Not allowed with a ``PeftModel``.
        executor: an ``EncryptedLinearExecutor``; the layers matching ``remote_patterns`` are then replaced by
            remote ones (after LoRA is added). ``None`` trains in plain float.
        optimizer_factory: ``params -> torch.optim.Optimizer``; default the Trainer's AdamW(learning_rate,
            weight_decay).
        **option_changes: fields of :class:`LoraTrainingOptions` (``max_steps``, ``learning_rate``...).

    Attributes:
        options: the options in force. ``model``: the PEFT model. ``trainer``: the ``transformers.Trainer``
        that trains it; ``optimizer``, ``scheduler`` and ``state`` (its ``TrainerState``, with
        ``log_history``) are the Trainer's. ``remote_layers``: the names of the layers computed by the workers.
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
        if options is not None and not isinstance(options, LoraTrainingOptions):
            raise InvalidLoraOptionError(f"options must be a LoraTrainingOptions, got {type(options).__name__}")
        self.options = (options or LoraTrainingOptions()).replace(**option_changes)
        torch.manual_seed(self.options.seed)  # as transformers' set_seed: reproducible LoRA init and dropout
        random.seed(self.options.seed)
        if executor is not None:
            self.model = private_model(model, executor, remote_patterns, lora_config=lora_config)
        else:
            self.model = with_adapters(model, lora_config)
        self.executor = executor
        self.remote_layers = remote_layer_names(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameter; check the LoRA target modules")
        optimizer = optimizer_factory(self.trainable) if optimizer_factory is not None else None
        self.trainer = self._hf_trainer(optimizer)

    def _hf_trainer(self, optimizer: torch.optim.Optimizer | None) -> LoraHFTrainer:
        """The Trainer, its optimizer and scheduler made now (so they can be inspected before training)."""
        states = _rng_states()  # the Trainer seeds again; dropout keeps drawing from after the LoRA init
        self._schedule = LoraSchedule(self.options)
        callbacks = [self._schedule] + ([RemoteLayersCallback(self.executor)] if self.executor is not None else [])
        trainer = LoraHFTrainer(
            model=self.model,
            args=training_arguments(self.options, scratch=self._scratch_dir()),
            data_collator=first_item,
            optimizers=(optimizer, None),
            callbacks=callbacks,
        )
        _set_rng_states(states)
        trainer.remove_callback(PrinterCallback)  # without a progress bar the Trainer prints every log entry
        self._lora_state = LoraStateCallback(trainer)
        trainer.add_callback(self._lora_state)
        trainer.create_optimizer_and_scheduler(num_training_steps=self.options.max_steps)
        trainer.state.max_steps = self.options.max_steps
        return trainer

    def _scratch_dir(self) -> Path | None:
        """A temporary directory for the Trainer when no ``output_dir`` is given (removed with this trainer)."""
        if self.options.output_dir is not None:
            return None
        if getattr(self, "_scratch", None) is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="veilml-lora-")
        return Path(self._scratch.name)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    @property
    def scheduler(self) -> Any:
        return self.trainer.lr_scheduler

    @property
    def state(self) -> TrainerState:
        return self.trainer.state

    # ---- training -----------------------------------------------------------------------------

    def train(
        self,
        train_data: Sequence[Batch],
        eval_data: Iterable[Batch] | None = None,
        *,
        resume_from_checkpoint: bool | str | Path | None = None,
    ) -> TrainOutput:
        """Run optimizer steps until ``max_steps``, from where the run is.

        Where that is, by ``resume_from_checkpoint``:

        - ``None`` (the default): after earlier steps of this trainer, from them; else from the latest
          ``checkpoint-STEP`` in ``output_dir`` when there is one (logged), so that running a script again
          continues its run (with a larger ``max_steps``: trains the steps added); else from step 0;
        - ``True``: from the latest checkpoint in ``output_dir`` (FileNotFoundError without one);
        - a path: from that checkpoint;
        - ``False``: from step 0. Refused when ``output_dir`` holds checkpoints, which the new run would overwrite
          or mix with its own: to start over, give a new ``output_dir`` (or remove its checkpoints).

        Returns the Trainer's ``TrainOutput``; its ``training_loss`` is the mean loss of the steps this call ran.
        """
        if len(train_data) == 0:
            raise ValueError("train_data holds no batch")
        with tempfile.TemporaryDirectory(prefix="veilml-lora-") as scratch:
            checkpoint = self._start_point(resume_from_checkpoint, Path(scratch))
            hf = self.trainer
            hf.unlogged_losses, hf.step_losses = [], []
            if checkpoint is not None:
                saved = read_lora_state(checkpoint)
                if saved["n_train_batches"] not in (0, len(train_data)):
                    raise ValueError(
                        f"the checkpoint was trained on {saved['n_train_batches']} batches per epoch, got {len(train_data)}; "
                        "resume with the same training data (or start over in a new output_dir)"
                    )
                hf.unlogged_losses = [float(v) for v in saved["unlogged_losses"]]
            accumulation = self.options.gradient_accumulation_steps
            hf.args.max_steps = self.options.max_steps  # a continued run may have been given more steps
            hf.train_dataset = MicroBatches(
                train_data, self.options.max_steps * accumulation, seed=self.options.seed, shuffle=self.options.shuffle
            )
            hf.lora_eval_data = None if eval_data is None else list(eval_data)
            self._schedule.has_eval = eval_data is not None
            self._lora_state.n_train_batches = len(train_data)
            hf.rng_before_start = torch.get_rng_state() if checkpoint is None else None
            output = hf.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        losses = hf.step_losses
        return TrainOutput(output.global_step, float(np.mean(losses)) if losses else float("nan"), output.metrics)

    def _start_point(self, resume: bool | str | Path | None, scratch: Path) -> Path | None:
        """The checkpoint to start from (see :meth:`train`), checked; after earlier steps of this trainer, a
        snapshot of them in ``scratch`` (the Trainer continues only from a checkpoint); None: step 0."""
        if resume is False:
            if self.state.global_step > 0:
                raise ValueError(
                    f"this trainer has run {self.state.global_step} steps already; make a new LoraTrainer to start over"
                )
            found = self.last_checkpoint()
            if found is not None:
                raise FileExistsError(
                    f"{self.options.output_dir} holds checkpoints of an earlier run (the latest {found.name}), which a new "
                    "run would overwrite: give a new output_dir (or remove them) to start over, or leave "
                    "resume_from_checkpoint unset to continue that run"
                )
            return None
        if resume is None and self.state.global_step > 0:
            return self.save_checkpoint(scratch / f"checkpoint-{self.state.global_step}")
        path = Path(resume) if isinstance(resume, (str, Path)) else self.last_checkpoint()
        if path is None:
            if resume is True:
                raise FileNotFoundError(f"no checkpoint-* folder in {self.options.output_dir} to resume from")
            return None
        self._check_checkpoint(path)
        if resume is None:
            logger.warning(
                "resuming from %s (step %d of %d), the latest checkpoint in output_dir; to start over, give a new output_dir",
                path,
                _checkpoint_step(path),
                self.options.max_steps,
            )
        return path

    def _check_checkpoint(self, path: Path) -> None:
        """Refuse a checkpoint this trainer cannot continue: none, past ``max_steps``, another schedule, other workers."""
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint (no trainer_state.json)")
        saved = TrainerState.load_from_json(str(path / "trainer_state.json"))
        if saved.global_step > self.options.max_steps:
            raise ValueError(
                f"{path} is at step {saved.global_step}, past this trainer's max_steps={self.options.max_steps}: raise "
                "max_steps to continue that run, or give a new output_dir to start over"
            )
        schedule = self.options.lr_scheduler_type
        if saved.max_steps != self.options.max_steps and schedule not in _SCHEDULES_WITHOUT_END:
            raise ValueError(
                f"the checkpoint belongs to a run of max_steps={saved.max_steps}, this trainer has "
                f"{self.options.max_steps}; the {schedule!r} learning-rate schedule would differ (only "
                f"{sorted(_SCHEDULES_WITHOUT_END)} continue to more steps)"
            )
        if self.executor is not None:
            check_remote_layers(path, self.model, self.executor)

    def evaluate(self, eval_data: Iterable[Batch]) -> dict[str, float]:
        """Token-weighted mean causal-LM loss over ``eval_data`` (labels -100 skipped) and its perplexity."""
        return eval_loss(self.model, eval_data)

    # ---- adapters and checkpoints -------------------------------------------------------------

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

    def last_checkpoint(self) -> Path | None:
        """The ``checkpoint-STEP`` folder with the highest step in ``output_dir``, if any."""
        directory = self.options.output_dir
        if directory is None or not directory.is_dir():
            return None
        found = [(_checkpoint_step(p), p) for p in directory.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0]
        return max(found)[1] if found else None

    def save_checkpoint(self, directory: str | Path) -> Path:
        """A checkpoint of where the trainer is, as the Trainer writes one (``train(resume_from_checkpoint=...)``
        continues from it): adapters, optimizer, scheduler, RNG states, trainer state, veilml's records."""
        directory = Path(directory)
        hf = self.trainer
        hf.save_model(str(directory))
        hf._save_optimizer_and_scheduler(str(directory))  # the Trainer's own writers: its own format
        hf._save_rng_state(str(directory))
        hf.state.save_to_json(str(directory / "trainer_state.json"))
        write_lora_state(directory, self._lora_state.n_train_batches, hf.unlogged_losses)
        if self.executor is not None:
            write_remote_layers_record(directory, self.model, self.executor)
        return directory
