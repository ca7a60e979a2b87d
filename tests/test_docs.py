"""The manual builds: ``mkdocs build --strict`` (every warning an error: a broken link, an unknown page in the nav,
an API reference entry griffe cannot find), and the pages hold what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from requires import require

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once, strictly, the way CI and a reader build it (from the repository root)."""
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material"):
        require(module, "docs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed (exit {done.returncode}):\n{done.stderr[-6000:]}"
    return out


def test_docs_build_strictly_with_every_page(site: Path) -> None:
    for page in ("getting-started", "guides/trees", "guides/deployment", "guides/batch", "guides/lora", "lora_quickstart"):
        assert (site / page / "index.html").is_file(), f"the site has no page {page}"
    for page in ("security", "architecture", "benchmarks", "layout", "tree_families", "auto_bits"):
        assert (site / page / "index.html").is_file(), f"the site has no page {page}"
    results = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.md"))
    missing = [name for name in results if not (site / "benchmarks" / "results" / name / "index.html").is_file()]
    assert not missing, f"benchmark results not published in the site: {missing}"


def test_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    """Each public class has its entry, with a method of its own rendered from its source."""
    expected = {
        "reference/trees": [
            "veilml.models.trees.estimators.xgb.XGBClassifier",
            "veilml.models.trees.estimators.lgbm.LGBMRegressor",
            "veilml.models.trees.estimators.base.EncryptedEnsemble.compile",
            "veilml.models.trees.estimators.tasks.EncryptedClassifier.predict_proba",
        ],
        "reference/serving": [
            "veilml.serving.remote_model.RemoteModel.predict",
            "veilml.serving.bundle.ModelClient",
            "veilml.serving.dask.run_batches_on_dask",
        ],
        "reference/batch": ["veilml.runtime.batch.halves.BatchModelClient.score", "veilml.runtime.batch.halves.BatchModelServer"],
        "reference/lora": [
            "veilml.models.lora.private.private_model",
            "veilml.models.lora.trainer.LoraTrainer",
            "veilml.linear.executor.EncryptedLinearExecutor",
        ],
    }
    for page, anchors in expected.items():
        html = (site / page / "index.html").read_text()
        missing = [anchor for anchor in anchors if f'id="{anchor}"' not in html]
        assert not missing, f"{page}: no API entry for {missing}"
    # the docstring's own words, not only a heading
    assert "thermometer" in (site / "reference/trees/index.html").read_text()


def test_getting_started_shows_the_readme_quickstart(site: Path) -> None:
    """The quickstart is included from README.md (one copy), so the page runs what the README's test runs."""
    html = (site / "getting-started" / "index.html").read_text()
    assert "load_breast_cancer" in html and "fhe=" in html
    assert "--8&lt;--" not in html and "--8<--" not in html, "the README snippet was not included"
