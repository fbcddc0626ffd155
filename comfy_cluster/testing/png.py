"""Minimal PNG writing and header reading, so the mock server needs no imaging library.

The mock's images are solid colours, so a PNG is written row by row through one zlib stream:
even a large image compresses to a few kilobytes and is never held raw in memory.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Dict, Optional, Tuple

__all__ = ["PNG_SIGNATURE", "png_bytes", "write_png", "read_png_size"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _encode(width: int, height: int, rgb: Tuple[int, int, int], text: Optional[Dict[str, str]]) -> bytes:
    if width < 1 or height < 1:
        raise ValueError(f"PNG size must be positive, got {width}x{height}")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    row = b"\x00" + bytes(bytearray(rgb)) * width  # filter type 0 (None) then the pixels
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    out = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        # tEXt is Latin-1 by definition; ComfyUI stores the prompt JSON there too.
        out.append(_chunk(b"tEXt", key.encode("latin-1", "replace") + b"\x00" + value.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", b"".join(parts)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def png_bytes(width: int, height: int, rgb: Tuple[int, int, int] = (0, 0, 0), text: Optional[Dict[str, str]] = None) -> bytes:
    """Return a solid-colour RGB PNG of ``width`` x ``height`` with optional tEXt entries."""
    return _encode(width, height, rgb, text)


def write_png(
    path: str,
    width: int,
    height: int,
    rgb: Tuple[int, int, int] = (0, 0, 0),
    text: Optional[Dict[str, str]] = None,
) -> int:
    """Write a solid-colour PNG to ``path``; returns the number of bytes written."""
    data = _encode(width, height, rgb, text)
    with open(path, "wb") as handle:
        handle.write(data)
    return len(data)


def read_png_size(handle: BinaryIO) -> Optional[Tuple[int, int]]:
    """Width and height from a PNG's IHDR, or None when the stream is not a PNG."""
    head = handle.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)
