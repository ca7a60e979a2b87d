"""The worst request a client can send a ``bfv`` worker, against an honest request of the same rows.

    .venv/bin/python benchmarks/bfv_worst_request.py [--shape 576 1536] [--rows 8 64] [--max-rows 4096] [--before REV]

On one (d, m) matrix of 8-bit weights (SmolLM2-135M's MLP, 576 x 1536, by default), with 8-bit inputs:

1. Every block plan and every plaintext modulus a client could propose is sent to a worker: only the
   honest one (the one veilml's client derives) may be accepted.
2. Per row count, in a fresh worker subprocess: the honest request with the weight cache cold and warm,
   every variant of it that passes validation (seeds of the other PRNG type, first polynomials all zero
   or all q - 1), and the old hostile plan (1, 2048, 1) with its matching shift: CPU seconds, wall
   seconds, the request's peak memory over the worker's memory before it (VmHWM reset through
   /proc/self/clear_refs), response bytes, or the error that refused it. Then the largest request within
   the worker's limits (``--max-rows`` rows).
3. The cache-thrash experiment: a victim client sends 64-row requests, another client 8-row requests in
   between; the victim's latency alone and while they alternate.

With ``--before REV``, steps 2 (without the variants and max rows) and 3 also run against the ``bfv``
backend of commit REV (extracted with ``git archive`` into a temporary directory), for the figures before
the change. Writes ``benchmarks/results/bfv_worst_request.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INPUT_BITS = 8


def matrix(d: int, m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-127, 128, size=(d, m))


# -- the worker side: one fresh subprocess per list of requests -------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak resident set size becomes the current one (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(spec_path: str) -> None:
    """Run the requests of a spec in order on one worker-side server; print one JSON line per request."""
    import veilml
    from veilml.linear.bfv import BFVBackend

    spec = json.loads(Path(spec_path).read_text())
    server = BFVBackend().server(matrix(spec["d"], spec["m"], spec["seed"]), INPUT_BITS)
    server.setup()
    baseline = _rss()
    print(json.dumps({"veilml": veilml.__file__, "cached_rows": server.cached_rows, "baseline_rss": baseline}), flush=True)
    for request in spec["requests"]:
        ciphertext, keys = Path(request["ciphertext"]).read_bytes(), Path(request["keys"]).read_bytes()
        exact_peak = _reset_peak()
        before = _peak() if exact_peak else _rss()  # the resident memory the peak was reset to
        cpu, wall = _cpu(), time.perf_counter()
        try:
            if request.get("check_keys"):
                server.check_keys(keys)
            result, error = server.run(ciphertext, keys), None
        except Exception as caught:  # the refusal is the measurement
            result, error = b"", f"{type(caught).__name__}: {caught}"
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        record = {
            "label": request["label"],
            "cpu_s": cpu,
            "wall_s": wall,
            "peak_over_before": _peak() - before if exact_peak else None,
            "rss_before": before,
            "response_bytes": len(result),
            "error": error,
        }
        cache = getattr(server, "weight_cache", None)
        if cache is not None:
            record["cache"] = {"held": cache.held, "limit": cache.limit, "encoded": cache.encoded}
        if request.get("save"):
            Path(request["save"]).write_bytes(result)
        print(json.dumps(record), flush=True)


def run_child(src: Path, spec: dict, directory: Path, name: str) -> tuple[dict, list[dict]]:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the worker subprocess {name} failed:\n{out.stderr[-3000:]}")
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return lines[0], lines[1:]


# -- the client side -------------------------------------------------------------------------------------------


class Client:
    """veilml's client for the matrix, and the bytes of hostile variants of its requests."""

    def __init__(self, M: np.ndarray, directory: Path) -> None:
        from veilml.linear.bfv import BFVBackend

        self.M, self.directory = M, directory
        self.server = BFVBackend().server(M, INPUT_BITS)  # only for its setup: the planner's inputs
        self.session = BFVBackend().session()
        self.keys = self.session.register("m", self.server.spec, self.server.setup())
        self.keys_path = self.write("keys", self.keys)
        self.rows: dict[str, np.ndarray] = {}

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def honest(self, n: int, seed: int = 1) -> bytes:
        x = np.random.default_rng(seed + n).integers(0, 2**INPUT_BITS, size=(n, self.M.shape[0]))
        self.rows[f"{n}"] = x
        return self.session.encrypt("m", x)

    def hostile(self, n: int) -> bytes:
        """The attack's request: the plan (1, 2048, 1) with its matching shift, everything else well-formed."""
        from veilml.linear.bfv import BFVParams, Plan
        from veilml.linear.bfv.params import result_shift

        params = BFVParams.from_bytes(self.keys)
        plan = Plan(1, 2048, 1, result_shift(params, -(-self.M.shape[0] // 2048), 2048, 1, self.server.w_max))
        session = type(self.session)()
        keys = session.register("m", self.server.spec, self.server.setup())
        assert keys == self.keys
        session._plan = lambda matrix, rows: plan  # a client that proposes its own plan
        return session.encrypt("m", np.zeros((n, self.M.shape[0]), np.int64))

    def variants(self, ciphertext: bytes) -> dict[str, bytes]:
        """Requests that pass every check of the worker but hold other values than an honest client's."""
        from veilml.linear import pack_frames, unpack_frames
        from veilml.linear.bfv import BFVParams
        from veilml.linear.bfv.encoding import pack_bits

        header, first, seeds = unpack_frames(ciphertext)
        q = BFVParams.from_bytes(self.keys).coeff_modulus
        count = len(first) * 8 // q.bit_length()
        swapped = bytearray(seeds)
        swapped[::65] = bytes(3 - t for t in seeds[::65])  # blake2xb <-> shake256 expands every second polynomial
        return {
            "other PRNG type": pack_frames([header, first, bytes(swapped)]),
            "first polynomials 0": pack_frames([header, bytes(len(first)), seeds]),
            "first polynomials q-1": pack_frames([header, pack_bits(np.full(count, q - 1, np.uint64), q.bit_length()), seeds]),
        }

    def check(self, n: int, result: bytes) -> bool:
        return bool(np.array_equal(self.session.decrypt("m", result), self.rows[f"{n}"] @ self.M))


def sweep(client: Client, n: int) -> dict:
    """Every block plan whose noise fits, and every plaintext modulus, sent for n rows: what is accepted."""
    from veilml.linear import pack_frames, unpack_frames
    from veilml.linear.bfv import BFVBackend, BFVParams
    from veilml.linear.bfv.params import MAX_PLAIN_BITS, POLY_DEGREE, plain_bits_for, result_shift

    server = BFVBackend().server(client.M, INPUT_BITS)
    server.setup()
    ciphertext = client.honest(n)
    header, *frames = unpack_frames(ciphertext)
    params, (d, _) = BFVParams.from_bytes(client.keys), client.M.shape
    accepted, refused, seconds = [], 0, 0.0
    for k_t in range(12):
        for k_d in range(12 - k_t):
            n_t, n_d = 2**k_t, 2**k_d
            n_m = POLY_DEGREE // (n_t * n_d)
            shift = result_shift(params, -(-d // n_d), n_d, n_m, server.w_max)
            if shift is None:
                continue
            lying = pack_frames([json.dumps({**json.loads(header), "plan": [n_t, n_d, n_m, shift]}).encode(), *frames])
            start = time.process_time()
            try:
                server.work(lying, client.keys)
                accepted.append([n_t, n_d, n_m, shift])
            except ValueError as error:
                assert "not this worker's plan" in str(error) or "seeded ciphertexts" in str(error), error
                refused += 1
            seconds += time.process_time() - start
    bits_accepted = []
    for bits in range(plain_bits_for(d, INPUT_BITS, server.w_max), MAX_PLAIN_BITS + 1):
        try:
            server.check_keys(BFVParams(params.coeff_modulus, bits).to_bytes())
            bits_accepted.append(bits)
        except ValueError:
            pass
    return {
        "rows": n,
        "plans_tried": len(accepted) + refused,
        "plans_accepted": accepted,
        "refusal_cpu_s": seconds,
        "plain_bits_tried": MAX_PLAIN_BITS + 1 - plain_bits_for(d, INPUT_BITS, server.w_max),
        "plain_bits_accepted": bits_accepted,
    }


# -- the experiments ---------------------------------------------------------------------------------------------


def per_rows(client: Client, src: Path, n: int, code: str, directory: Path, variants: bool) -> list[dict]:
    honest = client.honest(n)
    paths = {"honest": client.write(f"honest-{n}", honest), "hostile": client.write(f"hostile-{n}", client.hostile(n))}
    requests = [
        {"label": "honest, cache cold", "ciphertext": paths["honest"], "keys": client.keys_path},
        {"label": "honest", "ciphertext": paths["honest"], "keys": client.keys_path, "save": str(directory / f"out-{code}-{n}")},
    ]
    if variants:
        for label, data in client.variants(honest).items():
            requests.append({"label": label, "ciphertext": client.write(f"{label}-{n}", data), "keys": client.keys_path})
    if code == "after" or n <= 8:  # the attack costs the old code ~0.9 CPU s and 130 MB per row: 8 rows only
        requests.append({"label": "hostile plan (1, 2048, 1)", "ciphertext": paths["hostile"], "keys": client.keys_path})
    info, records = run_child(
        src, {"d": client.M.shape[0], "m": client.M.shape[1], "seed": 0, "requests": requests}, directory, f"{code}-{n}"
    )
    correct = client.check(n, Path(directory / f"out-{code}-{n}").read_bytes())
    for record in records:
        record.update(code=code, rows=n, cached_rows=info["cached_rows"], veilml=info["veilml"])
        if record["label"] == "honest":
            record["correct"] = correct
    return records


def max_rows(client: Client, src: Path, n: int, directory: Path) -> list[dict]:
    """The largest request within the worker's limits, after a 64-row request put the shape's weights in cache."""
    warm = client.write("warm-64", client.honest(64))
    big = client.write(f"honest-{n}", client.honest(n))
    requests = [
        {"label": "honest 64 rows, cache cold", "ciphertext": warm, "keys": client.keys_path},
        {"label": f"honest {n} rows (max rows)", "ciphertext": big, "keys": client.keys_path, "save": str(directory / "out-max")},
    ]
    info, records = run_child(
        src, {"d": client.M.shape[0], "m": client.M.shape[1], "seed": 0, "requests": requests}, directory, "max"
    )
    records[-1]["correct"] = client.check(n, (directory / "out-max").read_bytes())
    for record, rows in zip(records, (64, n)):
        record.update(code="after", rows=rows, cached_rows=info["cached_rows"])
    return records


def thrash(client: Client, src: Path, code: str, directory: Path, rounds: int = 3) -> dict:
    """A victim's 64-row requests, alone and with another client's 8-row requests in between."""
    from veilml.linear.bfv import BFVBackend

    other = BFVBackend().session()  # a second client: its own key, the same public parameters
    other_keys = other.register("m", client.server.spec, client.server.setup())
    x = np.random.default_rng(5).integers(0, 256, size=(8, client.M.shape[0]))
    attacker = client.write("attacker-8", other.encrypt("m", x))
    attacker_keys = client.write("attacker-keys", other_keys)
    victim = client.write("victim-64", client.honest(64))
    requests = [{"label": "victim warm-up", "ciphertext": victim, "keys": client.keys_path}]
    requests += [{"label": "victim alone", "ciphertext": victim, "keys": client.keys_path}] * 2
    for _ in range(rounds):
        requests.append({"label": "other client", "ciphertext": attacker, "keys": attacker_keys})
        requests.append({"label": "victim alternating", "ciphertext": victim, "keys": client.keys_path})
    info, records = run_child(
        src, {"d": client.M.shape[0], "m": client.M.shape[1], "seed": 0, "requests": requests}, directory, f"thrash-{code}"
    )
    alone = [r["wall_s"] for r in records if r["label"] == "victim alone"]
    alternating = [r["wall_s"] for r in records if r["label"] == "victim alternating"]
    others = [r["wall_s"] for r in records if r["label"] == "other client"]
    peaks = [r["peak_over_before"] or 0 for r in records[1:]]
    return {
        "code": code,
        "cached_rows": info["cached_rows"],
        "victim_alone_s": float(np.median(alone)),
        "victim_alternating_s": float(np.median(alternating)),
        "slowdown": float(np.median(alternating) / np.median(alone)),
        "other_client_s": float(np.median(others)),
        "peak_over_before_max": max(peaks),
        "rss_growth": records[-1]["rss_before"] - records[1]["rss_before"],
        "cache": records[-1].get("cache"),
        "requests": records,
    }


def old_source(rev: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory / "src"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=[576, 1536], metavar=("D", "M"))
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--max-rows", type=int, default=4096, help="the worker's max_rows (0: skip)")
    parser.add_argument("--before", metavar="REV", help="also measure the bfv backend of this commit")
    parser.add_argument("--markdown", action="store_true", help="only write the markdown again from the JSON result")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.markdown:
        report = json.loads((RESULTS / "bfv_worst_request.json").read_text())
        (RESULTS / "bfv_worst_request.md").write_text(to_markdown(report))
        return None
    start, load_before = time.perf_counter(), load()
    print(f"load before: {load_before}", flush=True)
    d, m = args.shape
    with tempfile.TemporaryDirectory(prefix="veilml-bfv-bench-") as tmp:
        directory = Path(tmp)
        client = Client(matrix(d, m, 0), directory)
        sources = {"after": ROOT / "src"}
        if args.before:
            (directory / "before").mkdir()
            sources["before"] = old_source(args.before, directory / "before")
        sweeps = [sweep(client, n) for n in args.rows]
        for found in sweeps:
            print(
                f"{found['rows']} rows: {found['plans_tried']} plans tried, accepted {found['plans_accepted']}; "
                f"plaintext moduli accepted {found['plain_bits_accepted']} of {found['plain_bits_tried']}",
                flush=True,
            )
        requests, thrashes = [], []
        for code, src in sources.items():
            for n in args.rows:
                requests += per_rows(client, src, n, code, directory, variants=code == "after")
                print(f"{code} {n} rows done ({time.perf_counter() - start:.0f} s)", flush=True)
            thrashes.append(thrash(client, src, code, directory))
            print(f"{code} thrash done ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.max_rows:
            requests += max_rows(client, sources["after"], args.max_rows, directory)
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": "python benchmarks/bfv_worst_request.py " + " ".join(sys.argv[1:]),
        "shape": [d, m],
        "max_rows": args.max_rows or 4096,
        "load_before": load_before,
        "load_after": load(),
        "seconds": time.perf_counter() - start,
        "sweeps": sweeps,
        "requests": requests,
        "thrash": thrashes,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bfv_worst_request.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (RESULTS / "bfv_worst_request.md").write_text(markdown)
    print(markdown)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def to_markdown(report: dict) -> str:
    d, m = report["shape"]
    lines = [
        f"# The worst request a client can send a bfv worker ({d} x {m} weights, 8-bit)",
        "",
        f"`{report['command']}` on {report['machine']['cpu_count']} shared cores ({report['machine']['platform']}), "
        f"one run, {report['seconds']:.0f} s. Load: before `{report['load_before']}`; after `{report['load_after']}`.",
        "",
        "## Plans and parameters a client can propose",
        "",
        "| rows | block plans tried | accepted | plaintext moduli tried | accepted (bits) | CPU to refuse them all (s) |",
        "|---|---|---|---|---|---|",
    ]
    for found in report["sweeps"]:
        lines.append(
            f"| {found['rows']} | {found['plans_tried']} | {found['plans_accepted']} | {found['plain_bits_tried']} | "
            f"{found['plain_bits_accepted']} | {found['refusal_cpu_s']:.3f} |"
        )
    lines += [
        "",
        "## Requests, each in a fresh worker subprocess per row count (in order: cache cold, then warm)",
        "",
        "Memory: the request's peak resident memory over the worker's just before it. `x honest`: CPU over the honest",
        "request of the same rows with the cache warm, same code.",
        "",
        "| code | rows | request | CPU (s) | wall (s) | peak memory (MiB) | response (bytes) | x honest | outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    honest = {(r["code"], r["rows"]): r["cpu_s"] for r in report["requests"] if r["label"] == "honest"}
    for r in report["requests"]:
        base = honest.get((r["code"], r["rows"]))
        ratio = f"{r['cpu_s'] / base:.2f}" if base and not r["error"] else ""
        outcome = r["error"] if r["error"] else ("accepted" + (", decrypts to x @ W" if r.get("correct") else ""))
        if r["error"] and len(outcome) > 220:
            outcome = outcome[:220] + "…"
        lines.append(
            f"| {r['code']} | {r['rows']} | {r['label']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | "
            f"{_mb(r['peak_over_before'])} | {r['response_bytes']:,} | {ratio} | {outcome} |"
        )
    lines += ["", "## Summary", ""]
    for n in sorted({r["rows"] for r in report["requests"] if r["label"] == "honest"}):
        base = honest.get(("after", n))
        accepted = [r for r in report["requests"] if r["code"] == "after" and r["rows"] == n and not r["error"]]
        warm = [r for r in accepted if "cache cold" not in r["label"]]
        if base and warm:
            worst = max(warm, key=lambda r: r["cpu_s"])
            lines.append(
                f"- {n} rows: the costliest accepted request ({worst['label']}) takes {worst['cpu_s'] / base:.2f}x the "
                f"honest request's CPU (the bound is 1: the same plan and work; the rest is timing noise), "
                f"{max(r['response_bytes'] for r in warm):,} response bytes for every one of them."
            )
    big = [r for r in report["requests"] if "(max rows)" in r["label"]]
    per_row = honest.get(("after", 64))
    for r in big:
        lines.append(
            f"- The largest request within the limits ({r['rows']} rows; its honest plan is the only one accepted): "
            f"{r['cpu_s']:.1f} CPU s, {_mb(r['peak_over_before'])} MiB, a {r['response_bytes'] / 2**20:.0f} MiB response"
            + (f"; {r['cpu_s'] / r['rows'] / (per_row / 64):.2f}x the CPU per row of the 64-row request." if per_row else ".")
        )
    for r in report["requests"]:
        if r["code"] == "before" and r["label"].startswith("hostile") and not r["error"]:
            base = honest.get(("before", r["rows"]))
            scale = report.get("max_rows", 4096) / r["rows"]
            lines.append(
                f"- Before: the hostile plan at {r['rows']} rows took {r['cpu_s']:.1f} CPU s ({r['cpu_s'] / base:.0f}x the "
                f"honest request), {_mb(r['peak_over_before'])} MiB and a {r['response_bytes'] / 2**20:.0f} MiB response; "
                f"linear in rows, at {report.get('max_rows', 4096)} rows that is about {r['cpu_s'] * scale:,.0f} CPU s and a "
                f"{r['response_bytes'] * scale / 2**30:.0f} GiB response (extrapolated). Now refused in "
                f"{1000 * max(x['cpu_s'] for x in report['requests'] if x['code'] == 'after' and x['label'].startswith('hostile')):.1f} ms."
            )
    lines += [
        "",
        "## Cache thrash: a victim's 64-row requests, alone and with another client's 8-row requests in between",
        "",
        "Wall seconds (median); memory: the largest peak of one request over the worker's memory before it, and how",
        "much the worker's resident memory grew over the alternating rounds.",
        "",
        "| code | cached rows | victim alone (s) | victim alternating (s) | slowdown | other client (s) | peak memory (MiB) | RSS growth (MiB) | cache held / limit (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report["thrash"]:
        cache = t["cache"]
        held = f"{_mb(cache['held'])} / {_mb(cache['limit'])}" if cache else "n/a (one entry, replaced)"
        lines.append(
            f"| {t['code']} | {t['cached_rows']} | {t['victim_alone_s']:.2f} | {t['victim_alternating_s']:.2f} | "
            f"{t['slowdown']:.2f}x | {t['other_client_s']:.2f} | {_mb(t['peak_over_before_max'])} | {_mb(t['rss_growth'])} | "
            f"{held} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
