"""``Gateway``: a ServerPool served as one ComfyUI server (HTTP and websocket, aiohttp).

The gateway runs on an asyncio loop in a thread of its own, so it can live inside another
process (Nuke) as well as behind ``comfy-cluster gateway``. Every route exists with and
without the ``/api`` prefix. Clients see ComfyUI's own API; see README "Use it with any
ComfyUI client" for what differs on purpose.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import socket
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple

from aiohttp import web

from ..state import Store
from ..state.shared import SharedQueue
from .auth import Authenticator, UsersFile
from .book import JobBook
from .dbsessions import DbSessionStore
from .dbusers import DbUserStore
from .durable import Keeper, open_store
from .frontend import Frontend, check_front_end_root
from .history import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_ITEMS
from .identity import MULTI_USER
from .info import ClusterInfo
from .info_routes import index_page, info_routes
from .jobs_api import JobRoutes
from .listing import Listing
from .metrics import GatewayMetrics
from .login import login_routes
from .network import guard, listens_beyond_loopback, self_loop_servers
from .online import OnlineView
from .prompt_routes import PromptRoutes
from .queue_routes import queue_routes
from .relay import DEFAULT_QUEUE_BYTES, Relay
from .replicas import ReplicaLink
from .restore import restore_jobs
from .sessions import Sessions
from .uploads import UploadStore
from .userdata import userdata_routes
from .userstore import FileUserStore, UserStore, default_user_dir
from .webinfo import webinfo_routes

__all__ = ["Gateway", "DEFAULT_MAX_UPLOAD"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 100 * 1024 * 1024
#: Seconds a stopping gateway waits for the servers to confirm its jobs' cancels.
STOP_GRACE = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



class Gateway:
    """Serve ``pool`` as one ComfyUI server on ``host:port`` (``port=0``: a free port).

    Who may ask (see :mod:`.auth`): ``token`` is the admin token (sees and manages every job);
    ``users``, a users file path, gives each user a token of their own;
    ``trust_user_header`` takes ComfyUI's ``comfy-user`` header as the user (a trusted
    network). With a token or users, every request must carry ``Authorization: Bearer
    <token>`` (or ``?token=<token>``, for websocket clients that cannot send headers).
    ``allow_origins``: web origins allowed besides the gateway's own (``"*"``: any); others get
    403, as ComfyUI. ``ws_queue_bytes``: bytes queued per client socket before previews are
    dropped and then the socket is closed; ``history_items``/``history_bytes`` bound the
    history. ``max_upload_size``: bytes per request body and per uploaded file. ``argv``: what
    ``/system_stats`` reports as ComfyUI's command line (clients such as ComfyUI-for-Nuke's
    shared mode derive the ComfyUI folder from ``argv[0]``). ``max_in_pool``: jobs handed to
    the pool at once (default: all of them; the pool's dispatcher gives each free server slot
    to the client with the fewest jobs on the servers). With a limit, the rest wait in the
    gateway, which then gives the next place to the client it has served least.

    The web UI (README "The web UI on the cluster"): ``front_end_root``, a ComfyUI frontend
    build to serve instead of the installed ``comfyui-frontend-package``; ``multi_user``,
    ComfyUI's ``--multi-user`` (implies ``trust_user_header``); ``user_store``, where users' settings and files are kept
    (default: files under ``user_dir``, default ``~/.comfy-cluster/gateway-user``); ``sessions``:
    the page's sign-ins at ``/login`` with a token or users (default: a week, kept in the
    ``state`` store unless given a store of their own: they outlive a restart, and every
    replica honours them).

    ``state``: where prompts, attempts, history and uploads are kept (a
    :class:`~comfy_cluster.state.Store` or its URL; default: a temporary SQLite file deleted
    at :meth:`stop`). Started on a store holding unfinished prompts (the gateway was killed),
    it follows their copies on the servers by prompt id and queues the rest; the pool's
    ``client_id`` should be ``store.client_id()`` (``comfy-cluster gateway`` does this). On a
    PostgreSQL store it is one *replica* (``replica``, default ``HOST:PORT``) of a service
    sharing one queue (README "Run it for a studio"); :meth:`stop` then hands its prompts over.
    """

    def __init__(
        self,
        pool: Any,
        host: str = "127.0.0.1",
        port: int = 8188,
        token: Optional[str] = None,
        *,
        users: Optional[str] = None,
        trust_user_header: bool = False,
        allow_origins: Sequence[str] = (),
        argv: Optional[List[str]] = None,
        max_upload_size: int = DEFAULT_MAX_UPLOAD,
        upload_dir: Optional[str] = None,
        info_ttl: float = 30.0,
        max_in_pool: Optional[int] = None,
        ws_queue_bytes: int = DEFAULT_QUEUE_BYTES,
        history_items: int = DEFAULT_HISTORY_ITEMS,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        front_end_root: Optional[str] = None,
        multi_user: bool = False,
        user_dir: Optional[str] = None,
        user_store: Optional[UserStore] = None,
        state: Any = None,
        replica: Optional[str] = None,
        sessions: Optional[Sessions] = None,
    ) -> None:
        self.pool = pool
        self._state = state
        self._replica = replica
        if hasattr(pool, "use_cache_affinity"):
            pool.use_cache_affinity()  # an identical prompt goes where ComfyUI has it cached
        self.host = host
        self._port = port
        # ComfyUI's multi-user mode is exactly "the comfy-user header names the user".
        trust_user_header = trust_user_header or multi_user
        self.auth = Authenticator(token, UsersFile(users) if users else None, trust_user_header=trust_user_header, sessions=sessions)
        self._allow_origins = tuple(o.rstrip("/") for o in allow_origins)
        self._history_bounds = (history_items, history_bytes)
        self._argv = argv
        self._max_upload = max_upload_size
        self._upload_dir = upload_dir
        self._info_ttl = info_ttl
        self._max_in_pool = max_in_pool
        self._front_end_root = check_front_end_root(front_end_root) if front_end_root else None
        self._multi_user = multi_user
        # Replicas keep users' data in their shared store (set once it is open); a single
        # gateway in files under user_dir, ComfyUI's own layout, unless told otherwise.
        self._user_store_given = user_store is not None or user_dir is not None
        self.user_store = user_store if user_store is not None else FileUserStore(user_dir or default_user_dir())
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._submitter: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._helpers: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.online = OnlineView(pool, lambda: self._helpers)
        self.relay = Relay(ws_queue_bytes)
        # ComfyUI's page opens its socket without the user header: on a trusted network an
        # anonymous socket gets the events of the user who posts with its clientId.
        self.relay.anonymous_sees_named = trust_user_header and not self.auth.required
        self.uploads: Optional[UploadStore] = None
        self.info: Optional[ClusterInfo] = None
        self.book: Optional[JobBook] = None
        self.keeper: Optional[Keeper] = None
        self.replicas: Optional[ReplicaLink] = None
        self.listing: Optional[Listing] = None
        self._state_folder: Optional[str] = None
        self.metrics = GatewayMetrics(lambda: self.online.live_numbers(self.book.active.values() if self.book else ()))

    def __repr__(self) -> str:
        return f"Gateway({self.url!r}, servers={[s.name for s in self.pool.servers]!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the gateway (the real port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Gateway":
        """Start serving on a thread of its own; returns once the port is listening.

        Raises :class:`OSError` (for instance, the port is taken) with the address in it,
        and :class:`ValueError` when the cluster names the gateway's own address.
        """
        if self._thread is not None:
            raise RuntimeError("the gateway is already started")
        loops = self_loop_servers(self.host, self._port, self.pool.servers)
        if loops:
            raise ValueError(
                f"the cluster contains the gateway itself ({', '.join(loops)} is {self.host}:{self._port}): "
                "set NUKE_COMFYUI_SERVERS to the ComfyUI servers, and point clients (NUKE_COMFYUI_URL) at the gateway"
            )
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="comfy-cluster-gateway", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=30)
        except BaseException:
            self._shutdown_loop()
            raise
        log.info("gateway listening on %s", self.url)
        if listens_beyond_loopback(self.host) and not self.auth.required:
            log.warning("%s", self.exposure_warning)
        return self

    @property
    def exposure_warning(self) -> Optional[str]:
        """The warning for a gateway reachable from other machines without a token or users."""
        if not listens_beyond_loopback(self.host) or self.auth.required:
            return None
        return (
            f"the gateway listens on {self.host} (beyond this machine) with no token or users: anyone on the "
            "network can run, see and cancel jobs; give --token or --users"
        )

    def stop(self) -> None:
        """Cancel the gateway's unfinished jobs, close every client socket, stop listening.

        The pool stays open (it may be shared); close it yourself.
        """
        loop = self._loop
        if loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        except Exception:  # noqa: BLE001 - stop as much as possible anyway
            log.exception("gateway shutdown failed")
        self._shutdown_loop()
        log.info("gateway on %s stopped", self.url)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
        for ex in (self._submitter, self._helpers):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)  # bounded: a probe has a timeout
        if self.uploads is not None:
            self.uploads.close()
        if self.keeper is not None:
            self.keeper.close()
            if self._state_folder is not None or not isinstance(self._state, Store):
                self.keeper.store.close()
            if self._state_folder is not None:
                shutil.rmtree(self._state_folder, ignore_errors=True)
            self.keeper = None
        self._thread = None
        self._loop = None

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        self._submitter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="comfy-cluster-gateway-submit")
        self._helpers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="comfy-cluster-gateway-status")
        store, self._state_folder = await loop.run_in_executor(self._helpers, open_store, self._state)
        name = None
        if store.dialect == "postgresql":
            name = self._replica or f"{socket.gethostname()}:{self._port or uuid.uuid4().hex[:8]}"
            if not self._user_store_given:
                self.user_store = DbUserStore(store)
        if not self.auth.sessions.store_given:
            # Sign-ins outlive a restart, and every replica honours them (no sticky routing).
            self.auth.sessions.store = DbSessionStore(store)
        self.keeper = keeper = Keeper(store, loop, replica=name)
        self.auth.sessions.offload = keeper.read  # bounded threads, stopped with the gateway
        self.uploads = UploadStore(self._upload_dir, max_file_bytes=self._max_upload)
        self.info = ClusterInfo(self.pool.servers, self._online, ttl=self._info_ttl, argv=self._argv)
        self.book = JobBook(
            self.pool,
            self.relay,
            loop,
            self._submitter,
            capacity=self._capacity,
            release=self.uploads.release,
            keeper=keeper,
            metrics=self.metrics,
            history_items=self._history_bounds[0],
            history_bytes=self._history_bounds[1],
        )
        await restore_jobs(keeper, self.uploads, self.book, [s.name for s in self.pool.servers])
        if name is not None:
            self.replicas = ReplicaLink(SharedQueue(store, name, self.url), keeper, self.book, self.relay, self.uploads, loop,
                                        [s.name for s in self.pool.servers], lambda: self.online.free_slots(self._b.active.values()))
        app = web.Application(client_max_size=self._max_upload, middlewares=[guard(self.auth, self._allow_origins)])
        app[MULTI_USER] = self._multi_user and not self.auth.required  # with sign-in, it names the user
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"gateway cannot listen on {self.host}:{self._port}: {exc.strerror}") from None
        server = getattr(site, "_server", None)
        if self._port == 0 and server is not None and server.sockets:
            self._port = server.sockets[0].getsockname()[1]
        if self.replicas is not None:
            self.replicas.shared.url = self.url
            await loop.run_in_executor(self._helpers, self.replicas.start)

    async def _astop(self) -> None:
        self.online.cancel()
        if self.replicas is not None:
            # A replica hands its prompts over (the others take them at once) instead of
            # cancelling them; close the pool with cancel=False.
            await asyncio.get_running_loop().run_in_executor(self._helpers, self.replicas.stop)
        elif self.book is not None:
            # Each waiting client first hears that its prompts ended (the gateway stopped),
            # then the jobs are cancelled on their servers.
            self.book.stop_all("the comfy-cluster gateway stopped; the prompt was cancelled")
            await self._wait_cancelled(STOP_GRACE)
        await self.relay.flush(timeout=2.0)
        await self.relay.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.info is not None:
            await self.info.close()

    async def _wait_cancelled(self, timeout: float) -> None:
        """Wait (bounded) until the pool has confirmed the end of every cancelled job."""
        book = self.book
        if book is None:
            return
        jobs = [gj.job for gj in list(book.active.values()) if gj.job is not None]
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def all_done() -> bool:
            return all(j.wait(max(0.0, deadline - time.monotonic())) for j in jobs)

        try:
            await asyncio.wait_for(loop.run_in_executor(self._helpers, all_done), timeout + 1.0)
        except asyncio.TimeoutError:
            log.warning("gateway stopping: %d job(s) not confirmed cancelled within %.0f s", len(jobs), timeout)

    def _capacity(self) -> int:
        if self._max_in_pool is not None:
            return self._max_in_pool
        if self.book is not None and self.book.pool_takes_owner:
            return 1 << 30  # the pool queues them and does the fair share itself
        return sum(s.max_queue for s in self.pool.servers if s.enabled) or 1

    async def _online(self) -> List[str]:
        return await self.online.names()

    async def _metrics_route(self, request: web.Request) -> web.StreamResponse:
        await self._online()  # refreshed in the background when older than a second
        if self.replicas is not None:
            self.online.leases = await self._k.read(self.replicas.shared.held_per_replica)
        return await self.metrics.handler(request)

    # -- plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        assert self.info is not None and self.uploads is not None
        shared = self.replicas.shared if self.replicas is not None else None
        self.listing = listing = Listing(self._b, self._k, shared=shared)  # replicas: from the store, the same on each
        client_routes = PromptRoutes(self._b, self._k, self.uploads, self.info, self.relay, self.pool.servers, self._online,
                                     self._max_upload, post_shared=self.replicas.post if self.replicas is not None else None)
        remote = self.replicas.cancel if self.replicas is not None else None
        routes: List[Tuple[str, str, Handler]] = (client_routes.routes() + queue_routes(self._b, listing, remote)
                                                  + info_routes(self.info, self._max_upload) + login_routes(self.auth))
        servers = {s.name: s for s in self.pool.servers}
        web_ui = Frontend(self.info, servers, self._online, self._front_end_root)
        routes += web_ui.routes() + webinfo_routes(self.info, servers, self._online) + userdata_routes(self.user_store)
        app.router.add_route("GET", "/", web_ui.index if web_ui.web_root else index_page(list(servers)))
        for prefix in ("", "/api"):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        for method, path, handler in JobRoutes(self._b, listing, remote_cancel=remote).routes():  # under /api only, as ComfyUI
            app.router.add_route(method, path, handler)
        app.router.add_route("GET", "/metrics", self._metrics_route)
        web_ui.add_static(app)  # last: the web root's files answer what no route does

    @property
    def _k(self) -> Keeper:
        assert self.keeper is not None
        return self.keeper

    @property
    def _b(self) -> JobBook:
        assert self.book is not None
        return self.book
