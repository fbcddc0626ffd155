"""Reading the text files users give (workflows, server lists) as Windows tools write them.

PowerShell's ``>`` and ``Out-File`` (Windows PowerShell 5.1) write UTF-16 with a byte-order
mark; Notepad and ``Set-Content -Encoding UTF8`` write UTF-8 with a BOM. ``json.load`` on a
file opened as plain UTF-8 refuses both, so the encoding is taken from the BOM.
"""

from __future__ import annotations

import codecs

__all__ = ["decode_text", "read_text"]

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes) -> str:
    """``data`` decoded by its BOM (UTF-8, UTF-16, UTF-32), else as UTF-8.

    Raises UnicodeDecodeError for bytes that are none of these.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec)
    return data.decode("utf-8")


def read_text(path: str) -> str:
    """The text of the file at ``path`` (see :func:`decode_text`); OSError/UnicodeDecodeError."""
    with open(path, "rb") as fh:
        return decode_text(fh.read())
