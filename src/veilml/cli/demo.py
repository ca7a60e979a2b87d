"""The main job: an encrypted decision tree on breast cancer data, end to end.

    python -m veilml.cli.demo [--rows 5] [--max-depth 5] [--n-bits 6]

Fits a tree on quantized data, compiles it to a TFHE circuit, runs real encrypted inference on a
few test rows and prints float vs encrypted accuracy, latency per row and the circuit's cost.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veilml.cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5, help="test rows to run encrypted (default 5)")
    parser.add_argument("--max-depth", type=int, default=5)
    parser.add_argument("--n-bits", type=int, default=6)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier as FloatTree

    from veilml import DecisionTreeClassifier
    from veilml.quantization import QuantizationRangeWarning

    warnings.simplefilter("ignore", QuantizationRangeWarning)  # held-out rows beyond the training range
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    print(f"breast cancer: {X_train.shape[0]} training rows, {X_test.shape[0]} test rows, {X.shape[1]} features")

    float_tree = FloatTree(max_depth=args.max_depth, random_state=0).fit(X_train, y_train)
    model = DecisionTreeClassifier(max_depth=args.max_depth, n_bits=args.n_bits, random_state=0)
    model.fit(X_train, y_train)
    start = time.perf_counter()
    model.compile(X_train)
    print(f"compiled in {time.perf_counter() - start:.1f} s: {model.report_}")

    clear = model.predict(X_test, fhe="disable")
    simulated = model.predict(X_test, fhe="simulate")
    rows = min(args.rows, len(X_test))
    client, server = model.fhe_model_.client(), model.fhe_model_.server()
    start = time.perf_counter()
    client.keygen()
    keys = client.evaluation_keys()
    print(f"keys generated in {time.perf_counter() - start:.1f} s; evaluation keys: {len(keys) / 2**20:.1f} MiB")
    key_id = server.register(keys)  # on the server, once per client: checked and loaded

    encrypted, latencies = [], []
    for row in X_test[:rows]:
        start = time.perf_counter()
        (ciphertext,) = client.encrypt(row[None, :])  # on the client
        result = server.run_registered(ciphertext, key_id)  # on the server: ciphertexts and public keys only
        scores = client.decrypt([result])  # back on the client
        latencies.append(time.perf_counter() - start)
        encrypted.append(model.classes_[int(np.argmax(scores))])
    encrypted = np.asarray(encrypted)

    print()
    print(f"accuracy, float scikit-learn tree  : {float_tree.score(X_test, y_test):.4f} ({len(X_test)} rows)")
    print(f"accuracy, veilml fhe='disable'     : {np.mean(clear == y_test):.4f} ({len(X_test)} rows)")
    print(f"accuracy, veilml fhe='simulate'    : {np.mean(simulated == y_test):.4f} ({len(X_test)} rows)")
    print(f"accuracy, veilml encrypted execute : {np.mean(encrypted == y_test[:rows]):.4f} ({rows} rows)")
    print(f"encrypted == clear on {int(np.sum(encrypted == clear[:rows]))}/{rows} rows")
    print(
        f"latency per row (encrypt + run + decrypt): median {np.median(latencies):.2f} s, "
        f"first {latencies[0]:.2f} s, ciphertext {len(ciphertext) / 2**10:.0f} KiB"
    )
    print(
        f"PBS per row: {model.report_.pbs_count} (max {model.report_.max_bit_width} bits), "
        f"complexity {model.report_.complexity:.3g}"
    )
    return 0 if np.array_equal(encrypted, clear[:rows]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
