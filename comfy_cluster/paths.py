"""Safe local paths for files whose names come from a server.

A server chooses output file names and subfolders. Joined naively into a local path, a name
such as ``../../.bashrc``, ``/etc/passwd``, ``C:\\x`` or one with a NUL byte would write outside
the target folder: :func:`safe_join` refuses those, and checks the resolved path (so a
symlinked subfolder inside the target cannot lead outside either).

Names that are merely unusable on Windows (``CON.png``, ``nul``, ``a?.png``, a trailing dot or
space) are escaped, not refused, and by Windows' rules on every OS: a folder written on Linux
is often read from Windows over a share, and the same job must give the same names everywhere.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import List

from .errors import UnsafePathError

__all__ = ["safe_join", "check_part", "windows_safe_name", "fit_name", "is_inside", "local_target", "MAX_NAME_BYTES"]

_DRIVE = re.compile(r"^[A-Za-z]:")
# Characters Windows refuses in a name (besides the separators): <>:"|?* and controls 1..31.
_BAD_CHARS = re.compile(r'[<>:"|?*\x01-\x1f]')
# Device names Windows reserves, with any extension (CON.png) and trailing spaces (CON .png).
# Python's ntpath.isreserved (3.13) lists the superscript digits too; COM0/LPT0 are reserved
# by newer Windows versions.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{d}" for dev in ("COM", "LPT") for d in "0123456789\u00b9\u00b2\u00b3"}
)


def windows_safe_name(name: str) -> str:
    """``name`` (one path component) escaped so Windows can create it, on every OS.

    Refused characters become ``_``; trailing dots and spaces (which Windows drops, so that
    ``x.png.`` would become ``x.png`` and ``.. `` would become ``..``) become ``_``; a
    reserved device name gets ``_`` after its base name (``CON.png`` -> ``CON_.png``).
    """
    out = _BAD_CHARS.sub("_", name)
    stripped = out.rstrip(". ")
    if stripped != out:
        out = stripped + "_" * (len(out) - len(stripped))
    base, dot, rest = out.partition(".")
    if base.rstrip(" ").upper() in _RESERVED:
        out = f"{base}_{dot}{rest}"
    return fit_name(out)


#: The longest name one folder entry can have: 255 bytes of UTF-8 on Linux (ext4) and macOS
#: (APFS), 255 UTF-16 units on Windows (NTFS). A 131-character CJK name is fine on NTFS and
#: 393 bytes on Linux.
MAX_NAME_BYTES = 255
_EXT = re.compile(r"(\.[A-Za-z0-9]{1,12})+$")  # .png, .tar.gz, .0001.exr: kept when a name is cut


def _name_size(name: str) -> int:
    return max(len(name.encode("utf-8", "surrogatepass")), len(name.encode("utf-16-le", "surrogatepass")) // 2)


def fit_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` unchanged if every OS can store it, else cut to ``limit`` bytes of UTF-8 (and
    UTF-16 units), its extension kept and ``~`` + 8 hex digits of a hash of the whole name put
    before it, so two long names that differ only after the cut stay two names, and one name
    is cut the same way on every machine."""
    if _name_size(name) <= limit:
        return name
    import hashlib

    m = _EXT.search(name)
    ext = m.group(0) if m and m.start() > 0 else ""
    stem = name[: len(name) - len(ext)]
    tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while stem and _name_size(stem + tag + ext) > limit:
        stem = stem[:-1]  # whole characters: never half a UTF-8 sequence
    return (stem + tag + ext) if _name_size(stem + tag + ext) <= limit else tag + ext[-(limit - len(tag)):]


def check_part(value: str, what: str, *, allow_empty: bool = False) -> List[str]:
    """The escaped path components of a server-given ``value``; UnsafePathError if it escapes.

    Refused (never escaped): a NUL byte, an absolute path or drive, ``..``, and a drive letter
    inside the value (``a/C:x``), which Windows would take as another drive.
    """
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
        if _DRIVE.match(p):
            raise UnsafePathError(f"{what}: drive letter in {value!r}")
    if not parts and not allow_empty:
        raise UnsafePathError(f"{what}: no file name in {value!r}")
    return [windows_safe_name(p) for p in parts]


def is_inside(root: str, path: str, pathmod: ModuleType = os.path) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute and normalised).

    ``commonpath`` rather than a prefix test: a root that is a drive or share (``D:\\``,
    ``\\\\server\\share\\``, ``/``) already ends in a separator. Case-insensitive where the OS
    is (``normcase``).
    """
    drive, rest = pathmod.splitdrive(root)
    if drive and not rest:  # a bare share or drive (\\server\share, D:) means its root
        root = drive + pathmod.sep
    r, p = pathmod.normcase(root), pathmod.normcase(path)
    try:
        return bool(pathmod.commonpath([r, p]) == pathmod.commonpath([r]))
    except ValueError:  # different drives, or absolute mixed with relative
        return False


def local_target(root: str, subfolder: str, filename: str, pathmod: ModuleType = os.path) -> str:
    """``root/subfolder/filename`` with every server-given part checked and escaped.

    Pure (touches no file): ``pathmod`` may be ``ntpath`` to see what Windows would get.
    """
    sub_parts = check_part(subfolder, "subfolder", allow_empty=True)
    name_parts = check_part(filename, "filename")
    if len(name_parts) != 1:
        raise UnsafePathError(f"filename: must be a plain name, got {filename!r}")
    target = pathmod.join(root, *sub_parts, name_parts[0])
    if not is_inside(root, target, pathmod):
        raise UnsafePathError(f"subfolder {subfolder!r} leads outside {root}")
    return target


def safe_join(root: str, subfolder: str, filename: str) -> str:
    """``root/subfolder/filename``, guaranteed to stay inside ``root`` once resolved."""
    root_real = os.path.realpath(root)
    target = local_target(root_real, subfolder, filename)
    parent_real = os.path.realpath(os.path.dirname(target))
    if not is_inside(root_real, parent_real):
        raise UnsafePathError(f"subfolder {subfolder!r} leads outside {root}")
    if os.path.islink(target):
        raise UnsafePathError(f"{filename!r} is a symbolic link in {root}")
    return target
