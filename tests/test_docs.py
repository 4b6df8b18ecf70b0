"""The documentation cannot rot: its examples run, its pages build, and every public name is in it.

* The ``>>>`` examples of every docstring in the package run (``doctest``).
* Every public name of ``fgsmkit``, ``fgsmkit.models``, ``fgsmkit.datasets`` and
  ``fgsmkit.evaluation`` has a docstring, type hints and (functions and classes) an example.
* The code on the documentation pages runs (``sphinx-build -b doctest``).
* The site builds without a single warning (``sphinx-build -W -b html``), and the API reference
  lists every public name.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fgsmkit
from fgsmkit import evaluation

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = ["fgsmkit", "fgsmkit.models", "fgsmkit.datasets", "fgsmkit.evaluation"]
SPHINX_TIMEOUT_S = 300


def _all_modules() -> list[str]:
    names = ["fgsmkit"]
    for info in pkgutil.walk_packages(fgsmkit.__path__, prefix="fgsmkit."):
        if info.name != "fgsmkit.__main__":
            names.append(info.name)
    return sorted(names)


def _public_objects() -> list[tuple[str, str, object]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                found.append((module_name, name, obj))
    return found


@pytest.mark.parametrize("module_name", _all_modules())
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module_name} failed (see above)"


@pytest.mark.parametrize(
    "module_name, name, obj", _public_objects(), ids=[f"{m}.{n}" for m, n, _ in _public_objects()]
)
def test_public_name_is_documented_with_types_and_an_example(module_name: str, name: str, obj: object) -> None:
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 20, f"{module_name}.{name} has no docstring"
    if not callable(obj):
        return
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return  # an exception's documentation is the message and when it is raised
    assert ">>>" in doc, f"{module_name}.{name} has no runnable example in its docstring"
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return
    signature = inspect.signature(target)
    untyped = [p.name for p in signature.parameters.values()
               if p.name != "self" and p.annotation is inspect.Parameter.empty]
    assert not untyped, f"{module_name}.{name}: parameters without type hints: {untyped}"
    if not inspect.isclass(obj):
        assert signature.return_annotation is not inspect.Signature.empty, f"{module_name}.{name}: no return type"


@pytest.mark.parametrize("name", [n for n in evaluation.__all__ if inspect.isfunction(getattr(evaluation, n))])
def test_evaluation_parameters_are_documented_one_by_one_with_their_types(name: str) -> None:
    # The project's Sphinx settings render a combined entry ("x, y : Tensor") wrongly: the second
    # name got the first one's description, and an untyped one the signature's hint (np.integer).
    function = getattr(evaluation, name)
    doc = inspect.getdoc(function)
    entries = re.findall(r"^(\S[^\n]*?) : \S", doc, re.M)
    expected = [p for p in inspect.signature(function).parameters]
    assert entries[:len(expected)] == expected, f"{name}: parameter entries {entries}"


def _sphinx(builder: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", builder, str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=SPHINX_TIMEOUT_S,
    )


def test_code_on_the_pages_runs(tmp_path: Path) -> None:
    done = _sphinx("doctest", tmp_path)
    report = (tmp_path / "output.txt").read_text() if (tmp_path / "output.txt").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{report}"
    assert "0 failures in tests" in report and "0 failures in setup code" in report
    # The pages hold real code: guard against a configuration that silently collects nothing.
    counts = re.findall(r"^\s+(\d+) tests$", report, re.M)
    assert counts and int(counts[-1]) > 50, report


def test_site_builds_without_warnings_and_lists_every_public_name(tmp_path: Path) -> None:
    done = _sphinx("html", tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "WARNING" not in done.stderr, done.stderr
    api = "".join(page.read_text() for page in (tmp_path / "api").glob("*.html"))
    missing = [f"{m}.{n}" for m, n, _ in _public_objects() if f'id="{m}.{n}"' not in api]
    assert not missing, f"public names missing from the API reference: {missing}"
    for page in ["introduction", "installation", "quickstart", "examples", "migration", "reproduction",
                 "benchmarks", "changelog", "citing", "guide/index"]:
        assert (tmp_path / f"{page}.html").exists(), page
