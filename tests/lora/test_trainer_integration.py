"""transformers' own Trainer trains a model patched with private_model: same numbers as LoraTrainer, exact resume,
and a resumed run refuses workers serving other weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from requires import require

torch = require("torch", "lora")
transformers = require("transformers", "lora")
require("peft", "lora")

from veilml.errors import VeilmlError
from veilml.models.lora import (
    ByteTokenizer,
    LoraTrainer,
    RemoteLayersCallback,
    RemoteLayersMismatchError,
    TaskCollator,
    default_lora_config,
    local_executor,
    private_model,
    remote_layer_names,
    remote_linear_weights,
    shipment_examples,
    task_batches,
    task_features,
    tiny_llama,
)
from veilml.models.lora.private import REMOTE_RECORD_FILE

TOKENIZER = ByteTokenizer()
TINY = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 256}
STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy machine more spin against each other (these tiny models gain nothing from them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base_model(seed: int = 0):
    return tiny_llama(seed=seed, **TINY)


def clear_executor(seed: int = 0):
    return local_executor(remote_linear_weights(base_model(seed)), "clear")


@pytest.fixture(scope="module")
def features():
    return task_features(shipment_examples(2 * STEPS, "train"), TOKENIZER)


def arguments(tmp_path, **changes):
    """LoraTrainer's defaults (constant lr 1e-3, clipping at 1, torch's AdamW) as TrainingArguments, data in order."""
    options = {
        "output_dir": str(tmp_path),
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "optim": "adamw_torch",
        "train_sampling_strategy": "sequential",
        "remove_unused_columns": False,
        "report_to": "none",
        "disable_tqdm": True,
        **changes,
    }
    return transformers.TrainingArguments(**options)


def stock_trainer(model, features, tmp_path, executor=None, **changes):
    """The user's script: a stock Trainer; with an executor, the two added lines (patch the model, pass the callback)."""
    if executor is not None:
        model = private_model(model, executor)
    callbacks = [RemoteLayersCallback(executor)] if executor is not None else []
    return transformers.Trainer(
        model=model,
        args=arguments(tmp_path, **changes),
        train_dataset=features,
        data_collator=TaskCollator(TOKENIZER.pad_token_id),
        callbacks=callbacks,
    )


def peft_start(lora_seed: int = 0, base_seed: int = 0):
    """The tiny base model with LoRA adapters initialised under ``lora_seed`` (as LoraTrainer seeds them)."""
    from peft import get_peft_model

    torch.manual_seed(lora_seed)
    model = base_model(base_seed)
    return get_peft_model(model, default_lora_config(model))


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def adapters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_stock_trainer_trains_the_private_model_as_lora_trainer_does(features, tmp_path):
    executor = clear_executor()
    stock = stock_trainer(peft_start(), features, tmp_path / "stock", executor)
    stock.train()
    assert len(remote_layer_names(stock.model)) == 2 * 7  # every projection of both layers ran on the worker
    assert executor.bytes_sent > 0 and executor.bytes_received > 0

    batches = task_batches(shipment_examples(2 * STEPS, "train"), TOKENIZER, batch_size=2)
    ours = LoraTrainer(
        base_model(),
        executor=clear_executor(),
        max_steps=STEPS,
        learning_rate=1e-2,
        logging_steps=1,
        shuffle=False,
        progress=False,
    )
    ours.train(batches)
    # the Trainer logs float32-rounded running sums; LoraTrainer logs its exact step losses: compare as float32
    assert np.array_equal(np.float32(losses(stock)), np.float32(losses(ours))) and len(losses(stock)) == STEPS
    ours_adapters, stock_adapters = adapters(ours.model), adapters(stock.model)
    assert ours_adapters.keys() == stock_adapters.keys()
    assert all(torch.equal(ours_adapters[n], stock_adapters[n]) for n in ours_adapters)  # bit for bit
    assert losses(stock)[-1] < losses(stock)[0]


def test_private_losses_follow_the_float_reference(features, tmp_path):
    private = stock_trainer(peft_start(), features, tmp_path / "private", clear_executor())
    private.train()
    float_run = stock_trainer(peft_start(), features, tmp_path / "float")
    float_run.train()
    ours, reference = np.array(losses(private)), np.array(losses(float_run))
    assert not np.array_equal(ours, reference)  # 8-bit integer products: close, not equal
    np.testing.assert_allclose(ours, reference, rtol=0.02)
    again = stock_trainer(peft_start(), features, tmp_path / "again", clear_executor())
    again.train()
    assert losses(again) == losses(private)  # and deterministic


def test_checkpoint_and_resume_through_the_trainer_are_bit_exact(features, tmp_path):
    save = {"save_strategy": "steps", "save_steps": 2}
    straight = stock_trainer(peft_start(), features, tmp_path / "straight", clear_executor(), **save)
    straight.train()

    first = stock_trainer(peft_start(), features, tmp_path / "resumed", clear_executor(), max_steps=STEPS, **save)
    first.train()  # writes checkpoint-2 and checkpoint-4; resume a fresh process from checkpoint-2
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    record = json.loads((checkpoint / REMOTE_RECORD_FILE).read_text())
    assert record["backend"] == "clear" and len(record["layers"]) == 2 * 7
    assert {"d_in", "d_out", "input_bits", "weight_bits", "sha256"} == set(next(iter(record["layers"].values())))
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not any("base_layer.weight" in key for key in _saved_keys(checkpoint))  # the base weights are on the worker

    resumed = stock_trainer(peft_start(lora_seed=1), features, tmp_path / "resumed", clear_executor(), **save)  # other init
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # the log history of steps 1-2 comes from the checkpoint, steps 3-4 are computed again: bit for bit
    assert losses(resumed) == losses(straight) and len(losses(resumed)) == STEPS
    final, again = adapters(straight.model), adapters(resumed.model)
    assert all(torch.equal(final[n], again[n]) for n in final)


def _saved_keys(checkpoint) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_resume_refuses_a_worker_serving_other_weights(features, tmp_path):
    trainer = stock_trainer(peft_start(), features, tmp_path, clear_executor(), max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert checkpoint.is_dir()

    # the client's base model and the worker's agree (else private_model refuses at once); the checkpoint's do not
    other = stock_trainer(
        peft_start(base_seed=7), features, tmp_path, clear_executor(seed=7), save_strategy="steps", save_steps=2
    )
    with pytest.raises(RemoteLayersMismatchError, match="other remote layers") as error:
        other.train(resume_from_checkpoint=str(checkpoint))
    assert isinstance(error.value, VeilmlError)

    fewer_bits = local_executor(remote_linear_weights(base_model()), "clear", weight_bits=6)
    other = stock_trainer(peft_start(), features, tmp_path, fewer_bits, save_strategy="steps", save_steps=2)
    with pytest.raises(RemoteLayersMismatchError):
        other.train(resume_from_checkpoint=str(checkpoint))

    moved = tmp_path / "elsewhere" / "checkpoint-2"  # outside output_dir: checked through args.resume_from_checkpoint
    shutil.copytree(checkpoint, moved)
    other = stock_trainer(
        peft_start(base_seed=7), features, tmp_path / "other-run", clear_executor(seed=7), resume_from_checkpoint=str(moved)
    )
    with pytest.raises(RemoteLayersMismatchError):
        other.train(resume_from_checkpoint=other.args.resume_from_checkpoint)

    same = stock_trainer(peft_start(), features, tmp_path, clear_executor(), save_strategy="steps", save_steps=2)
    same.train(resume_from_checkpoint=str(checkpoint))  # the same weights: accepted
    assert same.state.global_step == STEPS
