"""LoRA fine-tuning with every base matmul encrypted by a real worker process (concrete and bfv backends).

The acceptance oracle: the same training steps through the ``clear`` backend in this process
give exactly the same losses and adapter weights. The worker is started as the README says
(``veilml worker --weights ./model_dir --backend concrete``, the installed console script) on a
Hugging Face model folder; the restart test serves the same layers from a remote-weights file.
"""

from __future__ import annotations

import numpy as np
import pytest
from requires import require

torch = require("torch", "lora")
require("peft", "lora")
require("httpx", "worker")

from worker_helpers import CLIWorker, veilml_script  # noqa: E402

from veilml.linear import EncryptedLinearExecutor  # noqa: E402
from veilml.linear.transport import HTTPTransport  # noqa: E402
from veilml.models.lora import (  # noqa: E402
    LoraTrainer,
    load_corpus,
    local_executor,
    make_batches,
    remote_linear_weights,
    save_remote_weights,
    tiny_gpt2,
)

STEPS = 3


def small_model():
    return tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=16)


@pytest.fixture(scope="module")
def worker_files(tmp_path_factory):
    """The small model as a Hugging Face folder and as a remote-weights file, and one circuit cache."""
    directory = tmp_path_factory.mktemp("weights")
    small_model().save_pretrained(directory / "model_dir")
    save_remote_weights(remote_linear_weights(small_model()), directory / "tiny.safetensors")
    return directory


def start_worker(directory, weights: str, port: int | None = None) -> CLIWorker:
    """``veilml worker --weights ... --backend concrete --port N`` (the installed console script) on loopback."""
    options = ("--backend", "concrete", "--circuit-cache", str(directory / "circuits"), "--log-level", "warning")
    return CLIWorker(directory, "--weights", str(directory / weights), *options, port=port)


@pytest.fixture(scope="module")
def concrete_worker(worker_files):
    """The README's worker command on a Hugging Face model folder."""
    worker = start_worker(worker_files, "model_dir").wait_ready()
    yield worker.url, worker.process
    worker.process.terminate()
    worker.process.wait(timeout=30)


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
    print(
        f"losses: encrypted {encrypted_losses}, clear {simulated_losses}; "
        f"{encrypted.bytes_sent / 2**20:.1f} MiB up, {encrypted.bytes_received / 2**20:.1f} MiB down"
    )
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


@pytest.mark.execute
def test_readme_worker_command_on_a_model_folder_is_bit_exact(concrete_worker, worker_files):
    """README: ``veilml worker --weights ./model_dir --backend concrete --port N``, then a client over HTTP."""
    url, process = concrete_worker
    assert list(process.args[:4]) == [str(veilml_script()), "worker", "--weights", str(worker_files / "model_dir")]
    weights = remote_linear_weights(small_model())
    clear = local_executor(weights, "clear")
    with HTTPTransport(url) as transport:
        executor = EncryptedLinearExecutor(transport)  # as in the README: the worker's backend, which encrypts
        assert executor.backend.name == "concrete"
        assert set(transport.layers()) == set(weights)  # the folder's attention and MLP projections (default --layers)
        name = "transformer.h.0.mlp.c_fc"
        x = np.random.default_rng(0).normal(size=(3, weights[name][0].shape[0]))
        np.testing.assert_array_equal(executor.forward(name, x), clear.forward(name, x))  # concrete is exact
        assert executor.bytes_received > 0 and transport.reregistrations == 0


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
    workers = [start_worker(worker_files, "tiny.safetensors").wait_ready()]
    port, url = workers[0].port, workers[0].url

    def kill_and_restart() -> None:
        workers[-1].kill()
        workers.append(start_worker(worker_files, "tiny.safetensors", port))  # comes up while the client retries

    try:
        transport = HTTPTransport(url)  # default retry settings
        restarting = RestartsTheWorker(transport, kill_and_restart, at=9)  # in the middle of step 2
        losses, adapters = train(EncryptedLinearExecutor(restarting))
        clear_losses, clear_adapters = train(local_executor(remote_linear_weights(small_model()), "clear"))
        assert len(workers) == 2 and workers[1].process.poll() is None  # the second worker served the rest
        assert restarting.runs > restarting.at and transport.retries_done >= 1
        assert transport.reopened_sessions == 1 and transport.reregistrations >= 1
        assert losses == clear_losses  # bit for bit, as without the restart
        assert adapters.keys() == clear_adapters.keys() and all(torch.equal(adapters[n], clear_adapters[n]) for n in adapters)
    finally:
        for worker in workers:
            worker.kill()


# -- the default backend, bfv, on the tiny GPT-2 at 8 x 64 tokens per step ------------------------------------------


@pytest.fixture(scope="module")
def bfv_worker(tmp_path_factory):
    """``veilml worker --weights ./tiny_gpt2 --backend bfv`` on the tiny GPT-2 (2 layers, 64 wide) as a model folder."""
    directory = tmp_path_factory.mktemp("bfv")
    tiny_gpt2(seed=0).save_pretrained(directory / "tiny_gpt2")
    worker = CLIWorker(directory, "--weights", str(directory / "tiny_gpt2"), "--backend", "bfv", "--log-level", "warning")
    yield worker.wait_ready()
    worker.kill()


def train_tiny(executor, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    batches = make_batches(load_corpus("train"), seq_len=64, batch_size=8)[:steps]
    trainer = LoraTrainer(
        tiny_gpt2(seed=0), executor=executor, max_steps=steps, learning_rate=1e-2, logging_steps=1, progress=False, seed=0
    )
    trainer.train(batches)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


@pytest.mark.execute
def test_bfv_worker_process_trains_the_tiny_gpt2_bit_exact_at_8x64_tokens(bfv_worker):
    """Every base matmul of two steps (512 rows per request) through the worker process, against clear."""
    with HTTPTransport(bfv_worker.url) as transport:
        executor = EncryptedLinearExecutor(transport)  # the worker's backend, which encrypts
        assert executor.backend.name == "bfv"
        losses, adapters = train_tiny(executor, steps=2)
        assert executor.bytes_received > 0 and transport.reregistrations == 0
    clear_losses, clear_adapters = train_tiny(local_executor(remote_linear_weights(tiny_gpt2(seed=0)), "clear"), steps=2)
    print(
        f"losses: bfv {losses}, clear {clear_losses}; {executor.bytes_sent / 2**20:.1f} MiB up, {executor.bytes_received / 2**20:.1f} MiB down"
    )
    assert len(losses) == 2 and losses == clear_losses  # bit-exact floats
    assert adapters.keys() == clear_adapters.keys() and adapters
    assert all(torch.equal(adapters[n], clear_adapters[n]) for n in adapters)
    assert bfv_worker.process.poll() is None
