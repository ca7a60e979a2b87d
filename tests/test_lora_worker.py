"""LoRA fine-tuning with every base matmul encrypted by a real worker process (concrete backend).

The acceptance oracle: the same training steps through the ``simulate`` backend in this process
give exactly the same losses and adapter weights.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
httpx = pytest.importorskip("httpx")

from veilml.models.lora import (  # noqa: E402
    LoraTrainer,
    load_corpus,
    local_executor,
    make_batches,
    remote_linear_weights,
    save_remote_weights,
    tiny_gpt2,
)
from veilml.runtime.linear.protocol import EncryptedLinearExecutor  # noqa: E402
from veilml.runtime.remote import HTTPTransport  # noqa: E402

STEPS = 3


def small_model():
    return tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def concrete_worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_remote_weights(remote_linear_weights(small_model()), path)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "veilml", "worker", "--weights", str(path), "--backend", "concrete", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the worker exited early:\n{process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the worker did not answer /health within 180 s")
    yield url, process
    process.terminate()
    process.wait(timeout=30)


def train(executor) -> tuple[list[float], dict[str, torch.Tensor]]:
    batches = make_batches(load_corpus("train")[:4000], seq_len=8, batch_size=2)[:STEPS]
    trainer = LoraTrainer(
        small_model(), executor=executor, max_steps=STEPS, learning_rate=1e-2, logging_steps=1, progress=False, seed=0
    )
    trainer.train(batches)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return losses, adapters


@pytest.mark.execute
def test_encrypted_training_steps_equal_simulate(concrete_worker):
    url, process = concrete_worker
    transport = HTTPTransport(url)
    encrypted = EncryptedLinearExecutor(transport)
    assert encrypted.backend.name == "concrete"
    encrypted_losses, encrypted_adapters = train(encrypted)
    simulated_losses, simulated_adapters = train(local_executor(remote_linear_weights(small_model()), "simulate"))
    print(f"losses: encrypted {encrypted_losses}, simulate {simulated_losses}; "
          f"{encrypted.bytes_sent / 2**20:.1f} MiB up, {encrypted.bytes_received / 2**20:.1f} MiB down")
    assert len(encrypted_losses) == STEPS
    assert encrypted_losses == simulated_losses  # bit-exact floats
    assert encrypted_adapters.keys() == simulated_adapters.keys() and encrypted_adapters
    for name, tensor in encrypted_adapters.items():
        assert torch.equal(tensor, simulated_adapters[name]), name
    # every outsourced layer went through the worker forward, and backward wherever an input
    # gradient is needed: all but the first projection, whose inputs (frozen embeddings) need none
    first = "transformer.h.0.attn.c_attn"
    assert set(encrypted._registered) == {(n, "forward") for n in encrypted.infos} | {
        (n, "backward") for n in encrypted.infos if n != first
    }
    assert process.poll() is None
