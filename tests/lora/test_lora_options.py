"""LoraTrainingOptions: one frozen, checked value; LoraTrainer takes it or its fields as keywords."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from requires import require

from veilml.errors import VeilmlError
from veilml.models.lora import InvalidLoraOptionError, LoraTrainingOptions


def test_defaults_are_the_trainers_former_defaults():
    options = LoraTrainingOptions()
    assert (options.learning_rate, options.max_steps, options.logging_steps, options.max_grad_norm) == (1e-3, 100, 10, 1.0)
    assert (options.lr_scheduler_type, options.seed, options.shuffle, options.progress) == ("constant", 0, True, True)
    assert options.output_dir is None and options.save_steps is None and options.eval_steps is None


def test_options_are_frozen_and_replace_checks_again():
    options = LoraTrainingOptions(max_steps=5, output_dir="runs/x")
    assert options.output_dir == Path("runs/x")  # kept as a Path
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_steps = 6  # type: ignore[misc]
    assert options.replace(max_steps=6).max_steps == 6 and options.max_steps == 5
    with pytest.raises(InvalidLoraOptionError, match="'max_steps' must be an integer >= 1; got 0"):
        options.replace(max_steps=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_steps": 0}, "'max_steps' must be an integer >= 1; got 0"),
        ({"gradient_accumulation_steps": 1.5}, "'gradient_accumulation_steps' must be an integer"),
        ({"logging_steps": True}, "'logging_steps' must be an integer"),
        ({"save_total_limit": 0}, "'save_total_limit' must be an integer >= 1 or None"),
        ({"eval_steps": -1}, "'eval_steps' must be an integer >= 1 or None"),
        ({"warmup_steps": -1}, "'warmup_steps' must be an integer >= 0"),
        ({"max_grad_norm": 0.0}, "'max_grad_norm' must be a number > 0 or None"),
        ({"learning_rate": -1e-3}, "'learning_rate' must be a number >= 0"),
        ({"lr_scheduler_type": None}, "'lr_scheduler_type' must be a scheduler name"),
        ({"shuffle": "yes"}, "'shuffle' must be True or False"),
        ({"seed": -1}, "'seed' must be an integer >= 0"),
        ({"save_steps": 10}, "save_steps=10 needs an output_dir"),
    ],
)
def test_each_wrong_option_is_refused_with_what_it_takes(changes, message):
    with pytest.raises(InvalidLoraOptionError, match=message) as raised:
        LoraTrainingOptions(**changes)
    assert isinstance(raised.value, VeilmlError) and isinstance(raised.value, ValueError)


def test_an_unknown_option_is_named_with_a_suggestion():
    with pytest.raises(InvalidLoraOptionError, match="'max_step': did you mean 'max_steps'") as raised:
        LoraTrainingOptions().replace(max_step=3)
    assert isinstance(raised.value, TypeError)  # what Python raises for an unexpected keyword


def test_options_do_not_import_torch():
    code = "import sys; from veilml.models.lora import LoraTrainingOptions as O; O(max_steps=3); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_trainer_takes_options_or_their_fields_as_keywords():
    require("peft", "lora")
    from veilml.models.lora import LoraTrainer, tiny_gpt2

    tiny = {"n_embd": 16, "n_head": 2, "n_layer": 1, "n_positions": 8}
    base = LoraTrainingOptions(max_steps=3, learning_rate=1e-2, progress=False)
    by_keywords = LoraTrainer(tiny_gpt2(**tiny), max_steps=3, learning_rate=1e-2, progress=False)
    by_options = LoraTrainer(tiny_gpt2(**tiny), options=base)
    both = LoraTrainer(tiny_gpt2(**tiny), options=base, max_steps=4)
    assert by_keywords.options == by_options.options == base
    assert both.options == base.replace(max_steps=4) and both.state.max_steps == 4
    assert by_options.optimizer.param_groups[0]["lr"] == 1e-2
    with pytest.raises(InvalidLoraOptionError, match="unknown LoRA training options"):
        LoraTrainer(tiny_gpt2(**tiny), max_step=3)
    with pytest.raises(InvalidLoraOptionError, match="must be a LoraTrainingOptions"):
        LoraTrainer(tiny_gpt2(**tiny), options={"max_steps": 3})
