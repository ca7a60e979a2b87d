"""One million encrypted rows scored end to end through Dask, on this machine: the batched path at scale.

    .venv/bin/python benchmarks/trees_million.py [--rows 1000000] [--case dt_cancer] [--dask-workers 2]

A veilml estimator of ``benchmarks/trees.py``'s case is fitted and compiled and saved as a bundle; a table of
``--rows`` rows is generated from the case's test split (rows drawn with replacement, each feature moved by
Gaussian noise of 5 % of its spread, seeded). The data owner's side (``BatchModelClient`` from the client
bundle's codec and the server's public description) encrypts batch after batch under one fresh key, in two
threads of its own process; the server's side is a ``distributed.LocalCluster`` of ``--dask-workers`` worker
processes, each evaluating whole batches from the bundle's ``batch.json`` (``run_batches_on_dask``), which see
public keys and ciphertexts only. Reported: wall clock, rows/s, bytes up and down, and whether every row's
decrypted scores equal the estimator's ``fhe="disable"`` scores (all rows compared; with SHA-256 checksums of
both score tables).

Writes ``benchmarks/results/trees_million.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from trees import CASES, MODELS, load_case_data  # noqa: E402


def generated_table(X: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` rows drawn from ``X`` with replacement, each feature moved by noise of 5 % of its spread."""
    rng = np.random.default_rng(seed)
    table = X[rng.integers(0, len(X), rows)]
    return table + rng.normal(0.0, 0.05, table.shape) * X.std(axis=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--case", default="dt_cancer", choices=list(CASES))
    parser.add_argument("--dask-workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import veilml
    from veilml.quantization import QuantizationRangeWarning
    from veilml.runtime.batch.halves import BatchModelClient
    from veilml.serving.batch_bundle import batch_description
    from veilml.serving.bundle import ModelClient
    from veilml.serving.dask import run_batches_on_dask

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    case = CASES[args.case]
    estimator_name, hp, _ = MODELS[case.model]
    X_train, X_test, y_train, _ = load_case_data(case)
    model = getattr(veilml, estimator_name)(n_bits=case.n_bits, **hp).fit(X_train, y_train).compile(X_train)
    table = generated_table(X_test, args.rows)
    with tempfile.TemporaryDirectory() as directory:
        bundle = model.save(Path(directory) / "bundle")
        owner = BatchModelClient(ModelClient(bundle / "client").codec, batch_description(bundle))
        cluster = LocalCluster(n_workers=args.dask_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        with cluster, Client(cluster) as dask:
            start = time.perf_counter()
            scores = owner.score(table, run_batches_on_dask(dask, bundle), progress=True)
            seconds = time.perf_counter() - start
        session = owner.last_session
        start = time.perf_counter()
        combine = model.fhe_model_.codec.output_combine
        expected = np.concatenate(  # in chunks: the disable path's intermediates on a million rows would not fit
            [model.predict_integers(table[i : i + 50_000], "disable") @ combine for i in range(0, len(table), 50_000)]
        )
        clear_s = time.perf_counter() - start
    digest = {
        name: hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()
        for name, a in (("encrypted", scores), ("disable", expected))
    }
    record = {
        "command": " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "case": args.case,
        "rows": args.rows,
        "encoding": str(session.shape.encoding),
        "params": session.shape.params.to_dict(),
        "batches": -(-args.rows // session.shape.params.slots),
        "dask_workers": args.dask_workers,
        "seconds": seconds,
        "rows_per_s": args.rows / seconds,
        "bytes_up": session.bytes_up,
        "bytes_down": session.bytes_down,
        "all_rows_equal": bool(np.array_equal(scores, expected)),
        "rows_equal": int((scores == expected).all(axis=1).sum()),
        "sha256": digest,
        "disable_s": clear_s,
        "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trees_million.json").write_text(json.dumps(record, indent=1))
    (RESULTS / "trees_million.md").write_text(markdown(record))
    print(markdown(record))
    return 0 if record["all_rows_equal"] else 1


def markdown(r: dict) -> str:
    p = r["params"]
    return "\n".join(
        [
            "# One million encrypted rows through Dask\n",
            f"`python benchmarks/trees_million.py {r['command']}` on {r['machine']['cpu_count']} cores "
            f"({r['machine']['platform']}), load average at the end {r['load_average'][0]:.2f}.\n",
            f"- Model: `{r['case']}` (benchmarks/trees.py), batched path in {r['encoding']}, N = {p['poly_degree']}, "
            f"primes {p['coeff_bits']}, {r['batches']} batches.",
            f"- Table: {r['rows']:,} generated rows; data owner: one process, encrypting in two threads; server: a "
            f"Dask `LocalCluster` of {r['dask_workers']} worker processes (whole batches each).",
            f"- **Wall clock {r['seconds']:.0f} s, {r['rows_per_s']:,.0f} rows/s** end to end (key generation, "
            "encryption, the cluster's evaluation, decryption).",
            f"- Bytes: {r['bytes_up'] / 2**30:.2f} GiB up ({r['bytes_up'] / r['rows'] / 1024:.1f} KiB per row), "
            f"{r['bytes_down'] / 2**20:.1f} MiB down.",
            f'- Every row equal to `fhe="disable"`: **{"yes" if r["all_rows_equal"] else "NO"}** '
            f"({r['rows_equal']:,} of {r['rows']:,} rows compared); SHA-256 of the encrypted path's scores "
            f"`{r['sha256']['encrypted'][:16]}…`, of `disable`'s `{r['sha256']['disable'][:16]}…`.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
