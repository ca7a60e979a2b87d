"""The deployment commands from a shell: compile an ONNX model, then keygen | encrypt | run | decrypt."""

import subprocess

import numpy as np
import pytest
from requires import require
from worker_helpers import veilml_script

pytestmark = pytest.mark.execute


def test_compile_and_the_pipeline_give_the_models_predictions(cancer, tmp_path):
    require("skl2onnx", "onnx")
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    X_train, X_test, y_train, _ = cancer
    float_tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X_train, y_train)
    (tmp_path / "tree.onnx").write_bytes(
        to_onnx(float_tree, X_train[:1].astype(np.float32), options={"zipmap": False}).SerializeToString()
    )
    np.savetxt(tmp_path / "train.csv", X_train, delimiter=",")
    np.savetxt(tmp_path / "rows.csv", X_test[:3], delimiter=",")
    cli = str(veilml_script())

    def run(*args, **kwargs):
        return subprocess.run([cli, *args], check=True, capture_output=True, text=True, cwd=tmp_path, **kwargs)

    run("compile", "tree.onnx", "--data", "train.csv", "--out", "bundle", "--n-bits", "8")
    assert (tmp_path / "bundle" / "client" / "manifest.json").is_file() and (
        tmp_path / "bundle" / "server" / "server.zip"
    ).is_file()
    run("keygen", "bundle", "--key-dir", "keys", "--out", "eval.keys")
    pipeline = f"{cli} encrypt bundle --key-dir keys --input rows.csv --out - | {cli} run bundle --keys eval.keys --input - --out - | {cli} decrypt bundle --key-dir keys --input -"
    labels = subprocess.run(pipeline, shell=True, check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert [int(v) for v in labels] == float_tree.predict(X_test[:3]).tolist()
    # the same steps through files; a wrong input is one line on stderr and exit status 1
    run("encrypt", "bundle", "--key-dir", "keys", "--input", "rows.csv", "--out", "rows.ct")
    run("run", "bundle", "--keys", "eval.keys", "--input", "rows.ct", "--out", "rows.res")
    assert run("decrypt", "bundle", "--key-dir", "keys", "--input", "rows.res").stdout.split() == labels
    failed = subprocess.run(
        [cli, "run", "bundle", "--keys", "eval.keys", "--input", "rows.csv", "--out", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert failed.returncode == 1 and "veilml run: error:" in failed.stderr and "not a veilml batch" in failed.stderr
    failed = subprocess.run(
        [cli, "encrypt", "bundle", "--key-dir", "nokeys", "--input", "rows.csv", "--out", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert failed.returncode == 1 and "run 'veilml keygen" in failed.stderr
    for command in ("compile", "keygen", "encrypt", "run", "decrypt", "serve"):
        assert "usage: veilml " + command in run(command, "--help").stdout
