"""Install comfy-cluster's dependencies for Nuke's Python into a folder the Nuke plugin uses.

Nuke ships its own Python, usually without pip access for artists, and ``pydantic-core`` is a
compiled package: the wheel must match Nuke's Python version and the machine. This command runs
with *any* Python 3 on the artist's machine and asks pip for wheels built for Nuke's Python::

    python comfy_cluster/nuke_setup.py --nuke 15                 # Nuke 15 = Python 3.10
    python -m comfy_cluster.nuke_setup --python-version 3.11 --platform win_amd64 --target D:/libs

It runs ``pip install --target DIR --python-version X.Y --only-binary=:all: --platform P
--implementation cp requests websocket-client pydantic``. ``nuke_plugin/init.py`` adds
``COMFY_CLUSTER_LIBS`` (default ``~/.nuke/comfy_cluster_libs``) to ``sys.path``.

Only the standard library is used here, so running the file by its path works on a Python
that has none of comfy-cluster's dependencies (``python -m comfy_cluster.nuke_setup`` imports
the package first, which needs pydantic).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

__all__ = [
    "NUKE_PYTHON",
    "REQUIREMENTS",
    "DEFAULT_TARGET",
    "default_platforms",
    "python_for_nuke",
    "pip_command",
    "main",
]

# Nuke release -> its Python (Foundry's release notes; Nuke 13 is too old for comfy-cluster).
NUKE_PYTHON: Dict[int, str] = {13: "3.7", 14: "3.9", 15: "3.10", 16: "3.11"}
# Keep in step with pyproject.toml's dependencies.
REQUIREMENTS = ("requests>=2.25", "websocket-client>=1.6", "pydantic>=2.5,<3")
DEFAULT_TARGET = os.path.join("~", ".nuke", "comfy_cluster_libs")
LIBS_ENV = "COMFY_CLUSTER_LIBS"
_VERSION = re.compile(r"^3\.(\d+)$")


class SetupError(Exception):
    """A wrong argument; the message says what to give instead."""


def default_platforms(system: Optional[str] = None, machine: Optional[str] = None) -> List[str]:
    """pip ``--platform`` tags for this machine (the one Nuke runs on, as a rule)."""
    system = (system or sys.platform).lower()
    machine = (machine or platform.machine()).lower()
    arm = machine in ("arm64", "aarch64")
    if system.startswith("linux"):
        return ["manylinux2014_aarch64" if arm else "manylinux2014_x86_64"]
    if system.startswith(("win", "cygwin")):
        return ["win_arm64" if arm else "win_amd64"]
    if system.startswith("darwin"):
        return ["macosx_11_0_arm64"] if arm else ["macosx_10_12_x86_64"]
    raise SetupError(f"cannot tell the wheel platform of {system}/{machine}: give --platform")


def python_for_nuke(major: int) -> str:
    """Nuke's Python version for a Nuke release; raises SetupError for unknown or too old ones."""
    version = NUKE_PYTHON.get(major)
    if version is None:
        known = ", ".join(f"Nuke {k} = Python {v}" for k, v in sorted(NUKE_PYTHON.items()))
        raise SetupError(
            f"the Python of Nuke {major} is not known here ({known}); run Nuke's Python with "
            "'import sys; print(sys.version)' and give --python-version"
        )
    return version


def _check_version(version: str) -> str:
    match = _VERSION.match(version.strip())
    if not match:
        raise SetupError(f"--python-version: expected 3.X (for example 3.10), got {version!r}")
    if int(match.group(1)) < 9:
        raise SetupError(f"--python-version {version}: comfy-cluster needs Python 3.9 or later (Nuke 14 and later)")
    return version.strip()


def pip_command(
    python_version: str,
    target: str,
    platforms: Sequence[str],
    *,
    python: Optional[str] = None,
    requirements: Sequence[str] = REQUIREMENTS,
) -> List[str]:
    """The pip command line that installs ``requirements`` for that Python into ``target``."""
    cmd = [python or sys.executable, "-m", "pip", "install", "--upgrade", "--target", target]
    cmd += ["--python-version", _check_version(python_version), "--only-binary=:all:"]
    for tag in platforms:
        cmd += ["--platform", tag]
    cmd += ["--implementation", "cp"]
    cmd += list(requirements)
    return cmd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nuke_setup",
        description="Install requests, websocket-client and pydantic for Nuke's Python into a folder "
        "that the comfy-cluster Nuke plugin adds to sys.path.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--python-version", help="Nuke's Python, for example 3.10 (Nuke 15) or 3.11 (Nuke 16)")
    which.add_argument("--nuke", type=int, metavar="MAJOR", help="Nuke's major version: 14, 15 or 16")
    parser.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        metavar="TAG",
        help="wheel platform tag(s), e.g. manylinux2014_x86_64, win_amd64, macosx_11_0_arm64 "
        "(default: this machine's; repeat for several)",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get(LIBS_ENV) or DEFAULT_TARGET,
        help=f"the folder to install into (default: ${LIBS_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        version = args.python_version or python_for_nuke(args.nuke)
        version = _check_version(version)
        if args.platforms:
            platforms = list(args.platforms)
        else:
            platforms = default_platforms()
            print(f"platform: {', '.join(platforms)} (this machine; use --platform for another one)")
        target = os.path.abspath(os.path.expanduser(os.path.expandvars(args.target)))
        cmd = pip_command(version, target, platforms)
    except SetupError as exc:
        print(f"nuke_setup: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(" ".join(_quote(c) for c in cmd))
        return 0
    print(f"installing for Python {version} ({', '.join(platforms)}) into {target}")
    os.makedirs(target, exist_ok=True)
    code = subprocess.call(cmd)
    if code != 0:
        print(f"nuke_setup: pip failed (exit status {code})", file=sys.stderr)
        return code
    default = os.path.abspath(os.path.expanduser(DEFAULT_TARGET))
    print("done.")
    if target != default:
        print(f"Before starting Nuke, set {LIBS_ENV}={target}")
    print("Then add the nuke_plugin folder of comfy-cluster to NUKE_PATH; its init.py puts this folder on sys.path.")
    return 0


def _quote(arg: str) -> str:
    return f'"{arg}"' if (not arg or any(c in arg for c in " <>|&;'")) else arg


if __name__ == "__main__":  # pragma: no cover - the command line
    sys.exit(main())
