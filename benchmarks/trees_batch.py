"""Scoring whole tables: the batched (leveled BFV) path against the TFHE path and Concrete-ML 1.9.

    .venv/bin/python benchmarks/trees_batch.py [--cases dt_cancer rf_cancer ...] [--batches 1] [--workers 2]

The cases are ``benchmarks/trees.py``'s (the same models, data sets and 6 bits). For each, a veilml estimator is
fitted and a table of ``--batches`` full batches is drawn from the test split (rows repeated), then scored as
:class:`~veilml.models.trees.batch.BatchScorer` does with ``encoding="auto"``, one step after the other: the
client's key generation, its encryption of every input bit of every batch (in ``--workers`` threads), the server's evaluation
(the trees cut into ``--workers`` groups evaluated at once, one process each, their outputs summed encrypted,
then the mask, re-randomization and flooding), the client's decryption. Every row's
scores are compared with the estimator's ``fhe="disable"`` scores. Reported: rows per second end to end,
bytes up and down per row, the client's public keys, and the split of the time.

The TFHE path and Concrete-ML 1.9 are NOT rerun here: their batch throughputs are read from
``benchmarks/results/trees.json`` (the last ``benchmarks/trees.py`` run), or ``--tfhe NAME``'s (``results/NAME.json``:
``benchmarks/trees.py --output NAME`` run just before, for the three paths side by side in one session).

Writes ``benchmarks/results/trees_batch.json`` and ``benchmarks/results/trees_batch.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from trees import CASES, MODELS, load_case_data  # noqa: E402

TFHE_RESULTS = "trees"  # the benchmarks/trees.py results the TFHE path's and Concrete-ML's figures come from (--tfhe)
DEFAULT_CASES = ["dt_cancer", "rf_cancer", "xgb_cancer", "dtr_diabetes", "dt_wide", "xgb_wide", "rf_wide"]


def run_case(name: str, batches: int, workers: int, stream: int) -> dict:
    import veilml
    from veilml.models.trees.batch import BatchScorer, batch_seconds, encode_codes, part_programs
    from veilml.quantization import QuantizationRangeWarning
    from veilml.runtime.batch.seal_bfv import BatchClient, BatchServer

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    case = CASES[name]
    estimator_name, hp, _ = MODELS[case.model]
    X_train, X_test, y_train, _ = load_case_data(case)
    model = getattr(veilml, estimator_name)(n_bits=case.n_bits, **hp).fit(X_train, y_train)
    scorer = BatchScorer(model, "auto", progress=False)
    tp = scorer.tree_program = scorer.plan(10**6)  # the encoding "auto" picks for large tables
    slots = scorer.params.slots
    rows = batches * slots
    table = X_test[np.random.default_rng(0).integers(0, len(X_test), rows)]
    expected = model.predict_integers(table, "disable") @ model.fhe_model_.codec.output_combine
    codes = model.fhe_model_.codec.input_quantizer.quantize(table)
    timings = {"keygen_s": 0.0, "pool_start_s": 0.0, "encrypt_s": 0.0, "server_s": 0.0, "decrypt_s": 0.0}
    start = time.perf_counter()
    client = BatchClient(scorer.params)
    timings["keygen_s"] = time.perf_counter() - start
    start = time.perf_counter()  # once per process, like an import: numba loads the kernels, the NTT tables are built
    client.encrypt(np.zeros((1, 1), np.uint8))
    first_use = time.perf_counter() - start
    server = BatchServer(scorer.params, client.relin_keys, client.public_key)
    programs = part_programs(model.ensemble_, scorer.leaves.values, tp.n_bits, tp.encoding, workers, tp.split)
    up = down = 0
    budget = 10**9
    parts = []
    with contextlib.ExitStack() as stack:
        pool = None
        start = time.perf_counter()
        spawn = multiprocessing.get_context("spawn")
        if len(programs) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(len(programs) - 1, mp_context=spawn))
            pool.submit(int).result()  # started
        timings["pool_start_s"] = time.perf_counter() - start
        for first in range(0, rows, slots):
            batch = codes[first : first + slots]
            start = time.perf_counter()
            inputs = client.encrypt(encode_codes(batch, tp.encoding, tp.n_bits), workers)
            timings["encrypt_s"] += time.perf_counter() - start
            start = time.perf_counter()
            kept: list[bytes] = []  # the outputs before release: their noise budget (the client's secret key, here)
            outputs = server.evaluate_parts(programs, inputs, len(batch), pool, keep=kept.append)
            timings["server_s"] += time.perf_counter() - start
            start = time.perf_counter()
            parts.append(client.decrypt(outputs, len(batch)).T)
            timings["decrypt_s"] += time.perf_counter() - start
            budget = min([budget, *(client.noise_budget(c) for c in kept)])
            up += sum(len(c) for c in inputs)
            down += sum(len(c) for c in outputs)
    got = np.concatenate(parts) @ scorer.combine
    total = sum(timings.values())
    streamed = {}
    if stream > 1:  # a table of several batches through BatchScorer itself: encryption overlaps the server's work
        big = X_test[np.random.default_rng(1).integers(0, len(X_test), stream * slots)]
        scorer = BatchScorer(model, tp.encoding.value, progress=False, workers=workers)
        start = time.perf_counter()
        scores = scorer.integers(big)
        seconds = time.perf_counter() - start
        exact = model.predict_integers(big, "disable") @ model.fhe_model_.codec.output_combine
        streamed = {
            "stream_rows": len(big),
            "stream_s": seconds,
            "stream_rows_per_s": len(big) / seconds,
            "stream_all_rows_equal": bool(np.array_equal(scores, exact)),
        }
    tfhe = json.loads((RESULTS / f"{TFHE_RESULTS}.json").read_text())["cases"].get(name, {}).get("sides", {})
    return {
        "case": name,
        "title": case.title,
        "encoding": tp.encoding.value,
        "params": scorer.params.to_dict(),
        "depth": tp.program.depth,
        "products": tp.program.n_products,
        "server_processes": len(programs),
        "input_ciphertexts": tp.program.n_inputs,
        "rows": rows,
        **timings,
        "total_s": total,
        "rows_per_s": rows / total,
        "first_use_s": first_use,
        "bytes_up_per_row": up / rows,
        "bytes_down_per_row": down / rows,
        "budget_before_flooding_bits": budget,
        "public_key_bytes": len(client.public_key),
        "relin_key_bytes": len(client.relin_keys),
        "estimated_s": {e.value: batch_seconds(p, rows) for e, p in scorer.programs.items()},
        "equal_to_disable_rows": int((got == expected).all(axis=1).sum()),
        "all_rows_equal": bool(np.array_equal(got, expected)),
        "tfhe_rows_per_s": tfhe.get("veilml", {}).get("batch_throughput_rows_per_s"),
        "tfhe_latency_s": tfhe_latency(name),
        "concrete_ml_rows_per_s": tfhe.get("Concrete-ML 1.9", {}).get("batch_throughput_rows_per_s"),
        "tfhe_bytes_up_per_row": tfhe.get("veilml", {}).get("bytes_up_per_row"),
        **streamed,
        "load_average": os.getloadavg(),
    }


def tfhe_latency(case: str) -> float | None:
    """The TFHE path's median latency per row of ``case`` in the ``benchmarks/trees.py`` results."""
    sides = json.loads((RESULTS / f"{TFHE_RESULTS}.json").read_text())["cases"].get(case, {}).get("sides", {})
    return sides.get("veilml", {}).get("execute_latency_median_s")


def crossover_rows(r: dict) -> float | None:
    """Rows from which one batch (its measured seconds, keys included) beats the TFHE path row by row."""
    latency = r.get("tfhe_latency_s") or tfhe_latency(r["case"])
    return None if latency is None else r["total_s"] / latency


def streamed(r: dict) -> str:
    if "stream_rows" not in r:
        return "-"
    equal = "yes" if r["stream_all_rows_equal"] else "NO"
    return f"{r['stream_rows']}, **{r['stream_rows_per_s']:.0f}**, {equal}"


def table(results: list[dict]) -> str:
    lines = [
        "| case | encoding, N × data primes, depth, products | rows | rows/s end to end "
        "| keygen / encrypt / server / decrypt (s) (first use of the kernels, once per process) "
        "| up / down per row | public + relin. keys | every row = disable | budget left before flooding (bits) "
        f"| TFHE path rows/s ({TFHE_RESULTS}.json) "
        f"| Concrete-ML rows/s ({TFHE_RESULTS}.json) | crossover (rows) | streamed table: rows, rows/s, every row = disable |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tfhe = "-" if r["tfhe_rows_per_s"] is None else f"{r['tfhe_rows_per_s']:.2f}"
        cml = "-" if r["concrete_ml_rows_per_s"] is None else f"{r['concrete_ml_rows_per_s']:.2f}"
        rows = crossover_rows(r)
        crossover = "-" if rows is None else f"{rows:.0f}"
        lines.append(
            f"| {r['case']} | {r['encoding']}, {r['params']['poly_degree']} × {len(r['params']['coeff_bits']) - 1} "
            f"× {r['params']['coeff_bits'][0]} bits, {r['depth']}, {r['products']} | {r['rows']} "
            f"| **{r['rows_per_s']:.0f}** | {r['keygen_s']:.2f} / {r['encrypt_s']:.2f} / {r['server_s']:.2f} "
            f"({r.get('server_processes', 1)} proc.) / {r['decrypt_s']:.2f} ({r.get('first_use_s', 0):.2f}) "
            f"| {r['bytes_up_per_row'] / 1024:.1f} KiB / {r['bytes_down_per_row']:.0f} B "
            f"| {(r['public_key_bytes'] + r['relin_key_bytes']) / 2**20:.1f} MiB "
            f"| {'yes' if r['all_rows_equal'] else 'NO'} ({r['equal_to_disable_rows']}/{r['rows']}) "
            f"| {r.get('budget_before_flooding_bits', '-')} | {tfhe} | {cml} | {crossover} "
            f"| {streamed(r)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--batches", type=int, default=1, help="full batches per case")
    parser.add_argument("--workers", type=int, default=2, help="server processes (the trees cut into groups)")
    parser.add_argument("--stream", type=int, default=3, help="batches of the streamed table (0: none)")
    parser.add_argument("--output", default="trees_batch")
    parser.add_argument("--tfhe", default="trees", help="the benchmarks/trees.py results (results/<tfhe>.json) to compare with")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the committed .json (no run)")
    args = parser.parse_args()
    global TFHE_RESULTS
    TFHE_RESULTS = args.tfhe
    if args.render:
        record = json.loads((RESULTS / f"{args.output}.json").read_text())
        TFHE_RESULTS = record.get("tfhe", "trees")
        write_markdown(record["machine"], record["cases"], args.output, record.get("command", ""))
        print((RESULTS / f"{args.output}.md").read_text())
        return 0
    results = []
    command = " ".join(sys.argv[1:])
    for name in args.cases:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results.append(run_case(name, args.batches, args.workers, args.stream))
        print(table(results[-1:]), file=sys.stderr, flush=True)
        machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
        (RESULTS / f"{args.output}.json").write_text(
            json.dumps({"machine": machine, "command": command, "tfhe": TFHE_RESULTS, "cases": results}, indent=1)
        )
        write_markdown(machine, results, args.output, command)
    print((RESULTS / f"{args.output}.md").read_text())
    return 0


def write_markdown(machine: dict, results: list[dict], output: str, command: str) -> None:
    loads = ", ".join(f"{r['case']} {r['load_average'][0]:.2f}" for r in results)
    text = [
        "# Scoring whole tables: the batched path\n",
        f"`python benchmarks/trees_batch.py {command}` on {machine['cpu_count']} cores "
        f"({machine['platform']}); the client's steps and the server's one after the other (no overlap), the client's "
        f"encryption in `--workers` threads (veilml's own kernels, `veilml.runtime.batch.symmetric`), the server's "
        f"trees cut into groups evaluated in that many processes at once (*proc.*), their outputs summed encrypted; "
        f"total time includes key generation and the helper processes' start, not the client kernels' first use in "
        f"this process (numba loading them, the NTT tables: shown in brackets, once per process, like an import); "
        f"load average at the end of each case: {loads}.\n",
        table(results) + "\n",
        "The TFHE path's and Concrete-ML's rows/s are their batch throughputs from "
        f"`benchmarks/results/{TFHE_RESULTS}.json` "
        f"({'run just before this one, same session' if TFHE_RESULTS != 'trees' else 'not rerun here'}). Upload: every input bit of every feature is sent (the model's comparisons stay hidden), "
        "each as a seeded ciphertext with its residues packed at the primes' bit length (`veilml.runtime.batch.upload`). "
        "*Budget left before flooding*: the least noise budget of the outputs before release (SEAL's "
        "`invariant_noise_budget`, the client's secret key); the flooding needs 48 (`FLOOD_MARGIN_BITS`). "
        "*Crossover*: the number of rows "
        "from which one batch (its measured seconds, keys included) takes less time than scoring the rows one by one "
        f"on the TFHE path at its median latency per row (`{TFHE_RESULTS}.json`); below it the TFHE path is faster. *Streamed "
        "table*: `BatchScorer.integers` on that many rows (several batches: each evaluated whole in one of `--workers` "
        "helper processes while the client encrypts the next), keys and the helpers' start included.\n",
    ]
    (RESULTS / f"{output}.md").write_text("\n".join(text))


if __name__ == "__main__":
    raise SystemExit(main())
