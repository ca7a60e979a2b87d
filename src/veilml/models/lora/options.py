"""The options of a LoRA fine-tuning run: one frozen value, checked in one place.

:class:`LoraTrainingOptions` holds what :class:`~veilml.models.lora.trainer.LoraTrainer` used to take as
15 separate keywords. Its fields keep the names and meanings of transformers' ``TrainingArguments``
(``learning_rate``, ``max_steps``, ``save_steps``...), so a script reads the same and a later move onto
transformers' ``Trainer`` maps them one to one. Every field is checked when the value is made (or
changed with :meth:`LoraTrainingOptions.replace`); a wrong one raises :class:`InvalidLoraOptionError`,
which names the field, what it takes and what came in. The scheduler's name is resolved by
transformers' ``get_scheduler`` when the trainer is built. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from veilml.errors import VeilmlError

__all__ = ["InvalidLoraOptionError", "LoraTrainingOptions"]


class InvalidLoraOptionError(VeilmlError, ValueError, TypeError):
    """A LoRA training option of the wrong type or out of range, or one that does not exist.

    A ``ValueError`` and a ``TypeError`` too, as scikit-learn's ``InvalidParameterError``: callers may
    catch either.
    """


def _integer(low: int, *, optional: bool = False) -> tuple[str, Callable[[Any], bool]]:
    def check(value: Any) -> bool:
        if value is None:
            return optional
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low

    return f"an integer >= {low}" + (" or None" if optional else ""), check


def _real(*, positive: bool = False, optional: bool = False) -> tuple[str, Callable[[Any], bool]]:
    def check(value: Any) -> bool:
        if value is None:
            return optional
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        return value > 0 if positive else value >= 0

    text = "a number > 0" if positive else "a number >= 0"
    return text + (" or None" if optional else ""), check


def _instance(kind: type, text: str, *, optional: bool = False) -> tuple[str, Callable[[Any], bool]]:
    return text + (" or None" if optional else ""), lambda value: (optional and value is None) or isinstance(value, kind)


@dataclass(frozen=True)
class LoraTrainingOptions:
    """How a LoRA run trains, logs, evaluates and checkpoints (transformers' ``TrainingArguments`` names).

    Args:
        learning_rate / weight_decay: of the default optimizer, AdamW (ignored with an ``optimizer_factory``).
        gradient_accumulation_steps: micro-batches per optimizer step (losses averaged).
        max_grad_norm: gradient clipping on the adapters; ``None`` disables it.
        max_steps: optimizer steps that ``train`` runs to.
        lr_scheduler_type / warmup_steps: as ``transformers.get_scheduler`` (``"constant"``,
            ``"linear"``, ``"cosine"``...).
        output_dir / save_steps / save_total_limit: checkpoint every ``save_steps`` steps (and at the
            end) into ``output_dir``, keeping the newest ``save_total_limit``.
        logging_steps: append the mean loss to the log history every ``logging_steps`` steps.
        eval_steps: evaluate on the evaluation data every ``eval_steps`` steps (and at the end).
        seed: seeds torch and ``random`` (LoRA initialisation, dropout) and the data order.
        shuffle: visit the training batches in a new seeded order every epoch.
        progress: show a tqdm progress bar.
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    max_steps: int = 100
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    output_dir: Path | None = None
    save_steps: int | None = None
    save_total_limit: int | None = None
    logging_steps: int = 10
    eval_steps: int | None = None
    seed: int = 0
    shuffle: bool = True
    progress: bool = True

    #: field -> (what it takes, in words; its check), applied by ``__post_init__``
    _constraints: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {
        "learning_rate": _real(),
        "weight_decay": _real(),
        "gradient_accumulation_steps": _integer(1),
        "max_grad_norm": _real(positive=True, optional=True),
        "max_steps": _integer(1),
        "lr_scheduler_type": _instance(str, "a scheduler name such as 'constant' or 'linear'"),
        "warmup_steps": _integer(0),
        "output_dir": _instance(Path, "a path", optional=True),
        "save_steps": _integer(1, optional=True),
        "save_total_limit": _integer(1, optional=True),
        "logging_steps": _integer(1),
        "eval_steps": _integer(1, optional=True),
        "seed": _integer(0),
        "shuffle": _instance(bool, "True or False"),
        "progress": _instance(bool, "True or False"),
    }

    def __post_init__(self) -> None:
        if isinstance(self.output_dir, str):  # accepted as given, kept as a Path
            object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name, (expected, check) in self._constraints.items():
            value = getattr(self, name)
            if not check(value):
                raise InvalidLoraOptionError(f"the LoRA option {name!r} must be {expected}; got {value!r} instead")
        if self.save_steps is not None and self.output_dir is None:
            raise InvalidLoraOptionError(
                f"save_steps={self.save_steps} needs an output_dir to write checkpoints to; pass output_dir or save_steps=None"
            )

    def replace(self, **changes: Any) -> LoraTrainingOptions:
        """A copy with ``changes`` applied and checked; an unknown name raises :class:`InvalidLoraOptionError`."""
        names = [field.name for field in dataclasses.fields(self)]
        unknown = [name for name in changes if name not in names]
        if unknown:
            hints = {name: difflib.get_close_matches(name, names, n=1) for name in unknown}
            near = "".join(f" ({name!r}: did you mean {found[0]!r}?)" for name, found in hints.items() if found)
            raise InvalidLoraOptionError(f"unknown LoRA training options {unknown}{near}; the options are {names}")
        return dataclasses.replace(self, **changes)
