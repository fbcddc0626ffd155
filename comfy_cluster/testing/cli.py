"""``comfy-cluster mock-server``: run one mock ComfyUI in the foreground.

The main ``comfy-cluster`` command calls :func:`run_mock_server` with the arguments after
``mock-server``; ``python -m comfy_cluster.testing`` does the same. While it runs, commands
read from standard input switch faults, so a user can watch how Nuke copes::

    fault hang | fault refuse | fault 500 | fault malformed | fault truncated | fault huge
    fault off | latency 0.5 | drop-ws | restart [seconds down] | fail-next [message]
    pause | resume | speed 2 | status | help | quit
    route /history 500 3 | route /object_info hang | route off | stall-prompt [SECONDS|off]
    refuse-for 2 | interrupt-ignores-id on|off | mute-ws [CLIENT_ID|off] | drop-ws-late | executions
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import TYPE_CHECKING, List, Optional, Sequence, TextIO

from .faults import parse_fault

if TYPE_CHECKING:  # pragma: no cover - the server (and aiohttp) is imported when run
    from .server import MockComfyServer

__all__ = ["run_mock_server", "build_parser", "apply_command", "main", "COMMANDS_HELP"]

logger = logging.getLogger(__name__)

COMMANDS_HELP = """commands (one per line on standard input):
  fault hang|refuse|500|malformed|truncated|huge   switch a standing fault on
  fault off                                        switch it off
  latency SECONDS                                  delay every answer (0: off)
  drop-ws                                          cut every open websocket
  restart [SECONDS]                                die, forget queue and history, come back
  fail-next [MESSAGE]                              the next job fails with execution_error
  pause / resume                                   freeze running jobs (a stalled GPU) / go on
  speed FACTOR                                     change the speed factor
  status                                           show queue, fault and clients
  route PATH 500|hang|reset|stall [COUNT]          fault the next COUNT requests to PATH (all if no COUNT)
  route off                                        remove route faults, answer held requests
  stall-prompt [SECONDS|off]                       POST /prompt queues the job but answers late (never)
  refuse-for SECONDS                               refuse connections for a while, keep the work
  interrupt-ignores-id on|off                      /interrupt stops whatever runs (old ComfyUI)
  mute-ws [CLIENT_ID|off]                          lose websocket frames (to one client or all)
  drop-ws-late                                     cut websockets, notice the close after the reconnect
  executions                                       executions per prompt_id and their outcomes
  quit                                             stop the server"""

_EXAMPLE = """example:
  comfy-cluster mock-server --port 8188 --speed 2 --models a.safetensors,b.safetensors

Then set NUKE_COMFYUI_SERVERS='[{"name": "mock", "url": "http://127.0.0.1:8188"}]' and use
Nuke as usual. Stop with Ctrl-C.

"""


def build_parser(prog: str = "comfy-cluster mock-server") -> argparse.ArgumentParser:
    """The argument parser of the mock-server command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a mock ComfyUI server (with TestSleep/TestFail nodes) in the foreground.",
        epilog=_EXAMPLE + COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8188, help="port to listen on (0: any free port; default 8188)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--speed", type=float, default=1.0, help="speed factor: TestSleep takes seconds/speed (default 1)")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated checkpoint names (default v1-5-pruned-emaonly.safetensors)",
    )
    parser.add_argument(
        "--model-load-seconds", type=float, default=0.0, metavar="S",
        help="a job whose checkpoint differs from the one last loaded takes S seconds longer (at speed 1; default 0)",
    )
    parser.add_argument("--name", default="mock", help="server name used in logs (default mock)")
    parser.add_argument("--node-types", default=None, help="comma-separated node types to offer (default: all)")
    parser.add_argument("--comfyui-version", default="0.3.64", help="version reported by /system_stats")
    parser.add_argument("--device-name", default="cpu", help="device name reported by /system_stats")
    parser.add_argument("--verbose", "-v", action="store_true", help="log requests and faults")
    return parser


def _split(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def apply_command(server: "MockComfyServer", line: str) -> Optional[str]:
    """Apply one stdin command to a running server; returns the reply (None for quit).

    Raises ValueError for an unknown or malformed command."""
    words = line.strip().split()
    if not words:
        return ""
    command, rest = words[0].lower(), words[1:]
    if command in ("quit", "exit", "stop"):
        return None
    if command == "help":
        return COMMANDS_HELP
    if command == "fault":
        if len(rest) != 1:
            raise ValueError("usage: fault hang|refuse|500|malformed|truncated|huge|off")
        fault = parse_fault(rest[0])
        server.set_fault(fault)
        return f"fault: {fault.value if fault else 'off'}"
    if command == "latency":
        if len(rest) != 1:
            raise ValueError("usage: latency SECONDS")
        server.set_latency(float(rest[0]))
        return f"latency: {server.latency:g}s"
    if command in ("drop-ws", "drop_ws", "dropws"):
        return f"dropped {server.drop_websockets()} websocket(s)"
    if command == "restart":
        down_for = float(rest[0]) if rest else 0.0
        server.restart(down_for=down_for, wait=False)
        return f"restarted; back in {down_for:g}s" if down_for else "restarted"
    if command in ("fail-next", "fail_next", "failnext"):
        message = " ".join(rest) or "injected failure"
        server.fail_next_job(message)
        return f"the next job will fail: {message}"
    if command == "pause":
        server.pause_jobs()
        return "jobs paused"
    if command == "resume":
        server.resume_jobs()
        return "jobs resumed"
    if command == "speed":
        if len(rest) != 1:
            raise ValueError("usage: speed FACTOR")
        server.speed = float(rest[0])
        return f"speed: {server.speed:g}"
    if command == "status":
        running, pending = server.queue_snapshot()
        fault = server.fault
        return (
            f"{server.url} fault={fault.value if fault else 'off'} latency={server.latency:g}s speed={server.speed:g} "
            f"paused={server.jobs_paused} running={running} pending={len(pending)} clients={len(server.connected_clients())} "
            f"done={len(server.executed_prompt_ids)} model={server.loaded_model or '-'} loads={server.model_loads}"
        )
    reply = _apply_injected(server, command, rest)
    if reply is not None:
        return reply
    raise ValueError(f"unknown command {command!r} (try: help)")


def _apply_injected(server: "MockComfyServer", command: str, rest: List[str]) -> Optional[str]:
    """The commands of the faults added for issue 11; None for a command that is not one."""
    if command == "route":
        if rest == ["off"]:
            server.clear_route_faults()
            return "route faults: off"
        if len(rest) not in (2, 3):
            raise ValueError("usage: route PATH 500|hang|reset|stall [COUNT] | route off")
        count = int(rest[2]) if len(rest) == 3 else None
        server.fail_route(rest[0], rest[1], count=count)
        return f"route {rest[0]}: {rest[1]} ({count if count else 'until route off'})"
    if command in ("stall-prompt", "stall_prompt"):
        if rest == ["off"]:
            server.clear_route_faults()
            return "stall-prompt: off"
        delay = float(rest[0]) if rest else None
        server.stall_prompt(delay)
        return f"stall-prompt: answers {'never come' if delay is None else f'come {delay:g}s late'}"
    if command in ("refuse-for", "refuse_for"):
        if len(rest) != 1:
            raise ValueError("usage: refuse-for SECONDS")
        server.refuse_for(float(rest[0]))
        return f"refusing for {float(rest[0]):g}s"
    if command in ("interrupt-ignores-id", "interrupt_ignores_id"):
        if rest not in (["on"], ["off"]):
            raise ValueError("usage: interrupt-ignores-id on|off")
        server.interrupt_ignores_id = rest[0] == "on"
        return f"interrupt-ignores-id: {rest[0]}"
    if command in ("mute-ws", "mute_ws"):
        if rest == ["off"]:
            server.unmute_websockets()
            return "websockets: unmuted"
        server.mute_websockets(rest[0] if rest else None)
        return f"websockets muted: {rest[0] if rest else 'all'}"
    if command in ("drop-ws-late", "drop_ws_late"):
        return f"dropped {server.drop_websockets_late()} websocket(s); closes noticed after the reconnect"
    if command == "executions":
        lines = [f"{r.prompt_id} {r.outcome or 'running'} inputs={sorted(v[1][:12] for v in r.inputs.values())}" for r in server.executions]
        return "\n".join(lines) or "no executions"
    return None


def _wait_forever(stop: threading.Event) -> None:
    # Waiting in short slices keeps Ctrl-C responsive on every platform.
    while not stop.wait(0.5):
        pass


def run_mock_server(argv: Sequence[str], stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None) -> int:
    """Run one mock server until Ctrl-C (or ``quit`` on stdin); returns the exit code."""
    out = stdout if stdout is not None else sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as ex:  # --help or a usage error: argparse has printed already
        return ex.code if isinstance(ex.code, int) else 2
    try:
        from .server import DEFAULT_MODELS, MockComfyServer
    except ImportError as ex:
        out.write(f"error: the mock server needs aiohttp ({ex}); pip install 'comfy-cluster[mock]'\n")
        return 1
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        server = MockComfyServer(
            name=args.name,
            speed=args.speed,
            model_load_seconds=args.model_load_seconds,
            models=_split(args.models) or DEFAULT_MODELS,
            node_types=_split(args.node_types),
            version=args.comfyui_version,
            device_name=args.device_name,
            host=args.host,
            port=args.port,
        )
        server.start()
    except (OSError, ValueError) as ex:
        out.write(f"error: cannot start the mock server: {ex}\n")
        return 1
    stop = threading.Event()
    try:
        load = f", a checkpoint load takes {server.model_load_seconds:g} s" if server.model_load_seconds else ""
        out.write(f"mock ComfyUI '{server.name}' listening on {server.url} (speed {server.speed:g}, models {', '.join(server.models)}{load})\n")
        out.write("Ctrl-C stops it; type 'help' for fault commands\n")
        out.flush()
        source = stdin if stdin is not None else sys.stdin
        if source is not None and not source.closed:
            for line in source:
                try:
                    reply = apply_command(server, line)
                except (ValueError, RuntimeError) as ex:
                    reply = f"error: {ex}"
                if reply is None:
                    stop.set()
                    break
                if reply:
                    out.write(reply + "\n")
                    out.flush()
        if not stop.is_set():
            _wait_forever(stop)  # stdin ended (e.g. </dev/null): keep serving until Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        out.write("mock server stopped\n")
        out.flush()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m comfy_cluster.testing``."""
    return run_mock_server(sys.argv[1:] if argv is None else argv)
