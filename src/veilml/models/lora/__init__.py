"""Private LoRA fine-tuning: the client trains adapters, workers compute the frozen linear layers.

The data owner keeps the data, tokenizer, adapters, embeddings, norms, softmax, activations, LM
head, loss and optimizer. Workers hold the frozen projection weights and compute ``x @ W`` (forward)
and ``g @ W.T`` (backward) on encrypted per-row-quantized rows (see
:mod:`veilml.linear`). Typical use::

    from veilml.models.lora import LoraTrainer, local_executor, remote_linear_weights, tiny_gpt2

    model = tiny_gpt2()
    executor = local_executor(remote_linear_weights(model), backend="clear")
    trainer = LoraTrainer(model, executor=executor, max_steps=200)  # or options=LoraTrainingOptions(max_steps=200)
    trainer.train(batches)

Against a ``veilml worker`` process: ``save_remote_weights(model, "base.safetensors")`` writes its weights,
``veilml worker --weights base.safetensors`` serves them, and ``EncryptedLinearExecutor(HTTPTransport(url))``
is the executor (``docs/lora_quickstart.md`` runs it step by step). A worker serving another base model is refused
before anything is sent; a ``LoraTrainer`` with an ``output_dir`` continues from its latest checkpoint.

With transformers' own ``Trainer`` (what ``LoraTrainer`` runs underneath), an existing PEFT script
changes by two lines::

    model = private_model(peft_model, executor)                  # the frozen projections go to the workers
    trainer = Trainer(model=model, args=args, train_dataset=..., data_collator=...,
                      callbacks=[RemoteLayersCallback(executor)])  # checkpoints record the remote layers
    trainer.train()                                               # resume_from_checkpoint=... is exact

``private_generate`` / ``model.generate`` then run inference through the same workers; ``shipment_examples``,
``task_features``, ``TaskCollator`` and ``task_accuracy`` are a generated task with a held-out split.

Needs the ``lora`` extra (torch, transformers, peft, safetensors); nothing heavy loads until a name
below is first used.
"""

from __future__ import annotations

from veilml._lazy import lazy_exports

__all__ = [
    "DEFAULT_REMOTE_PATTERNS",
    "ByteTokenizer",
    "GenerationResult",
    "InvalidLoraOptionError",
    "LoraTrainer",
    "LoraTrainingOptions",
    "RemoteLayersCallback",
    "RemoteLayersMismatchError",
    "RemoteLinear",
    "TaskAccuracy",
    "TaskCollator",
    "TaskExample",
    "TrainOutput",
    "TrainerState",
    "default_lora_config",
    "find_remote_layers",
    "load_corpus",
    "load_remote_weights",
    "local_executor",
    "make_batches",
    "outsource_linear_layers",
    "pad_id",
    "private_generate",
    "private_model",
    "remote_layer_names",
    "remote_linear_weights",
    "save_remote_weights",
    "shipment_examples",
    "smollm2",
    "task_accuracy",
    "task_batches",
    "task_features",
    "tiny_gpt2",
    "tiny_llama",
    "unwrap_peft",
]

_LAZY = {
    "DEFAULT_REMOTE_PATTERNS": ".weights",
    "find_remote_layers": ".weights",
    "load_remote_weights": ".weights",
    "remote_linear_weights": ".weights",
    "save_remote_weights": ".weights",
    "unwrap_peft": ".weights",
    "RemoteLinear": ".remote_linear",
    "outsource_linear_layers": ".remote",
    "remote_layer_names": ".remote",
    "local_executor": ".workers",
    "ByteTokenizer": ".tiny",
    "load_corpus": ".tiny",
    "make_batches": ".tiny",
    "smollm2": ".tiny",
    "tiny_gpt2": ".tiny",
    "tiny_llama": ".tiny",
    "LoraTrainer": ".trainer",
    "LoraTrainingOptions": ".options",
    "InvalidLoraOptionError": ".options",
    "TrainOutput": ".trainer",
    "TrainerState": ".trainer",
    "default_lora_config": ".private",
    "private_model": ".private",
    "RemoteLayersCallback": ".private",
    "RemoteLayersMismatchError": ".private",
    "TaskExample": ".task",
    "shipment_examples": ".task",
    "TaskCollator": ".batching",
    "pad_id": ".batching",
    "task_batches": ".batching",
    "task_features": ".batching",
    "GenerationResult": ".generation",
    "TaskAccuracy": ".generation",
    "private_generate": ".generation",
    "task_accuracy": ".generation",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, missing="the lora extra: pip install 'veilml[lora]'")
