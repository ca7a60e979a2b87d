"""Measurements for ``benchmarks/lora.py``: training-step time per backend, and what the client keeps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from veilml.models.lora.remote import remote_layer_names
from veilml.models.lora.tiny import _seeded, load_corpus, make_batches, tiny_gpt2
from veilml.models.lora.trainer import LoraTrainer
from veilml.models.lora.weights import find_remote_layers, remote_linear_weights
from veilml.models.lora.workers import local_executor

__all__ = ["client_share_of_model", "smollm2_shaped", "start_worker", "time_training_step", "worker_training_step"]

#: Small enough for real encryption: every row of every projection goes through the backend.
BENCH_MODEL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 16}


#: SmolLM2-135M's dimensions (HuggingFaceTB/SmolLM2-135M's config; no model hub is reachable here)
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


def _train_on_to(trainer: LoraTrainer, max_steps: int) -> None:
    """Let a trainer whose warm-up run is done train on to ``max_steps`` (its learning rate is constant)."""
    trainer.options = trainer.options.replace(max_steps=max_steps)
    trainer.state.max_steps = max_steps


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
    _train_on_to(trainer, 1 + steps)
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
        "SmolLM2-135M": lambda: LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)),
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

    from veilml.linear import get_backend

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


# -- training steps through a real ``veilml worker`` process ------------------------------------------------------


def smollm2_shaped(seed: int = 0) -> torch.nn.Module:
    """A LlamaForCausalLM with SmolLM2-135M's dimensions and random weights (no model hub is reachable here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SMOLLM2_135M, max_position_embeddings=2048)
    return _seeded(seed, lambda: LlamaForCausalLM(config))


class _Timed:
    """Client-side seconds spent encrypting, decrypting and waiting for the worker, per executor."""

    def __init__(self, executor: Any) -> None:
        self.encrypt = self.decrypt = self.remote = 0.0
        self.key_bytes = 0
        session = executor.session
        for name in ("encrypt", "decrypt"):
            setattr(session, name, self._wrap(getattr(session, name), name))
        for transport in executor.transports:
            transport.run = self._wrap(transport.run, "remote")
            transport.register = self._count_keys(transport.register)

    def _count_keys(self, call: Any) -> Any:
        def counted(session: str, layer: str, direction: str, keys: bytes) -> Any:
            self.key_bytes += len(keys)
            return call(session, layer, direction, keys)

        return counted

    def _wrap(self, call: Any, field: str) -> Any:
        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args)
            finally:
                setattr(self, field, getattr(self, field) + time.perf_counter() - started)

        return timed


def _peak_rss_bytes(pid: int) -> int:
    """The high-water mark of a process's resident memory (Linux ``VmHWM``)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def start_worker(
    folder: Any, backend: str, directory: Any, worker_args: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any, float]]:
    """``veilml worker --weights FOLDER --backend BACKEND`` (the console script) on a free loopback port, until
    the ``with`` ends: yields its URL, its process and the seconds it took to answer ``/health``."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "veilml"
    args = [str(script), "worker", "--weights", str(folder), "--backend", backend, "--port", str(port), "--log-level", "warning"]
    log_path = Path(directory) / f"worker-{backend}.log"
    log = open(log_path, "wb")
    started = time.perf_counter()
    process = subprocess.Popen([*args, *worker_args], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 1800:
                raise RuntimeError(f"the {backend} worker did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, process, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def worker_training_step(
    backend: str,
    model_factory: Any,
    directory: str,
    *,
    seq_len: int,
    batch_size: int,
    steps: int = 1,
    worker_args: tuple[str, ...] = (),
    warmup: bool = True,
) -> dict[str, Any]:
    """LoRA training steps through ``veilml worker --backend BACKEND`` (the console script) on loopback.

    The model is saved as a Hugging Face folder for the worker; a first step (keys, registration, the
    worker's first encodings or compilation) is timed apart from the ``steps`` measured after it; without
    ``warmup`` the one step measured is the first (``steps`` must be 1), key generation included.
    """
    from pathlib import Path

    from veilml.linear import EncryptedLinearExecutor
    from veilml.linear.transport import HTTPTransport

    folder = Path(directory) / "model"
    if not folder.exists():
        model_factory().save_pretrained(folder)
    with start_worker(folder, backend, directory, worker_args) as (url, process, worker_start):
        batches = make_batches(load_corpus("train"), seq_len=seq_len, batch_size=batch_size)[: steps + 1]
        with HTTPTransport(url, timeout=1800.0) as transport:
            executor = EncryptedLinearExecutor(transport)
            timed = _Timed(executor)
            trainer = LoraTrainer(
                model_factory(), executor=executor, max_steps=1, learning_rate=1e-2, logging_steps=1, progress=False, seed=0
            )
            first, sent, received, before = 0.0, 0, 0, (0.0, 0.0, 0.0)
            if warmup:
                started = time.perf_counter()
                trainer.train(batches)
                first = time.perf_counter() - started
                sent, received = executor.bytes_sent, executor.bytes_received
                before = (timed.encrypt, timed.decrypt, timed.remote)
                _train_on_to(trainer, 1 + steps)
            elif steps != 1:
                raise ValueError("without warm-up, one step is measured")
            started = time.perf_counter()
            output = trainer.train(batches)
            seconds = (time.perf_counter() - started) / steps
        return {
            "backend": backend,
            "tokens_per_step": f"{batch_size}x{seq_len}",
            "rows_per_request": batch_size * seq_len,
            "remote_layers": len(executor.infos),
            "worker_start_s": worker_start,
            "first_step_s": first,
            "seconds_per_step": seconds,
            "client_encrypt_s": (timed.encrypt - before[0]) / steps,
            "client_decrypt_s": (timed.decrypt - before[1]) / steps,
            "worker_round_trips_s": (timed.remote - before[2]) / steps,
            "bytes_up": (executor.bytes_sent - sent) / steps,
            "bytes_down": (executor.bytes_received - received) / steps,
            "first_step_bytes_up": sent,
            "first_step_bytes_down": received,
            "evaluation_key_bytes": timed.key_bytes,
            "loss": output.training_loss,
            "worker_peak_rss_bytes": _peak_rss_bytes(process.pid),
        }
