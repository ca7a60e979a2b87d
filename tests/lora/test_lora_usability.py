"""What a new user meets first: the quickstart runs as written, a worker serving another base model is refused
before any activation is sent, and a script run again with more steps continues its run."""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from requires import require

torch = require("torch", "lora")
require("peft", "lora")
require("httpx", "worker")
require("fastapi", "worker")

from fastapi.testclient import TestClient  # noqa: E402
from worker_helpers import CLIWorker, free_port  # noqa: E402

from veilml.linear import BaseWeightsMismatchError, EncryptedLinearExecutor, Worker  # noqa: E402
from veilml.linear.service import create_app  # noqa: E402
from veilml.linear.transport import HTTPTransport  # noqa: E402
from veilml.models.lora import (  # noqa: E402
    LoraTrainer,
    load_corpus,
    load_remote_weights,
    local_executor,
    make_batches,
    private_model,
    remote_layer_names,
    remote_linear_weights,
    save_remote_weights,
    tiny_gpt2,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "lora_quickstart.md"
SMALL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 16}


def small_model(seed: int = 0):
    return tiny_gpt2(seed=seed, **SMALL)


def clear_worker(seed: int = 0) -> Worker:
    weights = remote_linear_weights(small_model(seed))
    return Worker({n: w for n, (w, _) in weights.items()}, {n: b for n, (_, b) in weights.items() if b is not None}, "clear")


def test_save_remote_weights_takes_the_model_itself(tmp_path):
    """One call writes the worker's file from a model, plain or with adapters: its projections, nothing else."""
    from peft import get_peft_model

    from veilml.models.lora import default_lora_config

    plain = small_model()
    written = load_remote_weights(save_remote_weights(plain, tmp_path / "base.safetensors"))
    expected = remote_linear_weights(plain)
    assert sorted(written) == sorted(expected) and len(written) == 4
    assert all((written[n][0] == w).all() and (written[n][1] == b).all() for n, (w, b) in expected.items())
    peft_model = get_peft_model(small_model(), default_lora_config(small_model()))
    again = load_remote_weights(save_remote_weights(peft_model, tmp_path / "peft.safetensors"))
    assert sorted(again) == sorted(expected) and all((again[n][0] == expected[n][0]).all() for n in expected)


# -- the client refuses a worker serving other base weights -------------------------------------------------------


class Recording:
    """An HTTPTransport that records every call the executor makes through it."""

    def __init__(self, inner: HTTPTransport) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        attribute = getattr(self.inner, name)
        if name in ("layers", "setup", "open_session", "register", "run"):

            def record(*args):
                self.calls.append(name)
                return attribute(*args)

            return record
        return attribute


def http_executor(worker: Worker) -> tuple[EncryptedLinearExecutor, Recording, str]:
    """An executor over HTTP to ``worker`` (in this process) and the fingerprint the worker publishes on /health."""
    client = TestClient(create_app(worker))
    transport = Recording(HTTPTransport("http://testserver", backoff=0.0, client=client))
    published = client.get("/health").json()["fingerprint"]
    return EncryptedLinearExecutor(transport, backend="clear"), transport, published


def test_a_worker_serving_other_weights_is_refused_before_any_activation_is_sent():
    executor, transport, published = http_executor(clear_worker(seed=1))
    model = small_model(seed=0)
    with pytest.raises(BaseWeightsMismatchError) as refused:
        private_model(model, executor)
    message = str(refused.value)
    computed = re.search(r"this model's ([0-9a-f]{32})", message)
    assert computed and computed.group(1) != published
    assert f"worker fingerprint {published}" in message  # both fingerprints, named
    assert "transformer.h.0.attn.c_attn" in message and "veilml worker --weights" in message  # a layer, and the fix
    assert transport.calls == ["layers"]  # only GET /layers: no session, no key, no activation
    assert remote_layer_names(model) == []  # and the model is left as it was

    # the same base weights: the client computes the fingerprint the worker publishes, and training goes through
    executor, transport, published = http_executor(clear_worker(seed=0))
    same = small_model(seed=0)
    assert executor.fingerprint(transport) == published
    model = private_model(same, executor)
    batch = make_batches(load_corpus("train")[:400], seq_len=8, batch_size=2)[0]
    model(**batch).loss.backward()
    assert "run" in transport.calls and len(remote_layer_names(model)) == 4


def test_a_worker_serving_layers_the_model_lacks_is_refused():
    bigger = tiny_gpt2(seed=0, **{**SMALL, "n_layer": 2})
    executor = local_executor(remote_linear_weights(bigger), "clear")
    with pytest.raises(BaseWeightsMismatchError, match=r"4 layers this model does not have, e\.g\. 'transformer\.h\.1\."):
        private_model(small_model(seed=0), executor)


# -- a run with an output_dir resumes by itself ---------------------------------------------------------------------


def trainer(output_dir: Path | None, max_steps: int) -> LoraTrainer:
    return LoraTrainer(
        small_model(),
        executor=local_executor(remote_linear_weights(small_model()), "clear"),
        max_steps=max_steps,
        learning_rate=1e-2,
        logging_steps=1,
        output_dir=output_dir,
        progress=False,
    )


def losses(run: LoraTrainer) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in run.state.log_history if "loss" in entry]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_running_again_with_more_steps_continues_the_run(tmp_path, caplog):
    batches = make_batches(load_corpus("train")[:4000], seq_len=8, batch_size=2)
    first = trainer(tmp_path / "run", max_steps=2)
    assert first.train(batches).global_step == 2
    saved = digests(tmp_path / "run" / "checkpoint-2")

    with caplog.at_level(logging.WARNING, logger="veilml.lora"):
        second = trainer(tmp_path / "run", max_steps=4)
        output = second.train(batches)
    assert "resuming from" in caplog.text and "checkpoint-2 (step 2 of 4)" in caplog.text
    assert output.global_step == 4 and len(second.trainer.step_losses) == 2  # steps 3 and 4 only
    straight = trainer(tmp_path / "straight", max_steps=4)
    straight.train(batches)
    assert losses(second) == losses(straight) and [step for step, _ in losses(second)] == [1, 2, 3, 4]  # bit for bit
    final = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, final[n]) for n, p in second.model.named_parameters() if p.requires_grad)
    assert digests(tmp_path / "run" / "checkpoint-2") == saved  # the earlier checkpoint is kept as it was
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    done = digests(tmp_path / "run")
    again = trainer(tmp_path / "run", max_steps=4)  # the same command once more: nothing to train, nothing rewritten
    assert again.train(batches).global_step == 4 and again.trainer.step_losses == []
    assert digests(tmp_path / "run") == done

    with pytest.raises(FileExistsError, match="give a new output_dir"):
        trainer(tmp_path / "run", max_steps=4).train(batches, resume_from_checkpoint=False)
    with pytest.raises(ValueError, match="past this trainer's max_steps=2"):
        trainer(tmp_path / "run", max_steps=2).train(batches)
    assert digests(tmp_path / "run") == done


def test_a_run_without_output_dir_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """transformers makes ./trainer_output when TrainingArguments has no output_dir: the trainer gives it a
    temporary one instead (found as stray folders in the repository after notebook and test runs)."""
    monkeypatch.chdir(tmp_path)
    run = trainer(None, max_steps=1)
    batches = make_batches(load_corpus("train")[:2000], seq_len=8, batch_size=2)
    assert run.train(batches).global_step == 1
    assert list(tmp_path.iterdir()) == []


# -- the quickstart, as written -------------------------------------------------------------------------------------


def quickstart() -> tuple[dict[str, str], list[str]]:
    """The quickstart's Python files (by the name in their first line) and its shell commands, in order."""
    text = QUICKSTART.read_text()
    files = dict(re.findall(r"```python\n# (quickstart_\w+\.py)\n(.*?)```", text, re.S))
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.strip().splitlines()]
    return files, commands


def test_the_quickstart_names_its_files_and_commands():
    files, commands = quickstart()
    assert sorted(files) == ["quickstart_train.py", "quickstart_weights.py"]
    assert [c.split()[:2] for c in commands] == [
        ["pip", "install"],
        ["python", "quickstart_weights.py"],
        ["veilml", "worker"],
        ["python", "quickstart_train.py"],
        ["python", "quickstart_train.py"],
    ]


@pytest.mark.execute
def test_the_quickstart_runs_as_written(tmp_path):
    """Every command of docs/lora_quickstart.md but the install, on another port: a bfv worker process, 2 steps,
    then the same script to 4 steps, which resumes; the losses it prints are those of a clear run in this process."""
    files, commands = quickstart()
    port = str(free_port())
    for name, code in files.items():
        (tmp_path / name).write_text(code.replace("8765", port))
    worker, outputs = None, []
    try:
        for command in commands[1:]:
            args = shlex.split(command.replace("8765", port))
            if args[:2] == ["veilml", "worker"]:
                args = [str(tmp_path / a) if a.startswith("quickstart/") else a for a in args[2:]]
                port_at = args.index("--port")
                worker = CLIWorker(tmp_path, *args[:port_at], *args[port_at + 2 :], port=int(port)).wait_ready()
                continue
            done = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
            outputs.append(done)
    finally:
        if worker is not None:
            worker.kill()
    assert "resuming from quickstart/run/checkpoint-2 (step 2 of 4)" in outputs[2].stderr
    assert "resuming" not in outputs[1].stderr
    printed = re.findall(r"step (\d+): loss ([0-9.]+)", outputs[2].stdout)
    reference = LoraTrainer(
        tiny_gpt2(seed=0),
        executor=local_executor(remote_linear_weights(tiny_gpt2(seed=0)), "clear"),
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        progress=False,
    )
    reference.train(make_batches(load_corpus("train"), seq_len=64, batch_size=1))
    assert printed == [(str(step), f"{loss:.4f}") for step, loss in losses(reference)]
    assert "at step 4 of 4" in outputs[2].stdout
    assert (tmp_path / "quickstart" / "adapters" / "adapter_model.safetensors").is_file()
