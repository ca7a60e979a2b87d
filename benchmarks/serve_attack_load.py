"""Load test under attack: 8 honest clients against ``veilml serve`` and ``veilml worker --backend bfv`` at once,
first alone, then beside one attacker of each kind (issue 21).

    .venv/bin/python benchmarks/serve_attack_load.py [--seconds 60]

Both services run as their own processes on loopback with their default limits, except a run timeout
of 30 s and an upload timeout of 20 s (so that maximal batches and slow uploads end within a phase),
and an access-token file that gives every client its own token (quotas and fair turns are per client). Clients run in
other processes:

- honest: 4 tree clients (``RemoteModel``, one row per request, each answer compared with
  ``predict_integers(fhe="simulate")``) and 4 LoRA clients (``HTTPTransport`` + ``EncryptedLinearExecutor``,
  ``bfv``, 8 rows of a 576 x 1536 matrix per request, each answer compared bit for bit with the
  ``clear`` backend's);
- attackers (second phase): a **hostile plan** (bfv requests with the (1, 2048, 1) block plan), **maximal
  tree batches** (256 rows per request, the server's limit, sent again and again), **slow uploads**
  (4 connections per service announcing the largest body and sending a byte a second) and a **key-store
  flood** (forged tree key sets, and new worker sessions, as fast as they are answered).

Each phase runs ``--seconds`` of closed-loop requests after a warm-up. Written to
``benchmarks/results/serve_attack_load.json`` and ``.md``: per service and phase, requests, failures,
wrong answers, throughput, p50 / p95 latency, and what each attacker got back.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LAYER = "model.layers.0.mlp.up_proj"
SHAPE = (576, 1536)
HONEST = [f"tree-{i}" for i in range(4)] + [f"lora-{i}" for i in range(4)]
ATTACKERS = ["plan", "batch", "slow", "flood"]


def _token(name: str) -> str:
    return f"{name}-" + "t" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer /health within {timeout} s")


# -- honest clients ---------------------------------------------------------------------------------------


def _honest(role: str, name: str, url: str, data: str, stop_at: float, start_at: float, out: str) -> None:
    """One honest client: closed-loop requests, each answer checked; latencies of those started after start_at."""
    import warnings

    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    arrays = np.load(data)
    records = []
    if role == "tree":
        from veilml.serving.remote_model import RemoteModel

        rows, expected = arrays["rows"], arrays["expected"]
        model = RemoteModel(url, access_token=_token(name), retries=8)
        model.predict_integers(rows[:1])  # registers keys, warms the server's child

        def request(i: int) -> bool:
            return bool(np.array_equal(model.predict_integers(rows[i : i + 1])[0], expected[i]))
    else:
        from veilml.linear import EncryptedLinearExecutor, LocalTransport, Worker
        from veilml.linear.transport import HTTPTransport

        weight, x = arrays["weight"], arrays["x"]
        executor = EncryptedLinearExecutor(HTTPTransport(url, access_token=_token(name)), backend="bfv")
        reference = EncryptedLinearExecutor(LocalTransport(Worker({LAYER: weight}, backend="clear")), backend="clear")
        expected = [reference.forward(LAYER, x[i : i + 8]) for i in range(0, len(x), 8)]
        executor.forward(LAYER, x[:8])

        def request(i: int) -> bool:
            j = i % len(expected)
            return bool(np.array_equal(executor.forward(LAYER, x[8 * j : 8 * j + 8]), expected[j]))

    while time.time() < start_at:
        time.sleep(0.05)
    i = 0
    while time.time() < stop_at:
        t = time.perf_counter()
        try:
            ok, error = request(i), None
        except Exception as exc:  # counted and reported
            ok, error = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        records.append({"latency_s": time.perf_counter() - t, "correct": ok, "error": error})
        i += 1
    Path(out).write_text(json.dumps(records))


# -- attackers --------------------------------------------------------------------------------------------


def _count(outcomes: Counter, response) -> None:
    outcomes[str(response.status_code)] += 1


def _attack_batch(url: str, bundle: str, rows: np.ndarray, stop_at: float, outcomes: Counter) -> None:
    import httpx

    from veilml.serving.bundle import ModelClient

    client = ModelClient(bundle)
    headers = {"authorization": f"Bearer {_token('batch')}"}
    answer = httpx.post(url + "/keys", content=client.evaluation_keys(), headers=headers, timeout=120).json()
    headers |= {"x-veilml-key-id": answer["key_id"], "x-veilml-key-secret": answer["secret"]}
    batch = client.encrypt(np.resize(rows, (256, rows.shape[1])))  # encrypted once, sent again and again
    while time.time() < stop_at:
        try:
            _count(outcomes, httpx.post(url + "/predict", content=batch, headers=headers, timeout=stop_at - time.time() + 5))
        except httpx.TransportError:
            outcomes["transport-error"] += 1


def _attack_flood(url: str, worker_url: str, bundle: str, stop_at: float, outcomes: Counter) -> None:
    import httpx

    from veilml.runtime.envelope import key_id, pack_envelope, unpack_envelope
    from veilml.serving.bundle import ModelClient

    real = unpack_envelope(ModelClient(bundle).evaluation_keys(), "evaluation-keys")
    headers = {"authorization": f"Bearer {_token('flood')}"}
    i = 0
    while time.time() < stop_at:
        payload = bytearray(real.payload)
        payload[len(payload) // 2 + 8 * (i % 100_000)] ^= 0xFF
        payload[len(payload) // 3] = i % 256
        forged = pack_envelope("evaluation-keys", bytes(payload), fingerprint=real.fingerprint, key_id=key_id(bytes(payload)))
        _count(outcomes, httpx.post(url + "/keys", content=forged, headers=headers, timeout=60))
        for _ in range(20):  # new worker sessions
            outcomes["session-" + str(httpx.post(worker_url + "/sessions", headers=headers, timeout=30).status_code)] += 1
        i += 1


def _attack_plan(worker_url: str, stop_at: float, outcomes: Counter, x: np.ndarray) -> None:
    import httpx

    from veilml.linear.base import pack_frames, unpack_frames
    from veilml.linear.bfv import BFVBackend
    from veilml.linear.transport import HTTPTransport

    transport = HTTPTransport(worker_url, access_token=_token("plan"))
    session_id = transport.open_session()
    spec = transport.layers()[LAYER]
    setup = transport.setup(LAYER, "forward")
    session = BFVBackend().session()
    from veilml.linear.base import MatrixSpec

    matrix = MatrixSpec(spec.d_in, spec.d_out, spec.input_bits)
    transport.register(session_id, LAYER, "forward", session.register(LAYER, matrix, setup))
    honest = session.encrypt(LAYER, np.clip(np.round(x[:8] * 50 + 128), 0, 255).astype(np.int64))
    frames = unpack_frames(honest)
    header = json.loads(frames[0])
    header["plan"] = [1, 2048, 1, header["plan"][3]]  # the attack's plan: 58x the honest cost before
    hostile = pack_frames([json.dumps(header).encode(), *frames[1:]])
    session, secret = transport._sessions[session_id]
    url = f"{worker_url}/sessions/{session}/layers/{LAYER}/forward/run"
    headers = {"authorization": f"Bearer {_token('plan')}", "x-veilml-session-secret": secret}
    while time.time() < stop_at:
        _count(outcomes, httpx.post(url, content=hostile, headers=headers, timeout=60))


def _attack_slow(endpoints: list[tuple[str, str]], stop_at: float, outcomes: Counter) -> None:
    """4 connections per (url, path), each announcing 200 MiB and sending a byte a second; reopened when answered."""
    targets = []
    for url, path in endpoints:
        host, port = url.removeprefix("http://").split(":")
        targets += [(host, int(port), path)] * 4
    sockets: dict[int, socket.socket] = {}

    def open_one(i: int) -> None:
        host, port, path = targets[i]
        s = socket.create_connection((host, port))
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_token('slow')}\r\n"
            f"content-length: {200 * 2**20}\r\n\r\n".encode()
        )
        s.setblocking(False)
        sockets[i] = s

    for i in range(len(targets)):
        open_one(i)
    while time.time() < stop_at:
        for i, s in list(sockets.items()):
            try:
                s.send(b"\0")
                if s.recv(64):
                    outcomes["answered"] += 1
                    s.close()
                    open_one(i)
            except BlockingIOError:
                pass
            except OSError:
                outcomes["closed"] += 1
                s.close()
                open_one(i)
        time.sleep(1.0)
    for s in sockets.values():
        s.close()


def _attackers(serve_url: str, worker_url: str, bundle: str, data: str, stop_at: float, out: str) -> None:
    import warnings

    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    arrays = np.load(data)
    outcomes = {name: Counter() for name in ATTACKERS}
    slow_targets = [(serve_url, "/keys"), (worker_url, f"/sessions/{'0' * 32}/keys")]
    plans = {
        "plan": (_attack_plan, (worker_url, stop_at, outcomes["plan"], arrays["x"])),
        "batch": (_attack_batch, (serve_url, bundle, arrays["rows"], stop_at, outcomes["batch"])),
        "slow": (_attack_slow, (slow_targets, stop_at, outcomes["slow"])),
        "flood": (_attack_flood, (serve_url, worker_url, bundle, stop_at, outcomes["flood"])),
    }

    def guarded(name: str) -> None:
        target, target_args = plans[name]
        try:
            target(*target_args)
        except Exception as exc:  # an attacker that stops is reported, not fatal
            outcomes[name][f"stopped: {type(exc).__name__}: {str(exc)[:120]}"] += 1

    threads = [threading.Thread(target=guarded, args=(name,)) for name in ATTACKERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out).write_text(json.dumps({k: dict(v) for k, v in outcomes.items()}))


# -- the run ----------------------------------------------------------------------------------------------


def _phase(name: str, urls: dict[str, str], bundle: str, data: str, seconds: float, attack: bool, tmp: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    warm = 40.0  # registration, key generation, first requests
    start_at = time.time() + warm
    stop_at = start_at + seconds
    processes = []
    for client in HONEST:
        role = client.split("-")[0]
        url = urls["serve"] if role == "tree" else urls["worker"]
        out = tmp / f"{name}-{client}.json"
        processes.append(context.Process(target=_honest, args=(role, client, url, data, stop_at, start_at, str(out))))
    if attack:
        processes.append(
            context.Process(
                target=_attackers,
                args=(urls["serve"], urls["worker"], bundle, data, stop_at, str(tmp / f"{name}-attackers.json")),
            )
        )
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    result = {"seconds": seconds, "services": {}}
    for role, service in (("tree", "veilml serve"), ("lora", "veilml worker (bfv)")):
        records = []
        for client in HONEST:
            if client.startswith(role):
                path = tmp / f"{name}-{client}.json"
                records += (
                    json.loads(path.read_text()) if path.exists() else [{"latency_s": 0, "correct": False, "error": "no result"}]
                )
        latencies = np.array([r["latency_s"] for r in records if r["error"] is None])
        result["services"][service] = {
            "requests": len(records),
            "failed": sum(r["error"] is not None for r in records),
            "wrong": sum(r["error"] is None and not r["correct"] for r in records),
            "errors": sorted({r["error"] for r in records if r["error"]})[:5],
            "throughput_per_s": len(latencies) / seconds,
            "p50_s": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p95_s": float(np.percentile(latencies, 95)) if len(latencies) else None,
        }
    if attack:
        result["attackers"] = json.loads((tmp / f"{name}-attackers.json").read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    import warnings

    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from veilml import DecisionTreeClassifier
    from veilml.models.lora.weights import save_remote_weights
    from veilml.quantization import QuantizationRangeWarning
    from veilml.runtime.client import write_private_file

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    tmp = Path(tempfile.mkdtemp(prefix="veilml-attack-load-"))
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.25, random_state=0)
    model = DecisionTreeClassifier(max_depth=5, n_bits=6, random_state=0).fit(X_train, y_train).compile(X_train)
    bundle = str(model.save(tmp / "bundle"))
    rng = np.random.default_rng(0)
    weight = rng.normal(size=SHAPE).astype(np.float32) * 0.05
    save_remote_weights({LAYER: (weight, None)}, tmp / "w.safetensors")
    data = str(tmp / "data.npz")
    np.savez(
        data, rows=X_test, expected=model.predict_integers(X_test, "simulate"), weight=weight, x=rng.normal(size=(64, SHAPE[0]))
    )
    tokens = write_private_file(tmp / "tokens", "".join(f"{n} {_token(n)}\n" for n in HONEST + ATTACKERS).encode())

    veilml = str(Path(sys.executable).parent / "veilml")
    ports = {"serve": _free_port(), "worker": _free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    logs = {k: open(tmp / f"{k}.log", "wb") for k in ports}
    limits = ["--access-token-file", str(tokens), "--run-timeout", "30", "--upload-timeout", "20"]
    commands = {
        "serve": [veilml, "serve", bundle, "--state", str(tmp / "state"), *limits, "--port", str(ports["serve"])],
        "worker": [veilml, "worker", "--weights", str(tmp / "w.safetensors"), *limits, "--port", str(ports["worker"])],
    }
    servers = {k: subprocess.Popen(c, stdout=logs[k], stderr=subprocess.STDOUT) for k, c in commands.items()}
    try:
        for k, p in servers.items():
            _wait_health(urls[k], p)
        load = os.getloadavg()
        quiet = _phase("alone", urls, bundle, data, args.seconds, False, tmp)
        attacked = _phase("attacked", urls, bundle, data, args.seconds, True, tmp)
        load_after = os.getloadavg()
    finally:
        for p in servers.values():
            p.kill()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load, "load_after": load_after},
        "alone": quiet,
        "attacked": attacked,
        "p95_ratio": {
            s: attacked["services"][s]["p95_s"] / quiet["services"][s]["p95_s"]
            for s in quiet["services"]
            if quiet["services"][s]["p95_s"]
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_attack_load.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Honest clients with and without attackers (`benchmarks/serve_attack_load.py`)",
        "",
        f"{os.cpu_count()} cores, load average {load[0]:.2f} before, {load_after[0]:.2f} after; {args.seconds:g} s per phase;"
        " 4 tree clients (1 row per request) and 4 bfv clients (8 x 576 @ 576 x 1536) in other processes;"
        " both services with their default limits except `--run-timeout 30 --upload-timeout 20`, one token per client.",
        "",
        "| service | phase | requests | failed | wrong | throughput /s | p50 s | p95 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, res in (("alone", quiet), ("with attackers", attacked)):
        for service, r in res["services"].items():
            p50 = f"{r['p50_s']:.3f}" if r["p50_s"] is not None else "-"
            p95 = f"{r['p95_s']:.3f}" if r["p95_s"] is not None else "-"
            lines.append(
                f"| {service} | {phase} | {r['requests']} | {r['failed']} | {r['wrong']} | {r['throughput_per_s']:.2f} | {p50} | {p95} |"
            )
    lines += ["", "p95 with attackers / alone: " + ", ".join(f"{s} {v:.2f}x" for s, v in result["p95_ratio"].items()), ""]
    lines += ["What each attacker got back (HTTP status: count):", ""]
    lines += [f"- {name}: {json.dumps(counts)}" for name, counts in attacked["attackers"].items()]
    (RESULTS / "serve_attack_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
