"""transformers' ``Trainer`` set up as :class:`~veilml.models.lora.trainer.LoraTrainer` runs it.

``LoraTrainer`` keeps its former results bit for bit on top of the stock ``Trainer``; this module holds the
few pieces that make it so, each for one reason:

- :class:`MicroBatches`: the run's micro-batches in order, micro-batch ``i`` a pure function of
  ``(seed, i)`` (a seeded permutation of the batches per epoch), read by a sequential sampler one
  ready batch at a time, so the Trainer resumes at the right micro-batch by skipping indices;
- :class:`LoraHFTrainer`: the loss of a micro-batch is the model's mean divided by the accumulation
  steps (not the Trainer's token count over the accumulated batch); step losses are kept exactly
  (Python floats, logged as their float64 mean) and a non-finite one stops the run; ``evaluate`` is
  the token-weighted causal-LM loss of a list of batches;
- :class:`LoraSchedule`: logs, evaluates and checkpoints at multiples of the steps *and* at the last step;
- :class:`LoraStateCallback`: adds ``veilml_lora.json`` to each checkpoint (the batches per epoch, and the
  step losses not logged yet), which a resume checks and restores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from veilml.models.lora.options import LoraTrainingOptions

__all__ = [
    "LORA_STATE_FILE",
    "LoraHFTrainer",
    "LoraSchedule",
    "LoraStateCallback",
    "MicroBatches",
    "eval_loss",
    "first_item",
    "training_arguments",
]

Batch = Mapping[str, torch.Tensor]
#: What :class:`LoraStateCallback` adds to a checkpoint.
LORA_STATE_FILE = "veilml_lora.json"


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` of a run over ``batches``: epoch ``i // len(batches)``, shuffled per epoch with
    ``numpy.random.default_rng([seed, epoch])`` when ``shuffle``; ``labels`` default to the inputs."""

    def __init__(self, batches: Sequence[Batch], total: int, *, seed: int, shuffle: bool) -> None:
        self.batches, self.total, self.seed, self.shuffle = batches, total, seed, shuffle

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(index, len(self.batches))
        if self.shuffle:
            position = int(np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))[position])
        batch = dict(self.batches[position])
        batch.setdefault("labels", batch["input_ids"])
        batch["use_cache"] = False  # training needs no key/value cache
        return batch


def first_item(features: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The collator of :class:`MicroBatches`: each item is a whole batch, read one at a time."""
    return features[0]


def training_arguments(options: LoraTrainingOptions, scratch: Path | None = None) -> TrainingArguments:
    """The ``TrainingArguments`` of ``options`` (same names), with AdamW in its plain torch form. ``scratch``: the
    Trainer's directory when nothing is saved (without one, transformers makes ``./trainer_output`` in the user's
    working directory)."""
    saving = options.output_dir is not None
    return TrainingArguments(
        output_dir=str(options.output_dir) if saving else (None if scratch is None else str(scratch)),
        per_device_train_batch_size=1,  # one MicroBatches item = one ready batch
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm or 0.0,  # the Trainer's "no clipping" is 0
        max_steps=options.max_steps,
        lr_scheduler_type=options.lr_scheduler_type,
        warmup_steps=options.warmup_steps,
        logging_strategy="steps",
        logging_steps=options.logging_steps,
        save_strategy="steps" if saving else "no",
        save_steps=options.save_steps or options.max_steps,
        save_total_limit=options.save_total_limit,
        seed=options.seed,
        optim="adamw_torch",  # torch >= 2.8 makes the Trainer default to the fused kernel, whose bits differ
        train_sampling_strategy="sequential",  # MicroBatches is already in the run's order
        remove_unused_columns=False,
        dataloader_pin_memory=False,  # ready CPU batches; pinning only warns without an accelerator
        report_to="none",
        disable_tqdm=not options.progress,
    )


@torch.no_grad()
def eval_loss(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """Token-weighted mean causal-LM loss over ``batches`` (labels -100 skipped) and its perplexity, in eval mode."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))
    total, tokens = 0.0, 0
    try:
        for batch in batches:
            inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
            inputs.setdefault("labels", inputs["input_ids"])
            count = int((inputs["labels"][..., 1:] != -100).sum())
            total += model(**inputs, use_cache=False).loss.item() * count
            tokens += count
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("eval_data holds no token to predict")
    loss = total / tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}


class LoraHFTrainer(Trainer):
    """The stock ``Trainer`` with ``LoraTrainer``'s loss bookkeeping and evaluation (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # each micro-batch's mean loss / accumulation steps
        self.lora_eval_data: list[Batch] | None = None
        self.step_losses: list[float] = []  # the steps of this train() call
        self.unlogged_losses: list[float] = []  # since the last log entry (restored on resume)
        self._micro_losses: list[float] = []
        #: torch's RNG state to set before the first step: a DataLoader draws a seed from it when an epoch
        #: starts, which would shift every dropout mask of a fresh run (a resumed one loads its checkpoint's)
        self.rng_before_start: torch.Tensor | None = None

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.rng_before_start is not None:
            torch.set_rng_state(self.rng_before_start)
            self.rng_before_start = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._micro_losses.append(loss.item())
        if len(self._micro_losses) == self.args.gradient_accumulation_steps:
            total = 0.0
            for value in self._micro_losses:
                total += value
            self._micro_losses = []
            if not math.isfinite(total):
                raise FloatingPointError(f"the loss is {total} at step {self.state.global_step + 1}; lower the learning rate")
            self.step_losses.append(total)
            self.unlogged_losses.append(total)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.unlogged_losses:  # the exact mean, not the Trainer's float32 running sum
            logs = {**logs, "loss": float(np.mean(self.unlogged_losses))}
            self.unlogged_losses = []
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        data = eval_dataset if eval_dataset is not None else self.lora_eval_data
        if data is None:
            raise ValueError("no evaluation data: pass eval_data to LoraTrainer.train")
        metrics = eval_loss(self.model, data)
        if metric_key_prefix != "eval":
            metrics = {key.replace("eval", metric_key_prefix, 1): value for key, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class LoraSchedule(TrainerCallback):
    """Log every ``logging_steps``, evaluate every ``eval_steps`` (with eval data), save every ``save_steps``
    (with an ``output_dir``; None: at the end only), each also after the last step."""

    def __init__(self, options: LoraTrainingOptions) -> None:
        self.options = options
        self.has_eval = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        def due(every: int | None) -> bool:
            return state.global_step >= state.max_steps or (every is not None and state.global_step % every == 0)

        control.should_log = due(self.options.logging_steps)
        control.should_evaluate = self.has_eval and due(self.options.eval_steps)
        control.should_save = self.options.output_dir is not None and due(self.options.save_steps)
        return control


class LoraStateCallback(TrainerCallback):
    """Adds :data:`LORA_STATE_FILE` to each checkpoint the Trainer writes (see :func:`write_lora_state`)."""

    def __init__(self, trainer: LoraHFTrainer, n_train_batches: int = 0) -> None:
        self.trainer, self.n_train_batches = trainer, n_train_batches

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_lora_state(folder, self.n_train_batches, self.trainer.unlogged_losses)


def write_lora_state(folder: Path, n_train_batches: int, unlogged_losses: list[float]) -> None:
    """What a resume needs besides the Trainer's files: the batches per epoch (the data order depends on
    it) and the step losses since the last log entry (floats round-trip exactly through JSON)."""
    state = {"n_train_batches": n_train_batches, "unlogged_losses": list(unlogged_losses)}
    (folder / LORA_STATE_FILE).write_text(json.dumps(state) + "\n")


def read_lora_state(folder: Path) -> dict[str, Any]:
    """:func:`write_lora_state`'s record of ``folder``, or an empty one for a checkpoint without it."""
    path = folder / LORA_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"n_train_batches": 0, "unlogged_losses": []}
