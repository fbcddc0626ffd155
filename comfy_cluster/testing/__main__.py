"""``python -m comfy_cluster.testing [--port 8188 ...]``: run a mock ComfyUI server."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
