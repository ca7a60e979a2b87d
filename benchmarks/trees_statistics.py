"""The deterministic figures of ``benchmarks/trees.py``, without Concrete-ML and without timing.

    .venv/bin/python benchmarks/trees_statistics.py [--cases dt_cancer ...] [--out PATH]

For every case and veilml side of ``benchmarks/trees.py`` (default encoding; ``encoding="auto"``; the
default encoding at Concrete-ML's global p_error, read from ``benchmarks/results/trees.json``): PBS
count, complexity, serialized evaluation-key bytes, bytes up and down for one row (one real
encryption and run), the metrics of ``disable`` and ``simulate`` on the test rows, and the sha256 of
the ``disable`` and ``simulate`` integers of every test row. Each figure is compared with the benchmark
of record (``benchmarks/results/trees.json``) where it holds one; the run fails (exit status 1) if any
differs. A refactoring that changes no algorithm must leave every line identical.

Writes ``benchmarks/results/trees_statistics.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from trees import CASES, MODELS, load_case_data, metric  # noqa: E402

SIDES = {"veilml": ("thermometer", False), "veilml, encoding='auto'": ("auto", False)}
AT_CML = "veilml at Concrete-ML's global p_error"
COMPARED = (
    "pbs_count",
    "complexity",
    "evaluation_key_serialized_bytes",
    "bytes_up_per_row",
    "bytes_down_per_row",
    "metric_disable",
    "metric_simulate",
)


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.int64).tobytes()).hexdigest()


def statistics(name: str, encoding: str, global_p_error: float | None) -> dict:
    import veilml
    from veilml import Configuration
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    case = CASES[name]
    estimator_name, hp, _ = MODELS[case.model]
    X_train, X_test, y_train, y_test = load_case_data(case)
    model = getattr(veilml, estimator_name)(n_bits=case.n_bits, encoding=encoding, **hp).fit(X_train, y_train)
    configuration = Configuration() if global_p_error is None else Configuration(global_p_error=global_p_error)
    model.compile(X_train, configuration)
    clear, simulated = model.predict_integers(X_test, "disable"), model.predict_integers(X_test, "simulate")
    codec = model.fhe_model_.codec
    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    client.keygen(seed=0, force=True)
    keys = client.evaluation_keys()
    (ciphertext,) = client.encrypt(X_test[:1])
    result = server.run_registered(ciphertext, server.register(keys))
    report = model.report_
    return {
        "pbs_count": report.pbs_count,
        "complexity": report.complexity,
        "evaluation_key_serialized_bytes": len(keys),  # the envelope, as benchmarks/trees.py counts it
        "bytes_up_per_row": len(ciphertext),
        "bytes_down_per_row": len(result),
        "metric_disable": metric(case, y_test, codec.predict(clear)),
        "metric_simulate": metric(case, y_test, codec.predict(simulated)),
        "disable_sha256": _digest(clear),
        "simulate_sha256": _digest(simulated),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", type=Path, default=RESULTS / "trees_statistics.json")
    args = parser.parse_args()
    record = json.loads((RESULTS / "trees.json").read_text())["cases"]
    out: dict[str, dict] = {}
    differences = []
    for name in args.cases:
        cml_p_error = record[name]["sides"]["Concrete-ML 1.9"]["global_p_error"]
        sides = {**{k: (enc, None) for k, (enc, _) in SIDES.items()}, AT_CML: ("thermometer", cml_p_error)}
        for side, (encoding, p_error) in sides.items():
            figures = statistics(name, encoding, p_error)
            recorded = record[name]["sides"].get(side, {})
            for key in COMPARED:
                if key in recorded and recorded[key] != figures[key]:
                    differences.append(f"{name} / {side} / {key}: recorded {recorded[key]}, now {figures[key]}")
            out.setdefault(name, {})[side] = figures
            print(name, "/", side, {k: figures[k] for k in COMPARED}, flush=True)
    args.out.write_text(json.dumps({"cases": out, "differences_from_trees_json": differences}, indent=1) + "\n")
    print("\n".join(differences) if differences else "every figure equals benchmarks/results/trees.json")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
