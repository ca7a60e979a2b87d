"""Private LoRA fine-tuning: the cost of the encrypted linear layers, measured side by side.

    .venv/bin/python benchmarks/lora.py [--shapes 64 256 1024 2048] [--backends clear bfv concrete glwe]

1. Per backend and square shape d: one row (one token) of ``x @ W`` with W (d, d), 8-bit inputs
   and weights: server time, client encrypt / decrypt time, bytes on the wire each way, evaluation
   key bytes, and the worker's one-off setup (compilation) time.
2. One full training step of the tiny GPT-2 model (batch 4 x 32 tokens) per backend, every base
   matmul going through the backend (in-process worker), against float training.
3. Training steps through a real ``veilml worker`` process on loopback: the tiny GPT-2 (2 layers, 64 wide)
   at 1 x 64 tokens per step with ``bfv`` and ``concrete`` (the ratios), at 8 x 64 tokens with ``bfv``, and
   one step of a SmolLM2-135M-shaped model (random weights, its dimensions) with ``bfv``: time, the
   client's encrypt / decrypt time, bytes each way, evaluation-key bytes, the worker's peak memory.
4. The share of weights and of linear-layer FLOPs that stay on the client, for the tiny model and
   for SmolLM2-135M's architecture (from its configuration; no weights needed).

Writes ``benchmarks/results/lora.json`` and ``benchmarks/results/lora.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_row(backend_name: str, d: int, seed: int = 0) -> dict:
    """One token through a (d, d) layer: times and bytes of the second request of the session (its steady state),
    and the bytes of the first answer (``bfv``'s carries the session's hint, the results' second polynomials)."""
    from veilml.linear import get_backend

    rng = np.random.default_rng(seed)
    matrix = rng.integers(-127, 128, size=(d, d))
    x = rng.integers(0, 256, size=(1, d))
    backend = get_backend(backend_name)
    start = time.perf_counter()
    server = backend.server(matrix, 8)
    setup_time = time.perf_counter() - start
    session = backend.session()
    start = time.perf_counter()
    keys = session.register("m", server.spec, server.setup())
    keygen_time = time.perf_counter() - start
    first_answer = server.run(session.encrypt("m", x), keys)
    session.decrypt("m", first_answer)  # the session keeps what the first answer brings (bfv: the hint)
    start = time.perf_counter()
    ciphertext = session.encrypt("m", x)
    encrypt_time = time.perf_counter() - start
    start = time.perf_counter()
    result = server.run(ciphertext, keys)
    run_time = time.perf_counter() - start
    start = time.perf_counter()
    product = session.decrypt("m", result)
    decrypt_time = time.perf_counter() - start
    exact = x @ matrix
    return {
        "backend": backend_name,
        "d": d,
        "setup_s": setup_time,
        "keygen_s": keygen_time,
        "encrypt_s": encrypt_time,
        "run_s": run_time,
        "decrypt_s": decrypt_time,
        "bytes_up": len(ciphertext),
        "bytes_down": len(result),
        "first_bytes_down": len(first_answer),
        "evaluation_key_bytes": len(keys),
        "max_abs_error": int(np.abs(product - exact).max()),
        "max_abs_value": int(np.abs(exact).max()),
    }


def training_steps(backends: list[str], steps: int = 1) -> list[dict]:
    """Seconds per training step of the tiny model (1 layer, 32 wide, 8 tokens), float and per backend."""
    from lora_measures import time_training_step

    return [time_training_step(backend, steps=steps, seq_len=8, batch_size=1) for backend in [None, *backends]]


def glwe_check(steps: int) -> dict:
    from lora_measures import glwe_steps_against_clear

    return glwe_steps_against_clear(steps)


def worker_steps(smollm2_tokens: tuple[int, int] | None) -> list[dict]:
    """Training steps through ``veilml worker`` processes (see the module docstring, item 3)."""
    import tempfile

    from lora_measures import smollm2_shaped, worker_training_step

    from veilml.models.lora import tiny_gpt2

    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for backend in ("bfv", "concrete"):
            print(f"worker step: tiny GPT-2, 1x64 tokens, {backend} ...", file=sys.stderr, flush=True)
            rows.append(worker_training_step(backend, tiny_gpt2, directory, seq_len=64, batch_size=1))
        print("worker step: tiny GPT-2, 8x64 tokens, bfv ...", file=sys.stderr, flush=True)
        rows.append(worker_training_step("bfv", tiny_gpt2, directory, seq_len=64, batch_size=8))
        rows[-1]["model"] = rows[0]["model"] = rows[1]["model"] = "tiny GPT-2 (2 layers, 64 wide)"
    if smollm2_tokens:
        with tempfile.TemporaryDirectory() as directory:
            batch, seq = smollm2_tokens
            print(f"worker step: SmolLM2-135M-shaped, {batch}x{seq} tokens, bfv ...", file=sys.stderr, flush=True)
            row = worker_training_step("bfv", smollm2_shaped, directory, seq_len=seq, batch_size=batch, warmup=False)
            rows.append({**row, "model": "SmolLM2-135M-shaped (random weights)"})
    return rows


def worker_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | backend | tokens | s / step | client encrypt (s) | client decrypt (s) | worker round trips (s) | up | down "
        "| eval. keys | first step (s) | worker peak memory | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['tokens_per_step']} | {r['seconds_per_step']:.2f} | {r['client_encrypt_s']:.2f} | "
            f"{r['client_decrypt_s']:.2f} | {r['worker_round_trips_s']:.2f} | {human(r['bytes_up'])} | {human(r['bytes_down'])} | "
            f"{human(r['evaluation_key_bytes'])} | {r['first_step_s']:.1f} | {human(r['worker_peak_rss_bytes'])} | {r['loss']:.4f} |"
        )
    bfv, concrete = rows[0], rows[1]
    time_ratio = concrete["seconds_per_step"] / bfv["seconds_per_step"]
    bytes_ratio = (concrete["bytes_up"] + concrete["bytes_down"]) / (bfv["bytes_up"] + bfv["bytes_down"])
    lines += [
        "",
        f"Same tiny GPT-2 step (1x64 tokens) through a worker process: bfv {bfv['seconds_per_step']:.2f} s against concrete "
        f"{concrete['seconds_per_step']:.2f} s (**{time_ratio:.0f}x faster**), {human(bfv['bytes_up'] + bfv['bytes_down'])} "
        f"against {human(concrete['bytes_up'] + concrete['bytes_down'])} on the wire (**1/{bytes_ratio:.0f} of the bytes**); "
        f"losses {bfv['loss']:.6f} and {concrete['loss']:.6f} (both exact: the same integers).",
        "",
        "*s / step* is one `LoraTrainer.train` call of one step, the Trainer's set-up (about half a second) included; `benchmarks/lora_scale.py` times the steps alone (`benchmarks/results/lora_scale*.md`). The SmolLM2-shaped step is the session's first (its hints included).",
    ]
    return lines


def client_share() -> list[dict]:
    from lora_measures import client_share_of_model

    return client_share_of_model()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def matmul_table(rows: list[dict]) -> str:
    lines = [
        "| backend | d | worker setup (s) | encrypt (s) | worker run (s) | decrypt (s) | up | down | first answer | eval. keys | max abs error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['d']} | {r['setup_s']:.2f} | {r['encrypt_s']:.3f} | {r['run_s']:.3f} | {r['decrypt_s']:.3f} | "
            f"{human(r['bytes_up'])} | {human(r['bytes_down'])} | {human(r['first_bytes_down'])} | {human(r['evaluation_key_bytes'])} | "
            f"{r['max_abs_error']} (of {r['max_abs_value']:.2e}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=[64, 256, 1024, 2048])
    parser.add_argument("--backends", nargs="+", default=["clear", "bfv", "concrete", "glwe"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-worker", action="store_true", help="no training steps through worker processes")
    parser.add_argument(
        "--smollm2-tokens", type=int, nargs=2, default=[1, 32], metavar=("BATCH", "SEQ"), help="0 0: no SmolLM2 step"
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for backend in args.backends:
        for d in args.shapes:
            print(f"matmul {backend} d={d} ...", file=sys.stderr, flush=True)
            rows.append(matmul_row(backend, d))
    training = [] if args.skip_training else training_steps(args.backends)
    glwe = glwe_check(3) if "glwe" in args.backends and not args.skip_training else None
    workers = [] if args.skip_worker else worker_steps(tuple(args.smollm2_tokens) if all(args.smollm2_tokens) else None)
    shares = client_share()
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    (RESULTS / "lora.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "matmul": rows,
                "training_step": training,
                "glwe_steps": glwe,
                "worker_steps": workers,
                "client_share": shares,
            },
            indent=2,
        )
        + "\n"
    )
    text = [
        "# Private LoRA: encrypted linear layers\n",
        f"`python benchmarks/lora.py {' '.join(sys.argv[1:])}` on {machine['cpu_count']} cores ({machine['platform']}), one run.\n",
        "## One token through a (d, d) layer, 8-bit inputs and weights\n",
        "The session's second request (times and bytes); *first answer*: the bytes of the first, which for `bfv` "
        "carries the session's hint (the results' second polynomials, once per matrix and block shape).\n",
        matmul_table(rows),
        "",
    ]
    if training:
        text += ["## One training step of the tiny GPT-2 (every base matmul through the backend)\n"]
        text += ["| backend | seconds per step | vs float | loss | bytes up | bytes down |", "|---|---|---|---|---|---|"]
        base = training[0]["seconds_per_step"]
        for t in training:
            text.append(
                f"| {t['backend']} | {t['seconds_per_step']:.3f} | {t['seconds_per_step'] / base:.1f}x | {t['loss']:.4f} | "
                f"{human(t.get('bytes_up', 0))} | {human(t.get('bytes_down', 0))} |"
            )
        text.append("")
    if glwe:
        text += [
            "## Three training steps: glwe against clear, from the same start\n",
            f"losses clear {[round(v, 5) for v in glwe['clear']['losses']]}, "
            f"glwe {[round(v, 5) for v in glwe['glwe']['losses']]} "
            f"(largest relative difference {glwe['max_relative_loss_difference']:.2e}); "
            f"{glwe['glwe']['products']} glwe products, largest integer error {glwe['glwe']['max_abs_error']} "
            f"against a documented bound of {glwe['glwe']['max_bound']:.0f}: "
            f"{'all within' if glwe['glwe']['within_bound'] else 'NOT all within'} the bound.",
            "",
        ]
    if workers:
        text += ["## Training steps through a `veilml worker` process on loopback\n", *worker_table(workers), ""]
    text += ["## What stays on the client\n", "| model | weights on the client | linear FLOPs on the client |", "|---|---|---|"]
    for s in shares:
        text.append(f"| {s['model']} | {s['client_weight_share']:.1%} | {s['client_flop_share']:.1%} |")
    (RESULTS / "lora.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
