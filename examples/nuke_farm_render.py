"""Run a "ComfyUI Cluster Run" node's frames on a render farm, with ``nuke -t``.

    nuke -t examples/nuke_farm_render.py SCRIPT.nk NODE [--frames=FIRST-LAST] [--version=vNNN]

For example, a farm task for frames 1001-1020 of ComfyUIClusterRun1, writing into v004::

    nuke -t examples/nuke_farm_render.py /shows/abc/sh010/comp/sh010_comp_v003.nk ComfyUIClusterRun1 --frames=1001-1020 --version=v004

Give the frames as ``--frames=FIRST-LAST``, one argument: ``nuke -t`` removes a last argument
that is a number or a frame range from the script's arguments (Foundry, "Using the
Command-line"), so a farm command line ending in ``<STARTFRAME> <ENDFRAME>`` lost its last
frame. The older ``FIRST LAST`` (or ``FIRST-LAST``) after NODE still works, also as the last
arguments: what Nuke stripped is taken back from ``nuke.rawArgs``.

The farm machine needs what an artist's Nuke needs: ``nuke_plugin`` on ``NUKE_PATH`` (its
``init.py`` runs under ``nuke -t`` too), the dependencies for that Nuke (``nuke_setup.py``) and
``NUKE_COMFYUI_SERVERS``. The script is opened read-only in spirit: nothing is saved, and the
node's id (hence its folder) is the one saved in the script. Frames go where the node's output
folder says (by default next to the script, so the farm and the artists see them); give every
task of one job the same ``--version`` so they fill one version folder (each task keeps its
working files in a folder of its own inside it). Progress is printed; ComfyUI's errors too.

A task killed without a signal (Windows' TerminateProcess, SIGKILL) cannot cancel its jobs: the
next task on the same version does it (each task keeps a job ledger there), or ``--reap`` (with
``--version``) alone, for a job that will not run again (docs/FARM.md).

Exit status: 0 every frame done; 1 some frames failed (listed on stderr; a plate frame missing
upstream fails its frame, with the file's name); 2 bad arguments or no such node; 130
interrupted by Ctrl-C or the farm's SIGTERM (the jobs were cancelled on their servers).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

# A number or a frame range as Nuke's command line reads one (what nuke -t strips when last).
_FRAME_ARG = re.compile(r"^-?\d+(?:[-,]-?\d+(?:x\d+)?)?$")
_RANGE = re.compile(r"^(-?\d+)(?:[-,](-?\d+))?$")


def restore_stripped(argv: List[str], raw_args: Sequence[str]) -> List[str]:
    """``argv`` with the trailing frame range ``nuke -t`` removed from it put back.

    ``raw_args`` is ``nuke.rawArgs`` (every argument Nuke got). When it ends with ``argv``
    followed by one number or frame range, that argument was stripped by Nuke.
    """
    raw = [str(a) for a in raw_args]
    if not raw or not _FRAME_ARG.match(raw[-1]) or len(raw) < len(argv) + 1:
        return list(argv)
    if raw[len(raw) - len(argv) - 1 : -1] == list(argv):
        return list(argv) + [raw[-1]]
    return list(argv)


def parse_frames(values: Sequence[str], single: bool = True) -> Optional[Tuple[int, int]]:
    """``["1001", "1020"]``, ``["1001-1020"]``, ``["1001,1020"]`` or (with ``single``) ``["7"]``
    -> (first, last); ``[]`` -> None (the node's range). Raises ValueError with the reason.

    The positional form refuses one lone number: it is what is left of ``FIRST LAST`` when Nuke
    stripped LAST and ``nuke.rawArgs`` could not give it back, and running that one frame would
    quietly skip the rest of the task's frames."""
    if not values:
        return None
    if not single and len(values) == 1 and re.fullmatch(r"-?\d+", values[0]):
        raise ValueError(f"frames {values[0]}: give FIRST-LAST (a lone number is FIRST LAST whose LAST nuke -t removed)")
    if len(values) == 2 and all(re.fullmatch(r"-?\d+", v) for v in values):
        first, last = int(values[0]), int(values[1])
    elif len(values) == 1 and _RANGE.match(values[0]):
        match = _RANGE.match(values[0])
        assert match is not None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
    else:
        raise ValueError(f"frames {' '.join(values)!r}: give FIRST-LAST (e.g. --frames=1001-1020)")
    if last < first:
        raise ValueError(f"frames {first}-{last}: FIRST must not be after LAST")
    return first, last


def main(argv: Optional[List[str]] = None, open_script: Optional[Callable[[str], None]] = None) -> int:
    import nuke

    if argv is None:
        argv = restore_stripped(sys.argv[1:], getattr(nuke, "rawArgs", None) or [])
    parser = argparse.ArgumentParser(prog="nuke -t nuke_farm_render.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="the Nuke script (.nk)")
    parser.add_argument("node", help="the ComfyUI Cluster Run node's name (Group.Node inside a group)")
    parser.add_argument("range", nargs="*", metavar="FIRST LAST", help="frames, older form of --frames")
    parser.add_argument("--frames", default="", help="FIRST-LAST (default: the node's range); write --frames=FIRST-LAST")
    parser.add_argument("--version", default="", help="write into this version folder (vNNN) of the node")
    parser.add_argument("--reap", action="store_true", help="only cancel the jobs that killed tasks left in --version, then exit")
    try:
        args = parser.parse_intermixed_args(argv)  # FIRST LAST may follow --version
    except SystemExit as exc:  # argparse printed why
        return 2 if exc.code else 0
    try:
        if args.frames and args.range:
            raise ValueError("give the frames once: --frames=FIRST-LAST or FIRST LAST")
        frame_range = parse_frames([args.frames]) if args.frames else parse_frames(args.range, single=False)
    except ValueError as exc:
        print(f"nuke_farm_render: {exc}", file=sys.stderr)
        return 2

    # Importing the plugin's run module needs init.py to have run (nuke_plugin on NUKE_PATH).
    run = __import__("comfy_cluster_nuke.run").run
    (open_script or nuke.scriptOpen)(args.script)
    node = nuke.toNode(args.node)
    if node is None:
        print(f"nuke_farm_render: no node {args.node} in {args.script}", file=sys.stderr)
        return 2
    if args.reap:
        if not args.version:
            print("nuke_farm_render: --reap needs --version", file=sys.stderr)
            return 2
        print(f"nuke_farm_render: {run.reap(node, args.version)} job(s) of killed tasks cancelled")
        return 0
    frames = range(frame_range[0], frame_range[1] + 1) if frame_range else None
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
    sys.exit(main())
