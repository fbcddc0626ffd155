"""record.py (../shared/comfyui-api) through the gateway over real ComfyUI servers, compared by
compare.py with the real server's transcripts.

Usage: python bench/gateway_fidelity.py PORT[,PORT...] [OUT.json] [--one-at-a-time]
(real servers on 127.0.0.1: ../shared/real-comfyui/servers.sh start 3 8341 1,2,4). Prints
compare.py's report; its last line is 'N/25 scenarios match'. See BENCHMARKS.md for the run and
README ("Several prompts run at once") for the differences a cluster cannot avoid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from comfy_cluster import ServerPool  # noqa: E402
from comfy_cluster.gateway import Gateway  # noqa: E402

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "comfyui-api")
SPEC = os.environ.get("COMFY_API_SPEC", SPEC if os.path.isdir(SPEC) else "/work/shared/comfyui-api")


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ports = [int(p) for p in args[0].split(",")]
    out = args[1] if len(args) > 1 else os.path.join(tempfile.mkdtemp(), "gateway.json")
    pool = ServerPool([{"name": f"real{i}", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)], status_ttl=0.5)
    # --one-at-a-time: one job in the pool at once (the others wait in the gateway), as one
    # server runs them: what is left then is what parallel runs change.
    gateway = Gateway(pool, port=0, max_in_pool=1 if "--one-at-a-time" in sys.argv else None).start()
    try:
        subprocess.run([sys.executable, os.path.join(SPEC, "record.py"), gateway.url, out], check=True, timeout=1200)
    finally:
        gateway.stop()
        pool.close()
    return subprocess.run([sys.executable, os.path.join(SPEC, "compare.py"), os.path.join(SPEC, "transcripts.json"), out]).returncode


if __name__ == "__main__":
    sys.exit(main())
