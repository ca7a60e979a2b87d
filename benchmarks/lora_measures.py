"""Measurements for ``benchmarks/lora.py``: training-step time per backend, and what the client keeps."""

from __future__ import annotations

import time
from typing import Any

import torch

from veilml.models.lora.remote import remote_layer_names
from veilml.models.lora.tiny import load_corpus, make_batches, tiny_gpt2
from veilml.models.lora.trainer import LoraTrainer
from veilml.models.lora.weights import find_remote_layers, remote_linear_weights
from veilml.models.lora.workers import local_executor

__all__ = ["client_share_of_model", "time_training_step"]

#: Small enough for real encryption: every row of every projection goes through the backend.
BENCH_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 16}


def time_training_step(
    backend: str | None, steps: int = 1, *, seq_len: int = 8, batch_size: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Seconds per LoRA training step of a tiny GPT-2, in float (``backend=None``) or through a local
    worker on ``backend``. A first step (key generation, compilation) is run and timed apart."""
    model = tiny_gpt2(seed=seed, **BENCH_MODEL)
    batches = make_batches(load_corpus("train"), seq_len=seq_len, batch_size=batch_size)[: steps + 1]
    started = time.perf_counter()
    executor = None if backend is None else local_executor(remote_linear_weights(model), backend)
    trainer = LoraTrainer(model, executor=executor, max_steps=1, learning_rate=1e-2, logging_steps=1, progress=False, seed=seed)
    trainer.train(batches)  # warm-up: keys are generated and registered on first use
    setup = time.perf_counter() - started
    sent, received = (executor.bytes_sent, executor.bytes_received) if executor is not None else (0, 0)
    trainer.max_steps = trainer.state.max_steps = 1 + steps
    output = trainer.train(batches)
    seconds = output.metrics["train_runtime"] / steps
    result = {
        "backend": backend or "float",
        "seconds_per_step": seconds,
        "first_step_s": setup,
        "loss": output.training_loss,
        "rows_per_request": seq_len * batch_size,
        "remote_layers": len(remote_layer_names(trainer.model)),
    }
    if executor is not None:
        result["bytes_up"] = (executor.bytes_sent - sent) / steps
        result["bytes_down"] = (executor.bytes_received - received) / steps
    return result


def _share(name: str, model: torch.nn.Module, r: int) -> dict[str, Any]:
    """Weights and per-token linear FLOPs (multiply-adds) left on the client once the projections are remote."""
    total = sum(p.numel() for p in model.parameters())
    remote_weights = sum(
        site.module.weight.numel() + (0 if site.module.bias is None else site.module.bias.numel())
        for site in find_remote_layers(model)
    )
    remote_flops = sum(site.module.weight.numel() for site in find_remote_layers(model))
    lora_flops = sum(r * sum(site.module.weight.shape) for site in find_remote_layers(model))
    head = model.get_output_embeddings().weight.numel()
    adapters = lora_flops  # one (d_in + d_out) x r pair of weights per adapted projection, one multiply-add each
    client_flops = head + lora_flops
    return {
        "model": name,
        "parameters": total,
        "remote_parameters": remote_weights,
        "client_weight_share": (total - remote_weights + adapters) / (total + adapters),
        "client_flop_share": client_flops / (client_flops + remote_flops),
        "lora_rank": r,
    }


def client_share_of_model(r: int = 8) -> list[dict[str, Any]]:
    """For a few architectures built from their configs (on the meta device: no weights, no download):
    the share of weights and of linear-layer FLOPs per token that stay on the client with LoRA rank ``r``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    configs = {
        "tiny GPT-2 (tests)": lambda: tiny_gpt2(),
        "GPT-2 small (124M)": lambda: GPT2LMHeadModel(GPT2Config()),
        "SmolLM2-135M": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=49152,
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                tie_word_embeddings=True,
            )
        ),
        "Llama-3.2-1B": lambda: LlamaForCausalLM(
            LlamaConfig(
                vocab_size=128256,
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=16,
                num_attention_heads=32,
                num_key_value_heads=8,
                tie_word_embeddings=True,
            )
        ),
    }
    rows = []
    for name, build in configs.items():
        with torch.device("meta"):
            model = build()
        rows.append(_share(name, model, r))
    return rows


def glwe_steps_against_clear(steps: int = 3, *, seq_len: int = 8, batch_size: int = 1, seed: int = 0) -> dict[str, Any]:
    """Train ``steps`` steps through the ``glwe`` backend and through ``clear`` from the same start.

    Every glwe product is checked against the exact integer product of the same codes (the worker
    is in this process, so its quantized matrices are at hand) and its documented error bound.
    """
    import numpy as np

    from veilml.runtime.linear import get_backend

    batches = make_batches(load_corpus("train"), seq_len=seq_len, batch_size=batch_size)[:steps]
    results: dict[str, Any] = {"steps": steps, "rows_per_request": seq_len * batch_size}
    for backend in ("clear", "glwe"):
        model = tiny_gpt2(seed=seed, **BENCH_MODEL)
        executor = local_executor(remote_linear_weights(model), backend)
        worker = executor.routes[next(iter(executor.routes))].worker
        worst = {"max_abs_error": 0, "max_bound": 0.0, "products": 0, "within_bound": True}
        if backend == "glwe":
            session, codes = executor.session, {}
            encrypt, decrypt = session.encrypt, session.decrypt

            def recording_encrypt(key: str, x_q: Any, encrypt: Any = encrypt) -> bytes:
                codes[key] = np.asarray(x_q)
                return encrypt(key, x_q)

            def checking_decrypt(key: str, result: bytes, decrypt: Any = decrypt) -> Any:
                product = decrypt(key, result)
                layer, direction = key.rsplit("/", 1)
                server = worker.servers[(layer, direction)]
                exact = codes[key] @ server.matrix
                bound = get_backend("glwe").error_bound(server.spec, int(np.abs(server.matrix).max()))
                error = int(np.abs(product - exact).max())
                worst["max_abs_error"] = max(worst["max_abs_error"], error)
                worst["max_bound"] = max(worst["max_bound"], bound)
                worst["products"] += 1
                worst["within_bound"] &= error <= bound
                return product

            session.encrypt, session.decrypt = recording_encrypt, checking_decrypt
        trainer = LoraTrainer(
            model, executor=executor, max_steps=steps, learning_rate=1e-2, logging_steps=1, progress=False, seed=seed
        )
        started = time.perf_counter()
        trainer.train(batches)
        results[backend] = {
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "seconds": time.perf_counter() - started,
            "bytes_up": executor.bytes_sent,
            "bytes_down": executor.bytes_received,
            **(worst if backend == "glwe" else {}),
        }
    sim, glwe = results["clear"]["losses"], results["glwe"]["losses"]
    results["max_relative_loss_difference"] = max(abs(a - b) / abs(a) for a, b in zip(sim, glwe))
    return results
