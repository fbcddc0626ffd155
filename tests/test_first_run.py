"""README's first command, exactly as written, on a stand-in for a stock Mac's ``python3``
(issue 21 item 1): Python 3.9 whose new virtual environments get pip 21.2.4, the pip of the
Python that macOS ships. That pip cannot install a pyproject-only project in editable mode.

The stand-in is a hard-linked copy of pyenv's Python 3.9 whose ``ensurepip`` bundles pip
21.2.4 (fetched from the package index once), first on ``PATH`` as ``python3``. It needs the
package index, as README's command does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_readme import ROOT, blocks

pytestmark = pytest.mark.slow

STOCK_PIP = "21.2.4"


def _pyenv_39() -> Path:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob("versions/3.9.*"), key=lambda p: [int(x) for x in p.name.split(".")[1:] if x.isdigit()])
    assert found, f"Python 3.9 is needed under {root}/versions (.ci/run uses it too)"
    return found[-1]


def _stock_python(where: Path) -> Path:
    """A Python 3.9 whose ``python3 -m venv`` gives pip 21.2.4; returns its bin folder."""
    source = _pyenv_39()
    prefix = where / "stock-python3.9"
    subprocess.run(["cp", "-al", str(source), str(prefix)], check=True)
    ensurepip = prefix / "lib" / "python3.9" / "ensurepip"
    text = (ensurepip / "__init__.py").read_text(encoding="utf-8")
    for path in [ensurepip / "__init__.py", *ensurepip.glob("_bundled/pip-*.whl")]:
        path.unlink()  # hard links: unlink, never write through them into pyenv's copy
    shutil.rmtree(ensurepip / "__pycache__", ignore_errors=True)
    text = re.sub(r'_PIP_VERSION = "[^"]+"', f'_PIP_VERSION = "{STOCK_PIP}"', text)
    (ensurepip / "__init__.py").write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"pip=={STOCK_PIP}",
                    "-d", str(ensurepip / "_bundled")], check=True, timeout=300)
    return prefix / "bin"


def _fresh_clone(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "renders", "build")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _try_it(lang: str) -> str:
    section = [code for language, code, sec in blocks() if sec == "## Try it (fresh machine)" and language == lang]
    return [line for line in section[0].splitlines() if line.strip() and not line.lstrip().startswith(("#", "::"))][0]


def test_readme_first_command_works_with_the_stock_mac_pip(tmp_path):
    bin_dir = _stock_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    check = subprocess.run(["python3", "-c", "import ensurepip, sys; print(sys.version_info[:2], ensurepip.version())"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == f"(3, 9) {STOCK_PIP}"  # the stand-in is what a stock Mac has
    clone = _fresh_clone(tmp_path / "comfy-cluster")
    line = _try_it("bash")
    out = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (line, out.stdout[-2000:], out.stderr[-3000:])
    assert "failed: 0" in out.stdout and "ratio:" in out.stdout


def test_windows_forms_are_the_same_command():
    """cmd.exe and PowerShell run the same steps (``py`` for ``python3``, their own separators
    and activation scripts), so the tested bash form stands for them."""
    bash = _try_it("bash")
    for lang, sep in (("bat", " && "), ("powershell", "; ")):
        line = _try_it(lang)
        steps = line.split(sep)
        assert steps[0] == bash.split(" && ")[0].replace("python3 ", "py "), (lang, line)
        assert steps[2:] == bash.split(" && ")[2:], (lang, line)
