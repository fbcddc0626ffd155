"""``comfy-cluster gateway``: serve the cluster (``NUKE_COMFYUI_SERVERS``) as one ComfyUI URL.

Prints one start-up line (address, servers, strategy) and serves until Ctrl-C or SIGTERM;
then the gateway's unfinished jobs are cancelled on their servers and the pool is closed.
This module prints: it is a terminal's user interface.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, List, Optional, Sequence

__all__ = ["run_gateway", "build_parser", "ENV_TOKEN"]

ENV_TOKEN = "COMFY_CLUSTER_GATEWAY_TOKEN"
EXAMPLE = (
    "examples:\n"
    "  NUKE_COMFYUI_SERVERS='[{\"name\": \"gpu1\", \"host\": \"gpu1\", \"port\": 8188}]' comfy-cluster gateway --port 8188\n"
    "  comfy-cluster gateway --host 0.0.0.0 --token \"$SECRET\" --argv /mnt/comfyui/main.py\n"
    "  comfy-cluster gateway --port 8188 --state postgresql://comfy@db.studio:5432/comfy   (replicas share it)\n"
    "then point any ComfyUI client at http://HOST:PORT (ComfyUI-for-Nuke: NUKE_COMFYUI_URL)."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comfy-cluster gateway",
        description="Serve the cluster (NUKE_COMFYUI_SERVERS) as one ComfyUI server.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (default: ${ENV_TOKEN}, else none)")
    p.add_argument(
        "--state",
        help="where prompts, history and uploads are kept: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: $COMFY_CLUSTER_GATEWAY_STATE, else gateway.sqlite3 in your data folder)",
    )
    p.add_argument("--replica", help="this replica's name on a PostgreSQL state (default HOST:PORT; keep it across restarts)")
    p.add_argument("--strategy", help="least_loaded, round_robin, priority or fastest_completion")
    p.add_argument("--argv", help="ComfyUI's main.py path (or a JSON list) reported as argv in /system_stats (clients derive its folder from argv[0])")
    p.add_argument("--front-end-root", metavar="DIR", help="serve this ComfyUI frontend build (default: the installed comfyui-frontend-package)")
    p.add_argument("--multi-user", action="store_true", help="ComfyUI's multi-user mode: users pick a profile; settings and workflows per user")
    p.add_argument("--user-directory", metavar="DIR", help="where the web UI's users, settings and workflows are kept (default ~/.comfy-cluster/gateway-user)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    return p


def _argv(text: Optional[str]) -> Optional[List[str]]:
    """``--argv``: one path (``/mnt/comfyui/main.py``: the same in every shell) or a JSON list.

    cmd.exe passes single quotes on and drops the double quotes inside them (``'[main.py]'``),
    as Windows PowerShell 5.1 does with ``'["main.py"]'``: one pair of outer quotes is removed,
    and a list that lost its inner quotes is refused with the form that works everywhere.
    """
    if text is None:
        return None
    from ..environment import unquote_env
    from ..textfiles import loads_json, path_problem

    raw = unquote_env("--argv", text)
    if not raw.startswith("["):
        problem = path_problem(raw)
        if problem or not raw:
            raise ValueError(f"--argv: {problem or 'empty'}")
        return [raw]
    try:
        value = loads_json(raw, "--argv")
    except ValueError as exc:
        raise ValueError(f"{exc}; or give the path alone, which every shell passes as it is: --argv /mnt/comfyui/main.py "
                         "(cmd.exe and PowerShell 5.1 drop the double quotes inside a JSON list)") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("--argv: expected one path or a JSON list of strings")
    for item in value:
        problem = path_problem(item)
        if problem:
            raise ValueError(f"--argv: {problem}")
    return value


def run_gateway(argv: Optional[Sequence[str]] = None, *, stop: Optional[threading.Event] = None) -> int:
    """Run the command; ``stop`` (for tests) ends it like SIGTERM does."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from ..errors import ComfyClusterError
        from ..pool import ServerPool
        from ..state import StateURLError, Store, default_state_url, safe_url
        from . import Gateway
    except ImportError as exc:
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN) or None
    url = args.state or default_state_url()
    try:
        extra = _argv(args.argv)
        kwargs: Any = {"strategy": args.strategy} if args.strategy else {}
        store = Store(url)
    except (StateURLError, ValueError) as exc:
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the database refused: one line, no password
        print(f"comfy-cluster gateway: state {safe_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    try:
        # The same clientId as before a restart: the servers send it the events of the
        # jobs it follows again (each replica has its own).
        pool = ServerPool.from_env(client_id=store.client_id(args.replica or "default"), **kwargs)
    except (ComfyClusterError, ValueError) as exc:
        store.close()
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    try:
        gateway = Gateway(
            pool,
            host=args.host,
            port=args.port,
            token=token,
            argv=extra,
            front_end_root=args.front_end_root,
            multi_user=args.multi_user,
            user_dir=args.user_directory,
            state=store,
            replica=args.replica,
        )
        gateway.start()
    except (OSError, ValueError) as exc:
        pool.close()
        store.close()
        print(f"comfy-cluster gateway: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    done = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    names = ", ".join(s.name for s in pool.servers)
    auth = ", token required" if token else ""
    if gateway.replicas is not None:
        auth += f", replica {gateway.replicas.shared.replica}"
    print(f"comfy-cluster gateway on {gateway.url} -> {len(pool.servers)} server(s): {names} (strategy {pool.strategy}{auth}; state {safe_url(url)})", flush=True)
    code = 0
    try:
        while not done.wait(0.5):  # wake up now and then so Ctrl-C is seen on every platform
            pass
    except KeyboardInterrupt:
        code = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        handing_over = gateway.replicas is not None
        what = "handing unfinished jobs over to the other replicas" if handing_over else "cancelling unfinished jobs"
        print(f"comfy-cluster gateway: stopping; {what}", file=sys.stderr, flush=True)
        gateway.stop()
        pool.close(cancel=not handing_over)
        store.close()
    return code
