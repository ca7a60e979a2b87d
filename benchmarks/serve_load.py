"""Load test of ``veilml serve``: concurrent clients in a second process, every answer checked.

    .venv/bin/python benchmarks/serve_load.py [--clients 8] [--requests 5] [--workers 2]

A depth-5 tree on breast cancer (6 bits) is compiled and saved as a bundle; ``veilml serve`` runs
it in its own process on loopback. A second process starts ``--clients`` threads, each a
``RemoteModel`` with its own keys, each sending ``--requests`` one-row requests. Every decrypted
answer is compared with ``predict_integers(fhe="simulate")`` of the same row. Written to
``benchmarks/results/serve_load.json`` and ``.md``: throughput, p50 / p95 latency per request
(encrypt + HTTP + server + decrypt), key registration times, and whether any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _client_process(url: str, rows_path: str, expected_path: str, clients: int, requests: int, out: str) -> None:
    """Runs in the second process: the concurrent clients."""
    import warnings

    from veilml.quantization import QuantizationRangeWarning
    from veilml.serving.remote_model import RemoteModel

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    rows, expected = np.load(rows_path), np.load(expected_path)

    def one_client(c: int) -> dict:
        start = time.perf_counter()
        model = RemoteModel(url, retries=5)
        model.register()
        setup = time.perf_counter() - start
        latencies, wrong, failed = [], 0, 0
        for r in range(requests):
            i = (c * requests + r) % len(rows)
            t = time.perf_counter()
            try:
                got = model.predict_integers(rows[i : i + 1])
            except Exception as error:  # counted, reported
                failed += 1
                print(f"client {c} request {r}: {error}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - t)
            wrong += int(not np.array_equal(got[0], expected[i]))
        model.close()
        return {"setup_s": setup, "latencies_s": latencies, "wrong": wrong, "failed": failed}

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    Path(out).write_text(json.dumps({"wall_s": time.perf_counter() - start, "clients": results}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="the server's FHE threads")
    args = parser.parse_args()

    import warnings

    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    import veilml
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.25, random_state=0)
    model = veilml.DecisionTreeClassifier(max_depth=5, n_bits=6, random_state=0).fit(X_train, y_train)
    model.compile(X_train)
    work = Path(tempfile.mkdtemp(prefix="veilml-load-"))
    bundle = model.save(work / "bundle")
    rows = X_test[:20]
    np.save(work / "rows.npy", rows)
    np.save(work / "expected.npy", model.predict_integers(rows, "simulate"))

    port = 8600 + os.getpid() % 300
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).parent / "veilml"
    log = open(work / "serve.log", "wb")
    server = subprocess.Popen(
        [
            str(script),
            "serve",
            str(bundle),
            "--state",
            str(work / "state"),
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"veilml serve did not start:\n{(work / 'serve.log').read_text()}")
            time.sleep(0.2)
        out = work / "clients.json"
        call = (url, str(work / "rows.npy"), str(work / "expected.npy"), args.clients, args.requests, str(out))
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import serve_load; serve_load._client_process{call!r}"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    measured = json.loads(out.read_text())
    latencies = np.array([t for c in measured["clients"] for t in c["latencies_s"]])
    answered = len(latencies)
    total = args.clients * args.requests
    wrong = sum(c["wrong"] for c in measured["clients"])
    failed = sum(c["failed"] for c in measured["clients"])
    setups = np.array([c["setup_s"] for c in measured["clients"]])
    record = {
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min_end": os.getloadavg()[0]},
        "model": "DecisionTreeClassifier(max_depth=5, n_bits=6) on breast cancer, report: " + str(model.report_),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "server_workers": args.workers,
        "requests": total,
        "answered": answered,
        "correct": answered - wrong,
        "failed": failed,
        "wall_s": measured["wall_s"],
        "throughput_requests_per_s": answered / measured["wall_s"],
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "client_setup_median_s": float(np.median(setups)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "serve_load.md").write_text(
        "# veilml serve under load\n\n"
        f"`{record['command']}` on {record['machine']['cpus']} cores ({record['machine']['platform']}). {record['model']}.\n\n"
        f"A second process runs {args.clients} clients at once (threads, each a `RemoteModel` with its own keys), "
        f"each sending {args.requests} one-row requests; the server runs FHE work in {args.workers} threads.\n\n"
        "| requests | answered | correct (== simulate) | failed | wall (s) | throughput (requests/s) | p50 latency (s) | p95 latency (s) | client setup, median (s) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {total} | {answered} | {answered - wrong} | {failed} | {record['wall_s']:.1f} | {record['throughput_requests_per_s']:.2f} | "
        f"{record['latency_p50_s']:.2f} | {record['latency_p95_s']:.2f} | {record['client_setup_median_s']:.1f} |\n\n"
        "Latency per request is encrypt + upload + queue + server run + download + decrypt; client setup is fetching the "
        "bundle, key generation and uploading the evaluation keys.\n"
    )
    print(json.dumps(record, indent=1))
    return 0 if answered == total and wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
