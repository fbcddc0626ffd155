"""Static checks: the plugin and the fake use only names that exist in Nuke's API.

* ``nuke_plugin`` is type-checked against the ``types-nuke`` stubs (the fake is *not* on
  mypy's path for that run, so a name only the fake has is an error).
* The fake itself is type-checked (with the fake on mypy's path).
* Every public name the fake defines, module-level or a method of a fake class, is looked up
  in the stubs by mypy: the fake cannot let the plugin use a name Nuke does not have.
"""

from __future__ import annotations

import ast
import os
import tempfile
from typing import List

import pytest

from mypy import api as mypy_api  # in the test extras: a missing mypy must fail, not skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_DIR = os.path.join(ROOT, "tests", "nuke_fake")
FAKE_NUKE = os.path.join(FAKE_DIR, "nuke", "__init__.py")
CACHE = os.path.join(tempfile.gettempdir(), "comfy_cluster_mypy_nuke")
COMMON = ["--python-version", "3.10", "--disallow-untyped-defs", "--check-untyped-defs", "--no-error-summary"]

pytestmark = pytest.mark.timeout(300)


def _stubs_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nuke-stubs") is not None or any(
        os.path.isdir(os.path.join(p, "nuke-stubs")) for p in __import__("sys").path
    )


def test_types_nuke_stubs_are_installed() -> None:
    # The checks below compare against these stubs; without them they would prove nothing.
    assert _stubs_installed(), "types-nuke is not installed: pip install -e '.[test]'"


def _mypy(args: List[str], cache: str, mypypath: str = "") -> str:
    old = os.environ.get("MYPYPATH")
    cwd = os.getcwd()
    try:
        if mypypath:
            os.environ["MYPYPATH"] = mypypath
        else:
            os.environ.pop("MYPYPATH", None)
        os.chdir(ROOT)  # pyproject.toml's [tool.mypy] applies
        out, err, status = mypy_api.run(args + ["--cache-dir", cache])
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("MYPYPATH", None)
        else:
            os.environ["MYPYPATH"] = old
    return f"exit {status}\n{out}{err}" if status else ""


def test_nuke_plugin_type_checks_against_the_nuke_stubs() -> None:
    problems = _mypy(
        ["nuke_plugin", "--ignore-missing-imports", "--follow-imports=silent"] + COMMON, os.path.join(CACHE, "plugin")
    )
    assert problems == ""


def test_the_fake_type_checks() -> None:
    problems = _mypy(["-p", "nuke", "-p", "nukescripts"] + COMMON, os.path.join(CACHE, "fake"), mypypath=FAKE_DIR)
    assert problems == ""


def _fake_modules() -> List[str]:
    """The fake ``nuke`` package's modules (its parts are re-exported by ``__init__``), without
    ``_fake`` (the tests' controls, not Nuke's API)."""
    folder = os.path.dirname(FAKE_NUKE)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py") and n != "_fake.py")


def _public_names_of_fake() -> List[str]:
    """``name`` for module-level names and ``Class.method`` for methods, all public."""
    body: List[ast.stmt] = []
    for path in _fake_modules():
        with open(path, encoding="utf-8") as fh:
            body.extend(ast.parse(fh.read()).body)
    names: List[str] = []
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            if stmt.name.startswith("_"):
                continue
            names.append(stmt.name)
            if isinstance(stmt, ast.ClassDef):
                for item in stmt.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        names.append(f"{stmt.name}.{item.name}")
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if not stmt.target.id.startswith("_"):
                names.append(stmt.target.id)
        elif isinstance(stmt, ast.Assign):
            names.extend(t.id for t in stmt.targets if isinstance(t, ast.Name) and not t.id.startswith("_"))
    return names


def test_the_fake_defines_what_the_plugin_needs() -> None:
    names = _public_names_of_fake()
    for expected in ("executeInMainThread", "executeInMainThreadWithResult", "ProgressTask", "execute", "nodes", "GUI", "Int_Knob.setValue", "scriptSave"):
        assert expected in names
    assert len(_fake_modules()) > 1  # the parts are checked, not only __init__


# Names Foundry documents that the types-nuke stubs lack. Each with its reference page; the
# plugin reaches them with getattr (mypy checks it against the stubs) and copes with their absence.
DOCUMENTED_NOT_IN_STUBS = {
    # https://learn.foundry.com/nuke/developers/160/pythondevguide/_autosummary/nuke.lastHitGroup.html
    "lastHitGroup",
}


def test_every_public_name_of_the_fake_exists_in_the_nuke_stubs(tmp_path) -> None:
    names = [n for n in _public_names_of_fake() if n not in DOCUMENTED_NOT_IN_STUBS]
    lines = ["import nuke", ""]
    lines += [f"_{i} = nuke.{name}" for i, name in enumerate(names)]
    probe = tmp_path / "probe_names.py"
    probe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = _mypy([str(probe), "--python-version", "3.10", "--no-error-summary"], os.path.join(CACHE, "names"))
    missing = [line for line in problems.splitlines() if "has no attribute" in line]
    assert missing == [] and problems == "", problems


def test_the_name_check_catches_a_name_nuke_does_not_have(tmp_path) -> None:
    probe = tmp_path / "probe_bad.py"
    probe.write_text("import nuke\n\nx = nuke.executeInWorkerThread\ny = nuke.Int_Knob.setValues\n", encoding="utf-8")
    problems = _mypy([str(probe), "--python-version", "3.10", "--no-error-summary"], os.path.join(CACHE, "names"))
    assert "executeInWorkerThread" in problems and "setValues" in problems
