"""``Gateway``: a ServerPool served as one ComfyUI server (HTTP and websocket, aiohttp).

The gateway runs on an asyncio loop in a thread of its own, so it can live inside another
process (Nuke) as well as behind ``comfy-cluster gateway``. Every route exists with and
without the ``/api`` prefix. Clients see ComfyUI's own API; see README "Use it with any
ComfyUI client" for what differs on purpose.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import os
import shutil
import socket
import threading
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from aiohttp import WSMsgType, web
from sqlalchemy.exc import IntegrityError

from .book import GatewayJob, JobBook
from .dbusers import DbUserStore
from .durable import Keeper, open_store
from .replicas import ReplicaLink
from .restore import restore_jobs
from .files import receive_upload, serve_view
from .folders import with_folders_copied
from .frontend import Frontend, check_front_end_root
from .identity import MULTI_USER
from .info import ClusterInfo
from .info_routes import index_page, info_routes
from .jobs_api import JobRoutes
from .metrics import GatewayMetrics
from .online import OnlineView
from ..state import Store
from ..state.shared import SharedQueue
from .relay import Relay
from .uploads import UploadStore
from .userdata import userdata_routes
from .userstore import FileUserStore, UserStore, default_user_dir
from .validate import error_body, validate_for_cluster
from .webinfo import webinfo_routes

__all__ = ["Gateway", "DEFAULT_MAX_UPLOAD"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 100 * 1024 * 1024
_PLAIN_500 = "500 Internal Server Error\n\nServer got itself in trouble"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


class Gateway:
    """Serve ``pool`` as one ComfyUI server on ``host:port`` (``port=0``: a free port).

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (or
    ``?token=<token>``, for websocket clients that cannot send headers). ``argv``: what
    ``/system_stats`` reports as ComfyUI's command line (clients such as ComfyUI-for-Nuke's
    shared mode derive the ComfyUI folder from ``argv[0]``). ``max_in_pool``: jobs handed to
    the pool at once (default: all of them; the pool's dispatcher gives each free server slot
    to the client with the fewest jobs on the servers). With a limit, the rest wait in the
    gateway, which then gives the next place to the client it has served least.

    ``state``: where prompts, attempts, history and uploads are kept (a
    :class:`~comfy_cluster.state.Store` or its URL). Started on a store that holds unfinished
    prompts (the gateway was killed), it follows their copies on the servers again by
    prompt id and queues the rest. Default: a temporary SQLite file deleted at :meth:`stop`.
    The pool's ``client_id`` should be ``store.client_id()`` so the servers send the events
    of those jobs to it again (``comfy-cluster gateway`` does this).

    On a PostgreSQL store the gateway is one *replica* (named ``replica``; default
    ``HOST:PORT``) of a service: one queue for all replicas, events to whichever replica
    holds the client's socket, a dead replica's prompts taken over (see README "Run it for
    a studio"). :meth:`stop` then hands its prompts over instead of cancelling them.

    The web UI (README "The web UI on the cluster"): ``front_end_root``, a ComfyUI frontend
    build to serve instead of the installed ``comfyui-frontend-package``; ``multi_user``,
    ComfyUI's ``--multi-user``; ``user_store``, where users' settings and files are kept
    (default: files under ``user_dir``, default ``~/.comfy-cluster/gateway-user``).
    """

    def __init__(
        self,
        pool: Any,
        host: str = "127.0.0.1",
        port: int = 8188,
        token: Optional[str] = None,
        *,
        argv: Optional[List[str]] = None,
        max_upload_size: int = DEFAULT_MAX_UPLOAD,
        upload_dir: Optional[str] = None,
        info_ttl: float = 30.0,
        max_in_pool: Optional[int] = None,
        state: Any = None,
        replica: Optional[str] = None,
        front_end_root: Optional[str] = None,
        multi_user: bool = False,
        user_dir: Optional[str] = None,
        user_store: Optional[UserStore] = None,
    ) -> None:
        self.pool = pool
        self._state = state
        self._replica = replica
        self.host = host
        self._port = port
        self._token = token
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
        self.relay = Relay()
        self.uploads: Optional[UploadStore] = None
        self.info: Optional[ClusterInfo] = None
        self.book: Optional[JobBook] = None
        self.keeper: Optional[Keeper] = None
        self.replicas: Optional[ReplicaLink] = None
        self.metrics = GatewayMetrics(lambda: self.online.live_numbers(self.book.active.values() if self.book else ()))
        self._state_folder: Optional[str] = None

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

        Raises :class:`OSError` (for instance, the port is taken) with the address in it.
        """
        if self._thread is not None:
            raise RuntimeError("the gateway is already started")
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
        return self

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
        self.keeper = keeper = Keeper(store, loop, replica=name)
        if name is not None and not self._user_store_given:
            self.user_store = DbUserStore(store)
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
        )
        await restore_jobs(keeper, self.uploads, self.book, [s.name for s in self.pool.servers])
        if name is not None:
            shared = SharedQueue(store, name, self.url)
            self.replicas = ReplicaLink(shared, keeper, self.book, self.relay, self.uploads, loop,
                                        [s.name for s in self.pool.servers], lambda: self.online.free_slots(self._b.active.values()))
        app = web.Application(client_max_size=self._max_upload, middlewares=[self._middleware])
        app[MULTI_USER] = self._multi_user
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
            self.book.cancel_all()
        await self.relay.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.info is not None:
            await self.info.close()

    def _capacity(self) -> int:
        if self._max_in_pool is not None:
            return self._max_in_pool
        if self.book is not None and self.book.pool_takes_owner:
            return 1 << 30  # the pool queues them and does the fair share itself
        return sum(s.max_queue for s in self.pool.servers if s.enabled) or 1

    async def _metrics_route(self, request: web.Request) -> web.StreamResponse:
        await self._online()  # refreshed in the background when older than a second
        if self.replicas is not None:
            self.online.leases = await self._k.read(self.replicas.shared.held_per_replica)
        return await self.metrics.handler(request)

    async def _online(self) -> List[str]:
        return await self.online.names()

    # -- plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        assert self.info is not None
        routes: List[Tuple[str, str, Handler]] = [
            ("GET", "/ws", self._ws),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("POST", "/upload/image", self._upload_image),
            ("POST", "/upload/mask", self._upload_image),
            ("GET", "/view", self._view),
        ] + info_routes(self.info, self._max_upload)
        servers = {s.name: s for s in self.pool.servers}
        web_ui = Frontend(self.info, servers, self._online, self._front_end_root)
        routes += web_ui.routes() + webinfo_routes(self.info, servers, self._online) + userdata_routes(self.user_store)
        app.router.add_route("GET", "/", web_ui.index if web_ui.web_root else index_page(list(servers)))
        for prefix in ("", "/api"):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        assert self.book is not None
        remote = self.replicas.cancel if self.replicas is not None else None
        for method, path, handler in JobRoutes(self.book, remote_cancel=remote).routes():  # under /api only, as ComfyUI
            app.router.add_route(method, path, handler)
        app.router.add_route("GET", "/metrics", self._metrics_route)
        web_ui.add_static(app)  # last: the web root's files answer what no route does

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None and not self._authorized(request):
            return web.Response(status=401, text="401: Unauthorized (comfy-cluster gateway token)")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - ComfyUI answers its plain-text 500
            log.debug("gateway: %s %s raised", request.method, request.path, exc_info=True)
            return web.Response(status=500, text=_PLAIN_500, content_type="text/plain")

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        expected = self._token.encode()
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), expected):
            return True
        given = request.query.get("token")
        return given is not None and hmac.compare_digest(given.encode(), expected)

    @property
    def _k(self) -> Keeper:
        assert self.keeper is not None
        return self.keeper

    @property
    def _b(self) -> JobBook:
        assert self.book is not None
        return self.book

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        return json.loads((await request.read()).decode("utf-8"))  # raises: plain 500

    # -- the websocket ------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        ws = web.WebSocketResponse(max_msg_size=self._max_upload, heartbeat=None)
        await ws.prepare(request)
        client = self.relay.attach(sid, ws, {"type": "status", "data": dict(self._b.status_data(), sid=sid)})
        try:
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        data = None
                    if isinstance(data, dict) and data.get("type") == "feature_flags":
                        self.relay.send(sid, "feature_flags", await self._feature_dict())
                first = False
        finally:
            self.relay.detach(client)
        return ws

    # -- prompts, queue, history --------------------------------------------------------------

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return _json(self._b.status_data()["status"])

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            if isinstance(body, (list, str)):
                return _json(error_body("no_prompt", "No prompt provided", "No prompt provided"), 400)
            raise TypeError("body must be an object")
        if "prompt" not in body:
            return _json(error_body("no_prompt", "No prompt provided", "No prompt provided"), 400)
        prompt = body["prompt"]
        book = self._b
        given = body.get("prompt_id")
        if given is not None and (not isinstance(given, str) or not given.strip() or len(given) > 200 or given in book.active):
            return _json(error_body("invalid_prompt_id", "Invalid prompt_id", "prompt_id must be a new non-empty string"), 400)
        extra_data = body.get("extra_data", {})
        if not isinstance(extra_data, dict):
            raise TypeError("'extra_data' must be an object")
        extra_data = dict(extra_data)
        client_id = body.get("client_id")
        if client_id is not None:
            extra_data["client_id"] = client_id
        assert self.uploads is not None and self.info is not None
        inputs, versions = self.uploads.bind(prompt) if isinstance(prompt, dict) else ({}, [])
        # Held at once: an upload under the same name while this request awaits must not
        # delete the file this prompt was bound to.
        self.uploads.hold(versions)
        infos = await self.info.object_infos()
        ok, error, outputs, node_errors = validate_for_cluster(prompt, list(infos.values()), {n: {"image"} for n in inputs})
        if not ok:
            self.uploads.release(versions)
            return _json({"error": error, "node_errors": node_errors}, 400)
        workflow = None
        if isinstance(prompt, dict):  # a loader naming an upload folder: copied to the servers
            online = set(await self._online())
            servers = [s for s in self.pool.servers if s.name in online]
            try:
                workflow = await with_folders_copied(prompt, self.uploads, self.info.session, servers)
            except BaseException:
                self.uploads.release(versions)
                raise
        number: Any = float(body["number"]) if "number" in body else book.next_number(bool(body.get("front")))
        gj = GatewayJob(
            prompt_id=given or str(uuid.uuid4()),
            number=number,
            client_id=str(client_id or ""),
            prompt=prompt,
            extra_data=extra_data,
            outputs=outputs,
            inputs=inputs,
            held=versions,
            workflow=workflow,
        )
        bound = {node: (v.digest, os.path.basename(v.path)) for node, v in zip(inputs, versions)}
        try:
            # Committed before the answer: a prompt_id the client was given is never lost.
            await self._k.run(self._k.store.add_prompt, gj.row(bound))
        except IntegrityError:  # that prompt_id is queued already (a POST sent again, another replica)
            self.uploads.release(versions)
            return _json(error_body("invalid_prompt_id", "Invalid prompt_id", "prompt_id must be a new non-empty string"), 400)
        except Exception:
            self.uploads.release(versions)
            raise
        if self.replicas is not None:
            # Into the one queue: the replica with room claims it (maybe this one).
            self.uploads.release(versions)
            self._k.later(self.replicas.shared.queue_changed)
        else:
            book.add(gj)
        return _json({"prompt_id": gj.prompt_id, "number": number, "node_errors": node_errors})

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        if self.replicas is not None:  # every replica's prompts
            return _json(await self.replicas.queue_json())
        return _json(self._b.queue_json())

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise TypeError("queue request must be an object")
        if body.get("clear"):
            self._b.clear_pending()
        if isinstance(body.get("delete"), list):
            self._b.delete_pending(body["delete"])
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_json(request)
        except ValueError:
            body = {}
        self._b.interrupt(body)
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        if self.replicas is not None and isinstance(pid, str) and pid not in self._b.active:
            await self.replicas.cancel(pid)  # followed by another replica
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        max_items = int(q["max_items"]) if "max_items" in q else None
        offset = int(q["offset"]) if "offset" in q else -1
        return _json(await self._b.history_json(max_items=max_items, offset=offset))

    async def _get_history_item(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._b.history_json(prompt_id=request.match_info["prompt_id"]))

    async def _post_history(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise TypeError("history request must be an object")
        await self._b.post_history(body)
        return web.Response(status=200)

    # -- files --------------------------------------------------------------------------------

    async def _upload_image(self, request: web.Request) -> web.StreamResponse:
        assert self.uploads is not None
        return await receive_upload(request, self.uploads, self._k)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        assert self.uploads is not None and self.info is not None
        return await serve_view(request, self.uploads, self._server_of, {s.name: s for s in self.pool.servers}, self.info.session)

    async def _server_of(self, key: Tuple[str, str, str]) -> Optional[str]:
        """The server that made an output file: a running job's (memory), else the store's."""
        name = self._b.files.get(key)
        if name is None:
            name = await self._k.read(self._k.store.file_server, key)
        return name

    async def _feature_dict(self) -> Dict[str, Any]:
        assert self.info is not None
        return await self.info.features(self._max_upload)
