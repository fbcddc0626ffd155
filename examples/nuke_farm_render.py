"""Run a "ComfyUI Cluster Run" node's frames on a render farm, with ``nuke -t``.

    nuke -t examples/nuke_farm_render.py SCRIPT.nk NODE [FIRST LAST] [--version vNNN]

For example, a farm task for frames 1001-1020 of ComfyUIClusterRun1, writing into v004::

    nuke -t examples/nuke_farm_render.py /shows/abc/sh010/comp/sh010_comp_v003.nk ComfyUIClusterRun1 1001 1020 --version v004

The farm machine needs what an artist's Nuke needs: ``nuke_plugin`` on ``NUKE_PATH`` (its
``init.py`` runs under ``nuke -t`` too), the dependencies for that Nuke (``nuke_setup.py``) and
``NUKE_COMFYUI_SERVERS``. The script is opened read-only in spirit: nothing is saved. Frames go
where the node's output folder says (by default next to the script, so the farm and the artists
see them); give every task of one job the same ``--version`` so they fill one version folder.
Progress is printed; ComfyUI's errors too.

Exit status: 0 every frame done; 1 some frames failed (listed on stderr); 2 bad arguments or no
such node; 130 interrupted by Ctrl-C or the farm's SIGTERM (the jobs were cancelled on their
servers).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator, List, Optional


def main(argv: Optional[List[str]] = None, open_script: Optional[Callable[[str], None]] = None) -> int:
    parser = argparse.ArgumentParser(prog="nuke -t nuke_farm_render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="the Nuke script (.nk)")
    parser.add_argument("node", help="the ComfyUI Cluster Run node's name (Group.Node inside a group)")
    parser.add_argument("range", nargs="*", type=int, metavar="FIRST LAST", help="frames (default: the node's range)")
    parser.add_argument("--version", default="", help="write into this version folder (vNNN) of the node")
    args = parser.parse_args(argv)
    if len(args.range) not in (0, 2) or (args.range and args.range[1] < args.range[0]):
        print("nuke_farm_render: give FIRST LAST (FIRST <= LAST), or no range", file=sys.stderr)
        return 2

    import nuke

    # Importing the plugin's run module needs init.py to have run (nuke_plugin on NUKE_PATH).
    run = __import__("comfy_cluster_nuke.run").run
    (open_script or nuke.scriptOpen)(args.script)
    node = nuke.toNode(args.node)
    if node is None:
        print(f"nuke_farm_render: no node {args.node} in {args.script}", file=sys.stderr)
        return 2
    frames = range(args.range[0], args.range[1] + 1) if args.range else None
    try:
        with _termination_interrupts():
            paths = run.submit(node, frames=frames, version=args.version)
    except (run.RunCancelled, KeyboardInterrupt) as exc:
        print(f"nuke_farm_render: {exc}", file=sys.stderr)
        return 130
    except run.RunError as exc:
        print(f"nuke_farm_render: {exc}", file=sys.stderr)
        return 1 if exc.errors else 2
    print(f"nuke_farm_render: {len(paths)} frame(s) done")
    return 0


@contextlib.contextmanager
def _termination_interrupts() -> Iterator[None]:
    """The farm stops a task with SIGTERM (Ctrl-Break on Windows): while the run goes on, make
    it a KeyboardInterrupt, which cancels the jobs on their servers as Ctrl-C does."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    saved = []
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGBREAK"):
            if hasattr(signal, name):
                number = getattr(signal, name)
                saved.append((number, signal.signal(number, interrupt)))
    try:
        yield
    finally:
        for number, previous in saved:
            signal.signal(number, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
