"""Reading the text files users give (workflows, server lists) as Windows tools write them.

PowerShell's ``>`` and ``Out-File`` (Windows PowerShell 5.1) write UTF-16 with a byte-order
mark; Notepad and ``Set-Content -Encoding UTF8`` write UTF-8 with a BOM. ``json.load`` on a
file opened as plain UTF-8 refuses both, so the encoding is taken from the BOM.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Optional

__all__ = ["decode_text", "read_text", "UnreadableText", "loads_json", "path_problem"]

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes) -> str:
    """``data`` decoded by its BOM (UTF-8, UTF-16, UTF-32), else as UTF-8.

    Raises :class:`UnreadableText` (a UnicodeDecodeError) for bytes that are none of these.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableText(exc.encoding, exc.object, exc.start, exc.end, exc.reason) from None


def read_text(path: str) -> str:
    """The text of the file at ``path`` (see :func:`decode_text`); OSError/UnicodeDecodeError."""
    with open(path, "rb") as fh:
        return decode_text(fh.read())


class UnreadableText(UnicodeDecodeError):
    """A text file in none of the encodings read (UTF-8, UTF-16/32 with a BOM); its message
    names the encoding it looks like and how to save it right."""

    def __str__(self) -> str:
        byte = self.object[self.start:self.start + 1]
        guess = "no encoding read here"
        try:
            bytes(self.object).decode("cp1252")
            guess = "Windows' \"ANSI\" code page (cp1252), as Windows PowerShell 5.1's Set-Content and old editors write"
        except UnicodeDecodeError:
            pass
        return (f"not UTF-8 (byte 0x{byte.hex()} at position {self.start}): it looks like {guess}; save it as UTF-8 "
                "(Set-Content -Encoding UTF8, or Notepad's Save As with Encoding UTF-8)")


def loads_json(text: str, source: str) -> Any:
    """``json.loads(text)``; a ValueError ``"<source>: not valid JSON: <why> at character N"``
    otherwise (never the text: it may hold tokens), which for a lone backslash says how to
    write a Windows path (``"Z:\\ComfyUI"`` typed with one backslash)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        msg = getattr(exc, "msg", "invalid JSON").rstrip()
        msg = msg[:-3] if msg.endswith(" at") else msg  # "Invalid control character at"
        pos = getattr(exc, "pos", None)
        at = f" at character {pos}" if pos is not None else ""
        hint = ""
        if "escape" in msg:
            hint = (": a single backslash, as in a Windows path; in JSON write each \\ as \\\\ or use / "
                    "(\"Z:\\\\ComfyUI\" or \"Z:/ComfyUI\")")
        raise ValueError(f"{source}: not valid JSON: {msg}{at}{hint}") from None


_CONTROL_NAMES = {"\r": "a carriage return (\\r)", "\n": "a line break (\\n)", "\t": "a tab (\\t)",
                  "\b": "a backspace (\\b)", "\f": "a form feed (\\f)"}


def path_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a path, or None. A control character in a path read from JSON is
    a Windows path typed with single backslashes: ``"Z:\\renders"`` is ``Z:`` + CR + ``enders``."""
    for c in path:
        if ord(c) < 32 or ord(c) == 127:
            what = _CONTROL_NAMES.get(c, f"the control character {ord(c):#04x}")
            return (f"path {path!r} contains {what}: in JSON a single backslash starts an escape; "
                    "write each \\ of a Windows path as \\\\ or use / (\"Z:/renders\")")
    return None
