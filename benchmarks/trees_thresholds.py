"""veilml's opt-in model-dependent encoding (``encoding="thresholds"``) on the breast-cancer cases of ``trees.py``.

    .venv/bin/python benchmarks/trees_thresholds.py

Same data split, hyper-parameters and 6 bits as ``benchmarks/trees.py``. Each model is compiled,
keys are made and registered on the server, one throw-away row runs, then 5 test rows are
timed one by one (encrypt + run + decrypt) and each result is compared with ``simulate``. The
Concrete-ML figures are those of the last ``trees.py`` run (``results/concrete_ml_<case>.json``),
not re-measured here. Writes ``results/trees_thresholds.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {
    "dt_cancer": ("DecisionTreeClassifier", {"max_depth": 5, "random_state": 0}),
    "rf_cancer": ("RandomForestClassifier", {"n_estimators": 20, "max_depth": 4, "random_state": 0}),
    "xgb_cancer": ("XGBClassifier", {"n_estimators": 20, "max_depth": 4, "random_state": 0}),
}


def measure(name: str, hp: dict, X_train, y_train, X_test, y_test) -> dict:
    import veilml

    model = getattr(veilml, name)(n_bits=6, encoding="thresholds", **hp).fit(X_train, y_train)
    model.compile(X_train)
    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    client.keygen(force=True)
    keys = client.evaluation_keys()
    key_id = server.register(keys)  # the server checks and loads the keys once
    server.run_registered(client.encrypt(X_test[:1])[0], key_id)  # one throw-away row
    latencies, equal = [], []
    for row in X_test[:5]:
        start = time.perf_counter()
        (ciphertext,) = client.encrypt(row[None, :])
        result = client.decrypt_integers(server.run_registered(ciphertext, key_id))
        latencies.append(time.perf_counter() - start)
        equal.append(bool(np.array_equal(result, model.predict_integers(row[None, :], "simulate")[0])))
    return {
        "median_latency_s": float(np.median(latencies)),
        "latencies_s": latencies,
        "execute_equals_simulate": equal,
        "pbs_count": model.report_.pbs_count,
        "complexity": model.report_.complexity,
        "encrypted_inputs_per_row": model.fhe_model_.encoding.size,
        "bytes_up_per_row": len(ciphertext),
        "accuracy_simulate": float(np.mean(model.predict(X_test, "simulate") == y_test)),
    }


def main() -> int:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    record = {}
    for case, (name, hp) in CASES.items():
        ours = measure(name, hp, X_train, y_train, X_test, y_test)
        theirs = json.loads((RESULTS / f"concrete_ml_{case}.json").read_text())
        ours["concrete_ml_median_latency_s"] = theirs["execute_latency_median_s"]
        ours["latency_ratio"] = theirs["execute_latency_median_s"] / ours["median_latency_s"]
        ours["complexity_ratio"] = theirs["complexity"] / ours["complexity"]
        record[case] = ours
        print(case, {k: v for k, v in ours.items() if not isinstance(v, list)}, flush=True)
    (RESULTS / "trees_thresholds.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
