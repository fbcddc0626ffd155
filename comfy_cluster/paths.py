"""Safe local paths for files whose names come from a server.

A server chooses output file names and subfolders. Joined naively into a local path, a name
such as ``../../.bashrc``, ``/etc/passwd``, ``C:\\x`` or one with a NUL byte would write outside
the target folder. :func:`safe_join` refuses all of those, and checks the resolved path (so a
symlinked subfolder inside the target cannot lead outside either).
"""

from __future__ import annotations

import os
import re

from .errors import UnsafePathError

__all__ = ["safe_join", "check_part"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_part(value: str, what: str, *, allow_empty: bool = False) -> list:
    """The path components of a server-given ``value``; raises UnsafePathError if unsafe."""
    if not isinstance(value, str):
        raise UnsafePathError(f"{what}: not a string")
    if "\x00" in value:
        raise UnsafePathError(f"{what}: contains a NUL byte")
    if value == "":
        if allow_empty:
            return []
        raise UnsafePathError(f"{what}: empty")
    if value.startswith(("/", "\\")) or _DRIVE.match(value) or os.path.isabs(value):
        raise UnsafePathError(f"{what}: absolute path {value!r}")
    parts = [p for p in re.split(r"[\\/]+", value) if p not in ("", ".")]
    for p in parts:
        if p == "..":
            raise UnsafePathError(f"{what}: '..' in {value!r}")
        if _DRIVE.match(p) or ":" in p:
            # A colon can name a drive or an NTFS stream on Windows.
            raise UnsafePathError(f"{what}: ':' in {value!r}")
    if not parts and not allow_empty:
        raise UnsafePathError(f"{what}: no file name in {value!r}")
    return parts


def safe_join(root: str, subfolder: str, filename: str) -> str:
    """``root/subfolder/filename``, guaranteed to stay inside ``root`` once resolved."""
    sub_parts = check_part(subfolder, "subfolder", allow_empty=True)
    name_parts = check_part(filename, "filename")
    if len(name_parts) != 1:
        raise UnsafePathError(f"filename: must be a plain name, got {filename!r}")
    root_real = os.path.realpath(root)
    target = os.path.join(root_real, *sub_parts, name_parts[0])
    parent_real = os.path.realpath(os.path.dirname(target))
    if parent_real != root_real and not parent_real.startswith(root_real + os.sep):
        raise UnsafePathError(f"subfolder {subfolder!r} leads outside {root}")
    if os.path.islink(target):
        raise UnsafePathError(f"{filename!r} is a symbolic link in {root}")
    return target
