"""Install comfy-cluster's dependencies for Nuke's Python into a folder the Nuke plugin uses.

``pydantic-core`` is compiled: its wheel must match Nuke's Python version *and* the platform of
the running Nuke (an x86_64 Nuke under Rosetta on an arm64 Mac needs x86_64 wheels). So the
dependencies go into one subfolder per Python version and platform of the folder
``COMFY_CLUSTER_LIBS`` (default ``~/.nuke/comfy_cluster_libs``), for example
``py310-linux-x86_64`` or ``py311-macos-arm64``; ``nuke_plugin/init.py`` picks the one matching
the running Nuke. Installing for Nuke 16 never touches Nuke 15's folder.

First choice, with Nuke's own Python (version and platform are then right by construction)::

    "/usr/local/Nuke15.1v3/python3" comfy_cluster/nuke_setup.py
    "C:\\Program Files\\Nuke15.1v3\\python.exe" comfy_cluster\\nuke_setup.py

With any other Python 3, name Nuke's Python version (or release) and, when it differs from
this machine's, the platform (repeat ``--platform`` for several; each gets its own folder)::

    python3 comfy_cluster/nuke_setup.py --nuke 15
    python3 comfy_cluster/nuke_setup.py --python-version 3.11 --platform win_amd64 --platform macosx_11_0_arm64

``--gateway`` adds aiohttp, which the "Start gateway" menu entry needs. Only the standard
library is used here, so running the file by its path works on a Python that has none of
comfy-cluster's dependencies.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

try:
    from .consoles import encoding_note, tolerant_output, unquote, unshowable_encoding
except ImportError:  # run as a file (python comfy_cluster/nuke_setup.py): its folder is on sys.path
    from consoles import encoding_note, tolerant_output, unquote, unshowable_encoding  # type: ignore[no-redef,import-not-found]

__all__ = [
    "NUKE_PYTHON",
    "REQUIREMENTS",
    "GATEWAY_REQUIREMENTS",
    "DEFAULT_TARGET",
    "default_platforms",
    "platform_key",
    "platform_key_of_tag",
    "libs_subdir",
    "python_for_nuke",
    "pip_command",
    "main",
]

# Nuke release -> its Python (Foundry's release notes; Nuke 13 is too old for comfy-cluster).
NUKE_PYTHON: Dict[int, str] = {13: "3.7", 14: "3.9", 15: "3.10", 16: "3.11"}
# Keep in step with pyproject.toml's dependencies (and the gateway extra).
REQUIREMENTS = ("requests>=2.25", "websocket-client>=1.6", "pydantic>=2.5,<3")
GATEWAY_REQUIREMENTS = ("aiohttp>=3.9",)
DEFAULT_TARGET = os.path.join("~", ".nuke", "comfy_cluster_libs")
LIBS_ENV = "COMFY_CLUSTER_LIBS"
_VERSION = re.compile(r"^3\.(\d+)$")
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}


class SetupError(Exception):
    """A wrong argument; the message says what to give instead."""


def _system_name(system: str) -> str:
    system = system.lower()
    if system.startswith("linux"):
        return "linux"
    if system.startswith(("win", "cygwin")):
        return "windows"
    if system.startswith("darwin"):
        return "macos"
    raise SetupError(f"cannot tell the wheel platform of {system}: give --platform")


def platform_key(system: Optional[str] = None, machine: Optional[str] = None) -> str:
    """``linux-x86_64``, ``windows-x86_64``, ``macos-arm64``...: the platform of a running Python.

    Run inside Nuke this is Nuke's own platform (under Rosetta an x86_64 Nuke says x86_64).
    """
    name = _system_name(system or sys.platform)
    raw = (machine or platform.machine()).lower()
    arch = _MACHINES.get(raw)
    if arch is None:
        raise SetupError(f"cannot tell the wheel platform of {name}/{raw}: give --platform")
    return f"{name}-{arch}"


def platform_key_of_tag(tag: str) -> str:
    """The :func:`platform_key` a pip ``--platform`` tag installs for (``win_amd64`` -> ``windows-x86_64``)."""
    low = tag.lower()
    if low.startswith("win"):
        system = "windows"
    elif low.startswith("macosx"):
        system = "macos"
    elif "linux" in low:
        system = "linux"
    else:
        raise SetupError(f"--platform {tag}: not a Linux, Windows or macOS wheel tag")
    if low.endswith("universal2"):
        raise SetupError(f"--platform {tag}: universal2 is two platforms; give the arm64 or x86_64 tag of Nuke's build")
    arch = next((v for k, v in _MACHINES.items() if low.endswith("_" + k)), None)
    if arch is None:
        raise SetupError(f"--platform {tag}: cannot tell its machine (x86_64/amd64 or arm64/aarch64)")
    return f"{system}-{arch}"


def libs_subdir(root: str, python_version: str, key: str) -> str:
    """The dependencies folder for one Python version and platform: ``<root>/py310-linux-x86_64``."""
    major, minor = python_version.split(".")[:2]
    return os.path.join(root, f"py{major}{minor}-{key}")


def default_platforms(system: Optional[str] = None, machine: Optional[str] = None) -> List[str]:
    """pip ``--platform`` tags for a running Python (by default this one)."""
    name, arch = platform_key(system, machine).split("-", 1)
    arm = arch == "arm64"
    if name == "linux":
        return ["manylinux2014_aarch64" if arm else "manylinux2014_x86_64"]
    if name == "windows":
        return ["win_arm64" if arm else "win_amd64"]
    return ["macosx_11_0_arm64"] if arm else ["macosx_10_12_x86_64"]


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
        description="Install requests, websocket-client and pydantic for Nuke's Python into the folder "
        "of that Python version and platform, which the comfy-cluster Nuke plugin adds to sys.path. "
        "Run it with Nuke's own Python and no option, or name Nuke's Python with --nuke/--python-version.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--python-version", help="Nuke's Python, for example 3.10 (Nuke 15) or 3.11 (Nuke 16)")
    which.add_argument("--nuke", type=int, metavar="MAJOR", help="Nuke's major version: 14, 15 or 16")
    parser.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        metavar="TAG",
        help="wheel platform tag of Nuke's build, e.g. manylinux2014_x86_64, win_amd64, macosx_11_0_arm64, "
        "macosx_10_12_x86_64 (default: this Python's; repeat for several platforms, each gets its folder)",
    )
    parser.add_argument(
        "--target",
        default=unquote(os.environ.get(LIBS_ENV, "")) or DEFAULT_TARGET,  # cmd.exe keeps set VAR="..." quotes
        help=f"the folder holding one subfolder per Python version and platform (default: ${LIBS_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument("--gateway", action="store_true", help="add aiohttp, for the gateway (ComfyUI Cluster > Start gateway)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command(s) instead of running them")
    return parser


def _plan(args: argparse.Namespace) -> "tuple[str, Dict[str, List[str]]]":
    """(Python version, {platform key: [tags]}) for the arguments."""
    if args.python_version or args.nuke is not None:
        version = _check_version(args.python_version or python_for_nuke(args.nuke))
    else:
        version = _check_version(f"{sys.version_info[0]}.{sys.version_info[1]}")
        print(f"for this Python {version} ({sys.executable}); if it is not Nuke's own, give --nuke or --python-version")
    groups: Dict[str, List[str]] = {}
    if args.platforms:
        for tag in args.platforms:
            groups.setdefault(platform_key_of_tag(tag), []).append(tag)
    else:
        groups[platform_key()] = default_platforms()
        if args.python_version or args.nuke is not None:
            print(f"platform: {', '.join(default_platforms())} (this Python's; use --platform for Nuke's if it differs)")
    return version, groups


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    tolerant_output()  # a cp1252 console (a path with "Ł") must not end in UnicodeEncodeError
    args = _parser().parse_args(argv)
    args.target = unquote(args.target)  # cmd.exe passes single quotes on: --target 'C:\\libs'
    requirements = list(REQUIREMENTS) + (list(GATEWAY_REQUIREMENTS) if args.gateway else [])
    try:
        version, groups = _plan(args)
        root = os.path.abspath(os.path.expanduser(os.path.expandvars(args.target)))
        encoding = unshowable_encoding(root, sys.stdout)
        if encoding:  # the folder is printed below, to be copied into COMFY_CLUSTER_LIBS: say it is not exact
            print(encoding_note(encoding, "the folder " + root.encode(encoding, "replace").decode(encoding)), file=sys.stderr)
        commands = [
            (key, pip_command(version, libs_subdir(root, version, key), tags, requirements=requirements))
            for key, tags in groups.items()
        ]
    except SetupError as exc:
        print(f"nuke_setup: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run and not _has_pip():
        print(
            f"nuke_setup: this Python ({sys.executable}) has no pip. Run it once with "
            "'-m ensurepip --user', or use any other Python 3 with --nuke or --python-version "
            "(and --platform for Nuke's machine).",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        for _, cmd in commands:
            print(" ".join(_quote(c) for c in cmd))
        return 0
    for key, cmd in commands:
        target = cmd[cmd.index("--target") + 1]
        print(f"installing for Python {version} on {key} into {target}")
        os.makedirs(target, exist_ok=True)
        code = subprocess.call(cmd)
        if code != 0:
            print(f"nuke_setup: pip failed for {key} (exit status {code})", file=sys.stderr)
            return code
    default = os.path.abspath(os.path.expanduser(DEFAULT_TARGET))
    print("done.")
    if root != default:
        print(f"Before starting Nuke, set {LIBS_ENV}={root}")
    print("Then add the nuke_plugin folder of comfy-cluster to NUKE_PATH; its init.py picks the folder of the running Nuke.")
    return 0


def _has_pip() -> bool:
    import importlib.util

    return importlib.util.find_spec("pip") is not None


def _quote(arg: str) -> str:
    return f'"{arg}"' if (not arg or any(c in arg for c in " <>|&;'")) else arg


if __name__ == "__main__":  # pragma: no cover - the command line
    sys.exit(main())
