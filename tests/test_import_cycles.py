"""The package's shape: no import cycle between its modules, no import up the layers, no module over 400 lines,
no function over 80, and one base for every exception."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_cycles.py"
PACKAGE = ROOT / "src" / "veilml"
MAX_LINES = 400
MAX_FUNCTION_LINES = 80


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "inside-functions-too"])
def test_no_import_cycle(deferred: bool) -> None:
    out = run_script(*(["--include-deferred"] if deferred else []))
    assert out.returncode == 0, f"import cycles or upward imports in src/veilml:\n{out.stdout}{out.stderr}"
    assert out.stdout.startswith("no import cycle and no upward import among")


def test_the_script_finds_cycles_relative_and_deferred(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import c\n")  # a package importing its module: no cycle
    (package / "a.py").write_text("from .sub import c\n")
    (package / "sub" / "c.py").write_text("from ..b import thing\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n\ndef late():\n    from . import a\n"
    )
    (package / "d.py").write_text("import pkg.b\n")
    assert run_script(str(package)).returncode == 0  # b -> a only inside a function, b -> d only for type checkers
    out = run_script(str(package), "--include-deferred")
    assert out.returncode == 1
    assert "import cycle: pkg.a -> pkg.sub.c -> pkg.b -> pkg.a" in out.stdout
    (package / "d.py").write_text("import pkg.b\nfrom pkg import b\n")
    (package / "b.py").write_text("import pkg.d\n")
    out = run_script(str(package))
    assert out.returncode == 1 and "import cycle: pkg.b -> pkg.d -> pkg.b" in out.stdout


def test_the_script_finds_imports_up_the_layers(tmp_path: Path) -> None:
    """models.lora -> linear -> serving -> runtime -> compiler -> quantization; models.trees -> runtime."""
    package = tmp_path / "veilml"
    for sub in ("runtime", "serving", "models", "models/trees", "models/lora"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "serving" / "kit.py").write_text("from veilml.runtime import core\n")  # down: fine
    (package / "runtime" / "core.py").write_text("def late():\n    from veilml.serving import kit\n")  # up, deferred
    (package / "models" / "trees" / "est.py").write_text("from veilml.runtime import core\n")  # down: fine
    (package / "models" / "lora" / "train.py").write_text("")
    assert run_script(str(package)).returncode == 0  # module level: no upward arrow
    out = run_script(str(package), "--include-deferred")
    assert out.returncode == 1
    assert "upward import: veilml.runtime.core (veilml.runtime) -> veilml.serving.kit (veilml.serving)" in out.stdout
    (package / "models" / "trees" / "est.py").write_text("import veilml.models.lora.train\n")  # sideways
    out = run_script(str(package))
    assert out.returncode == 1
    assert "upward import: veilml.models.trees.est (veilml.models.trees) -> veilml.models.lora.train" in out.stdout


def test_no_module_over_400_lines() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines; split them along their jobs: {too_long}"


def test_no_function_over_80_lines() -> None:
    """Nested functions count inside the function that holds them: a long factory of closures is one long function."""
    import ast

    too_long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = lines
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines; split them into named steps: {too_long}"


def test_every_veilml_exception_derives_from_veilml_error() -> None:
    import importlib
    import inspect
    import pkgutil

    import veilml
    from veilml.errors import VeilmlError

    strays = []
    for info in pkgutil.walk_packages(veilml.__path__, "veilml."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed: its module is checked where it is
            continue
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                if not name.startswith("_") and not issubclass(value, VeilmlError):
                    strays.append(f"{info.name}.{name}")
    assert not strays, f"exceptions that do not derive from veilml.errors.VeilmlError: {strays}"
