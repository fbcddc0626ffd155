"""The ``comfy-cluster`` command: ``status``, ``submit``, ``demo``, ``mock-server`` and ``gateway``.

This is the one module of the library that prints: it is the user interface of a terminal.
Progress goes to stderr, results (tables, ``--json`` lines) to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import localfiles
from .balance import STRATEGIES
from .cli_inputs import build_workflows, parse_frames, unquote_options
from .consoles import encoding_note, tolerant_output, unshowable_encoding
from .cli_format import CLEAR_SCREEN, Progress, ansi_ok, job_json, status_json, status_table, terminal_width
from .errors import ComfyClusterError, NoServerAvailable
from .paths import fit_name, is_inside, windows_safe_name
from .stopping import Stopped, StopSignals, wait_sliced
from .workflow import WorkflowInputError, frame_workflows, load_workflow, parse_node_input, seeded_copies, set_inputs

__all__ = ["main", "parse_frames", "ideal_makespan"]

log = logging.getLogger(__name__)

# Exit statuses (README "Command line"); stops add 130 (Ctrl-C) or 128 + the signal.
EXIT_OK = 0  # every job succeeded (status: an enabled server is online)
EXIT_FAILED = 1  # a job or a download failed (status: no enabled server online)
EXIT_USAGE = 2  # bad arguments, configuration or input files
EXIT_NO_SERVER = 3  # no server could take the job: all offline, disabled, full or lacking its nodes

EXAMPLES = {
    "status": "example:\n  NUKE_COMFYUI_SERVERS='[{\"host\": \"127.0.0.1\", \"port\": 8188}]' comfy-cluster status --json",
    "submit": (
        "examples:\n"
        "  comfy-cluster submit workflow_api.json --out renders/\n"
        "  comfy-cluster submit workflow_api.json --frames 1001-1050 --frame-input 3.seed --input 10=plate.####.png --out renders/\n"
        "  comfy-cluster submit workflow_api.json --count 4 --set 3.steps=20 --json"
    ),
    "demo": "example:\n  comfy-cluster demo --jobs 30 --speeds 1,2,4",
    "mock-server": "example:\n  comfy-cluster mock-server --port 8188 --speed 2 --models a.safetensors,b.safetensors",
}


# ---------------------------------------------------------------------------------------------
# helpers


def ideal_makespan(jobs: int, speeds: Sequence[float], cost: float) -> float:
    """The best makespan of ``jobs`` equal jobs of ``cost`` seconds (at speed 1) split as whole
    jobs over servers of the given speeds."""
    if jobs <= 0:
        return 0.0
    times = sorted({k * cost / s for s in speeds for k in range(1, jobs + 1)})
    for t in times:
        if sum(int(t * s / cost + 1e-9) for s in speeds) >= jobs:
            return t
    return times[-1]


# ---------------------------------------------------------------------------------------------
# status


def cmd_status(args: argparse.Namespace) -> int:
    from .pool import ServerPool

    ansi = args.watch and not args.json and ansi_ok(sys.stdout)
    with StopSignals(), ServerPool.from_env(background_status=False) as pool:
        while True:
            statuses = pool.status(refresh=True)
            if args.json:
                print(json.dumps([status_json(s) for s in statuses]), flush=True)
            else:
                tty = sys.stdout.isatty()
                if args.watch and tty:
                    # Clear the screen where escape codes work, else a dated rule between tables
                    # (Windows 10's classic console would show the codes as text).
                    print(CLEAR_SCREEN if ansi else f"--- {time.strftime('%H:%M:%S')} ---", end="" if ansi else "\n")
                print(status_table(statuses, terminal_width(sys.stdout) if tty else None), flush=True)
            if not args.watch:
                break
            time.sleep(args.interval)  # a terminal refresh, not synchronisation
    # A disabled server takes no job, online or not: only an enabled one makes the cluster usable.
    return EXIT_OK if any(s.online and s.enabled for s in statuses) else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# submit


def cmd_submit(args: argparse.Namespace) -> int:
    from .pool import ServerPool

    workflows, inputs = build_workflows(args)
    frames = parse_frames(args.frames) if args.frames else None
    kwargs: Dict[str, Any] = {}
    if args.strategy:
        kwargs["strategy"] = args.strategy
    progress = Progress(len(workflows))
    with StopSignals(), ServerPool.from_env(**kwargs) as pool:
        batch = pool.map_async(workflows, inputs=inputs, on_event=progress.on_event, retries=args.retries)
        try:
            wait_sliced(batch.wait)
        except Stopped as stop:
            # Every way to stop (Ctrl-C, kill, a closed terminal, Ctrl-Break) cancels the jobs
            # where they run; further signals are ignored until that is done.
            sys.stderr.write("\ncancelling the jobs on their servers...\n")
            sys.stderr.flush()
            batch.cancel()
            deadline = stop.deadline  # 15 s, or what a closing Windows console leaves
            for job in batch.jobs:  # each job, not only the batch's count: its end is what we report
                wait_sliced(job.wait, max(0.0, deadline - time.monotonic()))
            progress.finish()
            if args.json:
                for i, job in enumerate(batch.jobs):
                    print(json.dumps(job_json(job, frames[i] if frames else None)), flush=True)
            return stop.exit_code
        progress.finish()
        failed = 0
        noted = False
        for i, job in enumerate(batch.jobs):
            frame = frames[i] if frames else None
            err = job.exception()
            if err is not None:
                failed += 1
                if not args.json:
                    print(f"job {job.index} failed: {err}", file=sys.stderr)
            paths: List[str] = []
            if err is None and args.out:
                try:
                    names = [f.filename for f in job.result().files]
                    paths = _with_frame_numbers(job.download(args.out), names, frame, args.out)
                except ComfyClusterError as exc:
                    failed += 1
                    print(f"job {job.index}: download failed: {exc}", file=sys.stderr)
            if args.json:
                out = job_json(job, frame)
                if args.out:
                    out["paths"] = paths
                print(json.dumps(out), flush=True)
            else:
                for p in paths:
                    print(p)
                    encoding = unshowable_encoding(p, sys.stdout)
                    if encoding and not noted:
                        noted = True  # said once, naming the encoding: a path with ? does not exist
                        print(encoding_note(encoding, f"the path {p.encode(encoding, 'replace').decode(encoding)}"), file=sys.stderr)
        if not args.json:
            print(f"{len(batch.jobs) - failed} of {len(batch.jobs)} jobs succeeded", file=sys.stderr)
    errors = [job.exception() for job in batch.jobs]
    if failed and all(isinstance(e, NoServerAvailable) for e in errors if e is not None) and any(errors):
        return EXIT_NO_SERVER
    return EXIT_FAILED if failed else EXIT_OK


_COUNTER = re.compile(r"_\d{5}_$")  # ComfyUI's SaveImage counter: ComfyUI_00001_.png


def _with_frame_numbers(paths: List[str], server_names: List[str], frame: Optional[int], out_dir: str) -> List[str]:
    """Downloaded ``paths`` of one frame's job renamed to carry the frame number, as Nuke's
    Read node expects: the server's ``ComfyUI_00001_.png`` becomes ``ComfyUI.1001.png`` (with
    several files, ``ComfyUI_00001_.1001.png``). Files used in place on shared storage are
    never renamed; a name already taken keeps the downloaded name."""
    if frame is None or len(server_names) != len(paths):
        return paths
    out = []
    root = os.path.realpath(out_dir)
    for path, name in zip(paths, server_names):
        if not is_inside(root, os.path.realpath(path)):
            out.append(path)  # ComfyUI's own file on shared storage
            continue
        stem, ext = os.path.splitext(os.path.basename(path) if not name else windows_safe_name(name))
        if len(paths) == 1:
            stem = _COUNTER.sub("", stem) or stem
        target = os.path.join(os.path.dirname(path), fit_name(f"{stem}.{frame:04d}{ext}"))
        if localfiles.claim(target):
            localfiles.replace(path, target)
            out.append(target)
        else:
            out.append(path)
    return out


# ---------------------------------------------------------------------------------------------
# demo


def demo_workflow(seconds: float, steps: int, seed: int) -> Dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed % 16777216}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "demo"}},
    }


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .testing import MockCluster
    except ImportError:
        print("the demo needs the mock server: pip install 'comfy-cluster[mock]'", file=sys.stderr)
        return EXIT_USAGE
    from .pool import ServerPool

    speeds = [float(s) for s in args.speeds.split(",")]
    print(f"starting {len(speeds)} mock ComfyUI servers on 127.0.0.1 with speeds {', '.join(f'{s:g}' for s in speeds)}", file=sys.stderr)
    with MockCluster(speeds=speeds) as cluster:
        servers = [{"name": f"mock{i + 1}-x{s:g}", "url": srv.url} for i, (s, srv) in enumerate(zip(speeds, cluster.servers))]
        workflows = [demo_workflow(args.seconds, 5, seed) for seed in range(args.jobs)]
        progress = Progress(len(workflows))
        start = time.monotonic()
        with StopSignals(), ServerPool(servers) as pool:
            batch = pool.map_async(workflows, on_event=progress.on_event)
            try:
                wait_sliced(batch.wait)
            except Stopped as stop:
                batch.cancel()
                wait_sliced(batch.wait, max(0.0, stop.deadline - time.monotonic()))
                return stop.exit_code
            makespan = time.monotonic() - start
            progress.finish()
            per: Dict[str, int] = {s["name"]: 0 for s in servers}
            failed = 0
            for job in batch.jobs:
                if job.exception() is None:
                    per[job.result().server] += 1
                else:
                    failed += 1
    ideal = ideal_makespan(args.jobs, speeds, args.seconds)
    print(f"\n{'server':<14}{'speed':>6}{'jobs':>6}")
    for (name, count), s in zip(per.items(), speeds):
        print(f"{name:<14}{s:>6g}{count:>6}")
    print(f"\njobs: {args.jobs}, failed: {failed}")
    print(f"makespan: {makespan:.2f} s   ideal for these speeds: {ideal:.2f} s   ratio: {makespan / ideal:.2f}")
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------


def _positive(kind: Callable[[str], Any], minimum: Optional[float] = None) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above 0, or at least ``minimum`` when given."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if minimum is None and not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if minimum is not None and not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="comfy-cluster",
        description="Run ComfyUI workflows on a cluster of ComfyUI servers (configured by NUKE_COMFYUI_SERVERS).",
        epilog=("examples:\n  comfy-cluster demo\n  comfy-cluster status\n  comfy-cluster submit workflow_api.json --out renders/\n"
                "exit status: 0 done (status: an enabled server online), 1 a job failed (status: none online),\n"
                "  2 bad arguments or configuration, 3 no server could take the job, 130 Ctrl-C, 128+N signal N"),
        formatter_class=fmt,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("status", help="show every server: online, queue, device, VRAM, errors", epilog=EXAMPLES["status"], formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=_positive(float), default=2.0, help="seconds between refreshes with --watch (default 2)")

    p = sub.add_parser("submit", help="run a workflow (or many) on the cluster", epilog=EXAMPLES["submit"], formatter_class=fmt)
    p.add_argument("workflow", help="API-format workflow JSON file")
    p.add_argument("--count", type=_positive(int), default=1, help="run it N times (N >= 1), each with its seed inputs + 0..N-1")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="set an input (value as JSON, else text)")
    p.add_argument("--frames", help="frame range, e.g. 1-100, 1-100x2, 1,5,10-20: one job per frame")
    p.add_argument("--frame-input", metavar="NODE.INPUT", help="the input that receives the frame number (optional with a per-frame --input)")
    p.add_argument("--input", action="append", metavar="NODE=FILE", help="upload FILE for LoadImage NODE (#### or %%04d: per frame)")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), help="default: NUKE_COMFYUI_STRATEGY, else warm_models")
    p.add_argument("--out", help="download the outputs into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object per job")
    p.add_argument("--retries", type=_positive(int, minimum=0), default=2, help="extra attempts on other servers (default 2)")

    p = sub.add_parser("demo", help="run a batch on an embedded mock cluster of three servers", epilog=EXAMPLES["demo"], formatter_class=fmt)
    p.add_argument("--jobs", type=_positive(int), default=30, help="number of jobs (default 30)")
    p.add_argument("--speeds", default="1,2,4", help="server speeds, comma-separated (default 1,2,4)")
    p.add_argument("--seconds", type=_positive(float), default=1.0, help="cost of one job at speed 1 (default 1.0)")

    sub.add_parser("mock-server", help="run a mock ComfyUI server in the foreground", epilog=EXAMPLES["mock-server"], formatter_class=fmt, add_help=False)
    sub.add_parser("gateway", help="serve the cluster as one ComfyUI URL (any ComfyUI client)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    tolerant_output()  # a cp1252 console never ends a command in UnicodeEncodeError
    if args_list[:1] == ["mock-server"]:
        try:
            from .testing.cli import run_mock_server
        except ImportError:
            print("the mock server needs aiohttp: pip install 'comfy-cluster[mock]'", file=sys.stderr)
            return EXIT_USAGE
        return run_mock_server(args_list[1:])
    if args_list[:1] == ["gateway"]:
        from .gateway.cli import run_gateway  # imports aiohttp only when asked to

        return run_gateway(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    # The commands show servers' problems themselves; -v adds the library's own account.
    level = logging.ERROR if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        # Configuration warnings (quotes removed from a variable ...) concern the user here.
        logging.getLogger("comfy_cluster.config").setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    unquote_options(args)
    try:
        if args.command == "status":
            return cmd_status(args)
        if args.command == "submit":
            return cmd_submit(args)
        if args.command == "demo":
            return cmd_demo(args)
    except Stopped as stop:  # stopped before any job was sent
        return stop.exit_code
    except KeyboardInterrupt:
        return 130
    except NoServerAvailable as exc:  # not the user's arguments: the cluster cannot run it now
        print(f"comfy-cluster: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except (ComfyClusterError, ValueError) as exc:
        print(f"comfy-cluster: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a local file: one line, never a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"comfy-cluster: {exc.strerror or exc.__class__.__name__}{where}", file=sys.stderr)
        return EXIT_USAGE
    parser.print_help()
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

