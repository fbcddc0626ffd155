"""Sampling previews for clients that asked for them with metadata (ComfyUI's web page).

The pool's sockets to the servers do not negotiate ``supports_preview_metadata``, so servers
send ComfyUI's plain ``PREVIEW_IMAGE`` frames (type 1: 4-byte image format, then the image).
ComfyUI's page (frontend 1.27) shows a preview on a node only from a
``PREVIEW_IMAGE_WITH_METADATA`` frame (type 4), which names the node and the prompt; a server
sends those to a client whose first websocket message said it supports them. The gateway does
the same: it knows which node of which job each preview belongs to and rewraps the frame.
"""

from __future__ import annotations

import json
import struct
from typing import Optional

__all__ = ["with_metadata", "PREVIEW_IMAGE", "PREVIEW_IMAGE_WITH_METADATA"]

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_PNG = 2  # ComfyUI's image format number in a PREVIEW_IMAGE frame (1: JPEG)


def with_metadata(frame: bytes, prompt_id: str, node: Optional[str]) -> bytes:
    """``frame`` as ComfyUI's ``PREVIEW_IMAGE_WITH_METADATA`` frame for ``node`` of
    ``prompt_id``; any other frame (or a preview of no known node) is returned as it is."""
    if node is None or len(frame) < 8:
        return frame
    kind, image_format = struct.unpack(">II", frame[:8])
    if kind != PREVIEW_IMAGE:
        return frame
    metadata = {
        "node_id": node,
        "prompt_id": prompt_id,
        "display_node_id": node,
        "parent_node_id": None,  # the servers run expanded prompts: every node is top level
        "real_node_id": node,
        "image_type": "image/png" if image_format == _PNG else "image/jpeg",
    }
    encoded = json.dumps(metadata).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(encoded)) + encoded + frame[8:]
