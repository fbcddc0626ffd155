"""``comfy-cluster gateway``: serve the cluster (``NUKE_COMFYUI_SERVERS``) as one ComfyUI URL.

Prints one start-up line (address, servers, strategy, who may use it) and serves until it is
stopped in any of the ways the other commands know (Ctrl-C, SIGTERM, a closed terminal,
Ctrl-Break, a closed Windows console: :mod:`comfy_cluster.stopping`); then every waiting client
is told its prompts ended, the gateway's jobs are cancelled on their servers, and the pool is
closed. ``comfy-cluster gateway add-user NAME`` adds a user to the users file and prints the
new token once. This module prints: it is a terminal's user interface.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, List, Mapping, Optional, Sequence

from ..environment import unquote_env
from ..stopping import Stopped, StopSignals, wait_sliced
from .auth import add_user, check_token

__all__ = ["run_gateway", "build_parser", "ENV_TOKEN", "ENV_USERS"]

ENV_TOKEN = "COMFY_CLUSTER_GATEWAY_TOKEN"
ENV_USERS = "COMFY_CLUSTER_GATEWAY_USERS"
MB = 1024 * 1024
EXAMPLE = (
    "examples:\n"
    "  NUKE_COMFYUI_SERVERS='[{\"name\": \"gpu1\", \"host\": \"gpu1\", \"port\": 8188}]' comfy-cluster gateway --port 8188\n"
    "  comfy-cluster gateway add-user alice --users /etc/comfy-cluster/users.json   # prints alice's token\n"
    "  comfy-cluster gateway --host 0.0.0.0 --users /etc/comfy-cluster/users.json --argv /mnt/comfyui/main.py\n"
    "  comfy-cluster gateway --port 8188 --state postgresql://comfy@db.studio:5432/comfy --replica gw1   (replicas share it)\n"
    "then point any ComfyUI client at http://HOST:PORT (ComfyUI-for-Nuke: NUKE_COMFYUI_URL);\n"
    "artists open http://HOST:PORT/ in a browser and sign in with their token (once; /logout ends it)."
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
    p.add_argument("--token", help=f"admin token: 'Authorization: Bearer TOKEN' sees and manages every job (default: ${ENV_TOKEN}, else none)")
    p.add_argument("--users", help=f"users file (names and token hashes; 'add-user' writes it) (default: ${ENV_USERS}, else none)")
    p.add_argument("--trust-user-header", action="store_true", help="take ComfyUI's comfy-user header as the user (a trusted network only)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", help="a web origin allowed besides the gateway's own ('*': any); repeatable")
    p.add_argument("--max-upload-size", type=float, default=100, metavar="MB", help="largest upload and request body in MB (default 100, as ComfyUI)")
    p.add_argument("--ws-queue-size", type=float, default=32, metavar="MB", help="MB queued per client socket before previews are dropped, then the socket closed (default 32)")
    p.add_argument("--history-items", type=int, default=10000, help="history items kept (default 10000, as ComfyUI)")
    p.add_argument("--history-size", type=float, default=256, metavar="MB", help="MB of history kept (default 256)")
    p.add_argument(
        "--state",
        help="where prompts, history and uploads are kept: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: $COMFY_CLUSTER_GATEWAY_STATE, else gateway.sqlite3 in your data folder)",
    )
    p.add_argument("--replica", help="this replica's name on a PostgreSQL state (default HOST:PORT; keep it across restarts)")
    p.add_argument("--strategy", help="warm_models (default), least_loaded, round_robin, priority or fastest_completion")
    p.add_argument("--argv", help="ComfyUI's main.py path (or a JSON list) reported as argv in /system_stats (clients derive its folder from argv[0])")
    p.add_argument("--front-end-root", metavar="DIR", help="serve this ComfyUI frontend build (default: the installed comfyui-frontend-package)")
    p.add_argument("--multi-user", action="store_true", help="ComfyUI's multi-user mode: users pick a profile; settings and workflows per user")
    p.add_argument("--user-directory", metavar="DIR", help="where the web UI's users, settings and workflows are kept (default ~/.comfy-cluster/gateway-user)")
    p.add_argument("--session-hours", type=float, default=168, metavar="H", help="how long a web UI sign-in (/login) lasts (default 168: a week)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    return p


def _users_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comfy-cluster gateway add-user", description="Add a gateway user (or give them a new token); prints the token once.")
    p.add_argument("name", help="user name (letters, digits, _.@-)")
    p.add_argument("--users", help=f"users file (default: ${ENV_USERS})")
    p.add_argument("--admin", action="store_true", help="the user sees and manages every job")
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


def _env(environ: Mapping[str, str], name: str) -> Optional[str]:
    """A gateway variable, cmd.exe quotes removed; None when unset."""
    raw = environ.get(name)
    return None if raw is None else unquote_env(name, raw)


def _token(arg: Optional[str], environ: Mapping[str, str]) -> Optional[str]:
    if arg is not None:
        return check_token(arg, "--token")
    return check_token(_env(environ, ENV_TOKEN), ENV_TOKEN)


def _add_user(argv: Sequence[str]) -> int:
    args = _users_parser().parse_args(argv)
    path = args.users or _env(os.environ, ENV_USERS)
    if not path:
        print(f"comfy-cluster gateway add-user: give --users FILE (or set {ENV_USERS})", file=sys.stderr)
        return 2
    try:
        token = add_user(path, args.name, admin=args.admin)
    except (OSError, ValueError) as exc:
        print(f"comfy-cluster gateway add-user: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} added to {path}{' (admin)' if args.admin else ''}; their token (shown once):", file=sys.stderr)
    print(token, flush=True)
    return 0


def _who(token: Optional[str], users: Optional[str], header: bool) -> str:
    parts = (["admin token"] if token else []) + ([f"users from {users}"] if users else []) + (["comfy-user header trusted"] if header else [])
    return ", " + ", ".join(parts) if parts else ", no token or users"


def run_gateway(argv: Optional[Sequence[str]] = None, *, stop: Optional[threading.Event] = None) -> int:
    """Run the command; ``stop`` (for tests) ends it like SIGTERM does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["add-user"]:
        return _add_user(argv[1:])
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        from ..errors import ComfyClusterError
        from ..pool import ServerPool
        from ..state import StateURLError, Store, default_state_url, safe_url
        from ..state.shared import pool_client_id
        from . import Gateway
        from .sessions import Sessions
    except ImportError as exc:
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    try:
        token = _token(args.token, os.environ)
        if not args.session_hours > 0:
            raise ValueError(f"--session-hours {args.session_hours:g}: give a positive number of hours")
        users = args.users or _env(os.environ, ENV_USERS) or None
        extra = _argv(args.argv)
        options: Any = dict(
            token=token, users=users, trust_user_header=args.trust_user_header, allow_origins=args.allow_origin, argv=extra,
            max_upload_size=int(args.max_upload_size * MB), ws_queue_bytes=int(args.ws_queue_size * MB),
            history_items=args.history_items, history_bytes=int(args.history_size * MB),
            front_end_root=args.front_end_root, multi_user=args.multi_user, user_dir=args.user_directory,
            sessions=Sessions(ttl=args.session_hours * 3600),
        )
        kwargs: Any = {"strategy": args.strategy} if args.strategy else {}
    except (ComfyClusterError, ValueError) as exc:
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    url = args.state or default_state_url()
    try:
        store = Store(url)
    except (StateURLError, ValueError) as exc:
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the database refused: one line, no password
        print(f"comfy-cluster gateway: state {safe_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    # A replica's name (by default host:port, as the gateway would choose) also names its
    # pool's clientId: two replicas must never share one (each needs the events of its jobs).
    replica = args.replica or (f"{socket.gethostname()}:{args.port}" if store.dialect == "postgresql" and args.port else None)
    try:
        # The same clientId as before a restart: the servers send it the events of the
        # jobs it follows again (each replica has its own); a new one when another replica
        # took its jobs over and listens under the old one (pool_client_id).
        client_id = pool_client_id(store, replica) if replica else store.client_id("default")
        pool = ServerPool.from_env(client_id=client_id, **kwargs)
    except (ComfyClusterError, ValueError) as exc:
        store.close()
        print(f"comfy-cluster gateway: {exc}", file=sys.stderr)
        return 2
    try:
        gateway = Gateway(pool, host=args.host, port=args.port, state=store, replica=replica, **options)
        gateway.start()
    except (OSError, ValueError) as exc:
        pool.close()
        store.close()
        print(f"comfy-cluster gateway: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    done = stop or threading.Event()
    names = ", ".join(s.name for s in pool.servers)
    replica = f", replica {gateway.replicas.shared.replica}" if gateway.replicas is not None else ""
    print(f"comfy-cluster gateway on {gateway.url} -> {len(pool.servers)} server(s): {names} (strategy {pool.strategy}{_who(token, users, args.trust_user_header)}{replica}; state {safe_url(url)})", flush=True)
    if gateway.exposure_warning:
        print(f"comfy-cluster gateway: WARNING: {gateway.exposure_warning}", file=sys.stderr, flush=True)
    code = 0
    with StopSignals():
        try:
            wait_sliced(done.wait)  # slices: signals are handled between them on every platform
        except Stopped as stopped:
            code = 0 if stopped.signum == signal.SIGTERM else stopped.exit_code  # SIGTERM: a service's stop
        finally:
            handing_over = gateway.replicas is not None
            what = "handing unfinished jobs over to the other replicas" if handing_over else "telling clients, cancelling unfinished jobs"
            print(f"comfy-cluster gateway: stopping; {what}", file=sys.stderr, flush=True)
            gateway.stop()
            pool.close(cancel=not handing_over)
            store.close()
    return code
