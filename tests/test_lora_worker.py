"""LoRA fine-tuning with every base matmul encrypted by a real worker process (concrete backend).

The acceptance oracle: the same training steps through the ``clear`` backend in this process
give exactly the same losses and adapter weights.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from requires import require

torch = require("torch", "lora")
require("peft", "lora")
httpx = require("httpx", "worker")

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
def worker_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    save_remote_weights(remote_linear_weights(small_model()), directory / "tiny.safetensors")
    return directory / "tiny.safetensors", directory / "circuits"


def start_worker(weights, circuits, port: int) -> subprocess.Popen:
    """``veilml worker --backend concrete`` (the installed console script) on loopback."""
    return subprocess.Popen(
        [sys.executable, "-m", "veilml", "worker", "--weights", str(weights), "--backend", "concrete",
         "--port", str(port), "--circuit-cache", str(circuits), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the worker exited early:\n{process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("the worker did not answer /health within 180 s")


@pytest.fixture(scope="module")
def concrete_worker(worker_files):
    port = free_port()
    process = start_worker(*worker_files, port)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url)
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
def test_encrypted_training_steps_equal_clear(concrete_worker):
    url, process = concrete_worker
    transport = HTTPTransport(url)
    encrypted = EncryptedLinearExecutor(transport)
    assert encrypted.backend.name == "concrete"
    encrypted_losses, encrypted_adapters = train(encrypted)
    simulated_losses, simulated_adapters = train(local_executor(remote_linear_weights(small_model()), "clear"))
    print(f"losses: encrypted {encrypted_losses}, clear {simulated_losses}; "
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


class RestartsTheWorker:
    """Forwards to an HTTPTransport; before the ``at``-th run it kills the worker and starts a new one.

    The new worker starts in the background while the client's request fails and is retried: the
    client only has its default retry settings to ride it out.
    """

    def __init__(self, inner: HTTPTransport, kill, at: int) -> None:
        self.inner, self.kill, self.at, self.runs = inner, kill, at, 0
        self.backend = inner.backend

    def layers(self):
        return self.inner.layers()

    def setup(self, layer, direction):
        return self.inner.setup(layer, direction)

    def open_session(self):
        return self.inner.open_session()

    def register(self, session, layer, direction, keys):
        self.inner.register(session, layer, direction, keys)

    def run(self, session, layer, direction, ciphertext):
        self.runs += 1
        if self.runs == self.at:
            self.kill()
        return self.inner.run(session, layer, direction, ciphertext)


@pytest.mark.execute
def test_training_through_a_worker_killed_and_restarted_mid_run_is_bit_exact(worker_files):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [start_worker(*worker_files, port)]
    wait_ready(processes[0], url)

    def kill_and_restart() -> None:
        processes[-1].kill()
        processes[-1].wait(timeout=30)
        processes.append(start_worker(*worker_files, port))  # comes up while the client retries

    try:
        transport = HTTPTransport(url)  # default retry settings
        restarting = RestartsTheWorker(transport, kill_and_restart, at=9)  # in the middle of step 2
        losses, adapters = train(EncryptedLinearExecutor(restarting))
        clear_losses, clear_adapters = train(local_executor(remote_linear_weights(small_model()), "clear"))
        assert len(processes) == 2 and processes[1].poll() is None  # the second worker served the rest
        assert restarting.runs > restarting.at and transport.retries_done >= 1
        assert transport.reopened_sessions == 1 and transport.reregistrations >= 1
        assert losses == clear_losses  # bit for bit, as without the restart
        assert adapters.keys() == clear_adapters.keys() and all(torch.equal(adapters[n], clear_adapters[n]) for n in adapters)
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)
