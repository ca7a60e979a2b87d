"""What a user of the ``veilml`` command line meets first (issue 25): native model files, ``--n-bits auto``,
CSV headers, one-line errors instead of tracebacks, a default ``--state``, a fast start and ``--version``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from requires import require

from veilml.cli import build_parser, main
from veilml.cli.common import CommandError, default_state_dir, private_state_dir
from veilml.cli.tables import align_columns, read_table

HEAVY = ("numpy", "concrete", "sklearn", "torch", "numba", "tenseal", "xgboost", "lightgbm", "treelite", "skops")


def _small_table(rows: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued features (thresholds between codes: few bits keep every label) and a label."""
    X = np.random.default_rng(0).integers(0, 4, size=(rows, 4)).astype(np.float64)
    return X, (X[:, 0] + X[:, 1] * X[:, 2] > 3).astype(int)


def _write_csv(path: Path, X: np.ndarray, names: list[str] | None = None) -> Path:
    np.savetxt(path, X, delimiter=",", header=",".join(names) if names else "", comments="")
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a failed command printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.fixture
def xgboost_json(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A small XGBoost classifier (5 trees of depth 2) saved as JSON, and its training rows."""
    xgboost = require("xgboost", "trees")
    X, y = _small_table()
    path = tmp_path / "model.json"
    xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y).save_model(path)
    return path, X


@pytest.mark.execute
def test_compile_an_xgboost_json_file_with_n_bits_auto_and_a_header(xgboost_json, tmp_path, capsys) -> None:
    path, X = xgboost_json
    data = _write_csv(tmp_path / "train.csv", X, ["a", "b", "c", "d"])
    assert main(["compile", str(path), "--data", str(data), "--out", str(tmp_path / "bundle"), "--n-bits", "auto"]) == 0
    err = capsys.readouterr().err
    assert "--n-bits auto:" in err and "100.00% of the labels" in err and "header is skipped" in err
    assert (tmp_path / "bundle" / "client" / "manifest.json").is_file()
    assert (tmp_path / "bundle" / "server" / "server.zip").is_file()


def test_native_model_files_are_read_by_their_suffix(tmp_path) -> None:
    """XGBoost JSON and UBJ, LightGBM text and scikit-learn .skops files: read back as the model that was saved
    (the same probabilities), and its encrypted estimator predicts its labels."""
    xgboost, lightgbm = require("xgboost", "trees"), require("lightgbm", "trees")
    skops_io = require("skops.io", "trees")
    from sklearn.ensemble import RandomForestClassifier

    from veilml.cli.sources import open_model

    X, y = _small_table()
    booster = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y)
    booster.save_model(tmp_path / "m.json")
    booster.save_model(tmp_path / "m.ubj")
    light = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, min_child_samples=5, verbose=-1).fit(X, y)
    light.booster_.save_model(tmp_path / "m.txt")
    forest = RandomForestClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)
    skops_io.dump(forest, tmp_path / "m.skops")
    expected = {"m.json": booster, "m.ubj": booster, "m.txt": light, "m.skops": forest}
    for name, model in expected.items():
        source = open_model(str(tmp_path / name))
        np.testing.assert_allclose(source.reference(X), model.predict_proba(X), rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.mean(source.estimator(X, 8).predict(X) == model.predict(X)) >= 0.95, name


def test_a_skops_file_is_loaded_with_the_tree_types_only(tmp_path, capsys) -> None:
    skops_io = require("skops.io", "trees")
    from collections import Counter

    from sklearn.linear_model import LinearRegression

    X, y = _small_table(20)
    _write_csv(tmp_path / "x.csv", X)
    skops_io.dump(Counter(a=1), tmp_path / "counter.skops")  # a type skops does not trust by default
    skops_io.dump(LinearRegression().fit(X, y), tmp_path / "linear.skops")
    out = str(tmp_path / "bundle")
    assert main(["compile", str(tmp_path / "counter.skops"), "--data", str(tmp_path / "x.csv"), "--out", out]) == 1
    assert "holds types that veilml does not load: collections.Counter" in _error_line(capsys)
    assert main(["compile", str(tmp_path / "linear.skops"), "--data", str(tmp_path / "x.csv"), "--out", out]) == 1
    assert "holds a sklearn.linear_model._base.LinearRegression; veilml compile takes one of" in _error_line(capsys)


def test_n_bits_auto_judges_a_trained_model_against_its_own_predictions(xgboost_json) -> None:
    """No labels: every candidate is the model itself at some precision, scored by agreement with its float output."""
    from veilml.cli.sources import choose_bits, open_model

    path, X = xgboost_json
    source = open_model(str(path))
    n_bits, leaf_bits, found = choose_bits(source, X)
    assert 2 <= n_bits <= 8 and "100.00% of the labels" in found
    chosen = source.estimator(X, n_bits, leaf_bits)
    assert np.array_equal(chosen.predict_proba(X).argmax(axis=1), source.reference(X).argmax(axis=1))
    assert build_parser().parse_args(["compile", "m.json", "--data", "d", "--out", "o", "--n-bits", "auto"]).n_bits == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compile", "m.json", "--data", "d", "--out", "o", "--n-bits", "13"])


def test_an_unknown_model_suffix_names_the_supported_ones(tmp_path, capsys) -> None:
    (tmp_path / "model.pkl").write_bytes(b"not read")
    assert main(["compile", str(tmp_path / "model.pkl"), "--data", "d.csv", "--out", str(tmp_path / "b")]) == 1
    line = _error_line(capsys)
    assert "unknown model file type '.pkl'" in line
    assert all(suffix in line for suffix in (".onnx", ".json", ".ubj", ".txt", ".skops"))


def test_a_csv_header_is_read_and_its_columns_put_in_the_models_order(tmp_path, capsys) -> None:
    X = np.arange(12.0).reshape(4, 3)
    table = read_table(str(_write_csv(tmp_path / "h.csv", X, ["c", "a", "b"])), "--input")
    assert table.names == ("c", "a", "b") and np.array_equal(table.rows, X)
    assert np.array_equal(align_columns(table, ["a", "b", "c"], 3, "h.csv", "encrypt"), X[:, [1, 2, 0]])
    assert "put in the model's order" in capsys.readouterr().err
    with pytest.raises(CommandError, match="lacks d and has c that the model does not know"):
        align_columns(table, ["a", "b", "d"], 3, "h.csv", "encrypt")
    plain = read_table(str(_write_csv(tmp_path / "plain.csv", X)), "--input")
    assert plain.names is None and np.array_equal(plain.rows, X)
    numeric = read_table(str(_write_csv(tmp_path / "n.csv", X, ["0", "1", "2"])), "--input", header=True)
    assert numeric.names == ("0", "1", "2") and len(numeric.rows) == 4
    (tmp_path / "mixed.csv").write_text("1,x,3\n4,5,6\n")
    with pytest.raises(CommandError, match="mixes names and numbers.*--header"):
        read_table(str(tmp_path / "mixed.csv"), "--input")


def test_compile_checks_a_headers_names_against_the_models(tmp_path, capsys) -> None:
    xgboost = require("xgboost", "trees")
    pandas = require("pandas", "test")
    X, y = _small_table()
    frame = pandas.DataFrame(X, columns=["a", "b", "c", "d"])
    xgboost.XGBClassifier(n_estimators=2, max_depth=2).fit(frame, y).save_model(tmp_path / "named.json")
    data = _write_csv(tmp_path / "data.csv", X, ["a", "b", "c", "e"])
    assert main(["compile", str(tmp_path / "named.json"), "--data", str(data), "--out", str(tmp_path / "b")]) == 1
    assert "the columns of" in (line := _error_line(capsys)) and "lacks d and has e" in line


def test_a_wrong_key_dir_is_one_line_naming_the_fix(tmp_path, capsys) -> None:
    bundle, rows = tmp_path / "bundle", _write_csv(tmp_path / "rows.csv", np.ones((2, 4)))
    bundle.mkdir()
    encrypt = ["encrypt", str(bundle), "--input", str(rows), "--out", str(tmp_path / "x"), "--key-dir"]
    assert main([*encrypt, str(tmp_path / "missing")]) == 1
    assert "does not exist; run 'veilml keygen" in _error_line(capsys)
    (tmp_path / "file").write_text("")
    assert main([*encrypt, str(tmp_path / "file")]) == 1
    assert "is not a directory" in _error_line(capsys)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    assert main(["keygen", str(bundle), "--key-dir", str(shared), "--out", str(tmp_path / "k")]) == 1
    assert "writable by other users" in (line := _error_line(capsys)) and "chmod 700" in line
    # predict checks its key directory before it connects: no server listens here, and the error is the key dir's
    predict = ["predict", "http://127.0.0.1:9", "--input", str(rows), "--key-dir"]
    assert main([*predict, str(shared)]) == 1
    assert "writable by other users" in (line := _error_line(capsys)) and "chmod 700" in line
    assert main([*predict, str(tmp_path / "file")]) == 1
    assert "is not a directory" in _error_line(capsys)
    # the same from a shell: the exit status, and nothing but the line
    done = subprocess.run(
        [sys.executable, "-m", "veilml", *encrypt, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "{tmp}", "--keys", "{tmp}/none", "--input", "-", "--out", "-"], "--keys {tmp}/none does not exist"),
        (["predict", "localhost:8000", "--input", "r.csv"], "is not an http(s) URL"),
        (["predict", "http://[::1", "--input", "r.csv"], "is not a URL"),
        (["compile", "m.json", "--data", "{tmp}/none.csv", "--out", "{tmp}/b"], "does not exist (or is not a file)"),
        (["serve", "{tmp}/none"], "bundle {tmp}/none does not exist"),
    ],
)
def test_bad_input_ends_in_one_line(argv, message, tmp_path, capsys) -> None:
    assert main([word.format(tmp=tmp_path) for word in argv]) == 1
    assert message.format(tmp=tmp_path) in _error_line(capsys)


def test_serve_keeps_its_state_in_a_private_per_user_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert build_parser().parse_args(["serve", "bundle"]).state is None  # no longer a fixed path
    assert default_state_dir() == tmp_path / "state" / "veilml" / "serve"
    made = private_state_dir(default_state_dir())
    assert made.is_dir() and all(stat.S_IMODE(os.stat(p).st_mode) == 0o700 for p in (made, made.parent))
    made.chmod(0o770)
    with pytest.raises(CommandError, match="writable by other users"):
        private_state_dir(made)


def test_version_lists_the_crypto_libraries(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("veilml ")
    assert f"concrete-python {metadata.version('concrete-python')}" in out
    assert "tenseal" in out  # its version, or "not installed"


def test_help_version_and_argument_errors_import_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from veilml.cli import main\n"
        "for argv in (['--help'], ['--version'], ['compile'], ['compile', 'm.json', '--n-bits', '99']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "main(['compile', 'model.pkl', '--data', 'd.csv', '--out', 'o'])\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "[]", done.stderr
