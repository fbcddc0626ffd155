"""Minimal PNG writing and header reading, so the mock server needs no imaging library.

The mock's images are solid colours, so a PNG is written row by row through one zlib stream:
even a large image compresses to a few kilobytes and is never held raw in memory.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Dict, Optional, Tuple

__all__ = ["PNG_SIGNATURE", "png_bytes", "write_png", "read_png_size", "read_png_first_pixel"]

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


def read_png_first_pixel(data: bytes) -> Optional[Tuple[Tuple[int, ...], str]]:
    """The first pixel of an 8- or 16-bit PNG scaled to 0-255, with its mode (``L``, ``LA``,
    ``RGB``, ``RGBA``), or None for anything else (palette PNGs, not a PNG).

    The mock's images are solid colours, and row 0's first pixel is stored raw whatever the
    row's filter (every predictor of it is 0), so no unfiltering is needed.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos, idat, depth, colour = 8, [], 8, -1
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            depth, colour = body[8], body[9]
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    modes = {0: "L", 4: "LA", 2: "RGB", 6: "RGBA"}
    if colour not in modes or depth not in (8, 16) or not idat:
        return None
    mode = modes[colour]
    size = len(mode) * depth // 8
    raw = zlib.decompressobj().decompress(b"".join(idat), 1 + size)
    if len(raw) < 1 + size:
        return None
    if depth == 8:
        values = tuple(raw[1 : 1 + size])
    else:
        values = tuple(round(int.from_bytes(raw[1 + 2 * i : 3 + 2 * i], "big") / 257) for i in range(len(mode)))
    return values, mode
