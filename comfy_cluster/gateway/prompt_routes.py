"""The gateway's client routes: ``GET``/``POST /prompt``, the client websocket ``/ws``, and
the file routes ``/upload/image``, ``/upload/mask`` and ``/view``, in ComfyUI's shapes.

A posted prompt is checked against the cluster's nodes, bound to the uploads it names (a
folder it names is copied to the servers), committed to the state store before the answer
(a prompt_id the client was given is never lost), then handed to this gateway's book, or,
for replicas, left in the one shared queue for the replica with room.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple

from aiohttp import WSMsgType, web
from sqlalchemy.exc import IntegrityError

from ..config import ServerConfig
from ..state.store import PromptRow
from .auth import request_user
from .book import GatewayJob, JobBook
from .durable import Keeper
from .files import receive_upload, serve_view
from .folders import with_folders_copied
from .info import ClusterInfo
from .queue_routes import read_json
from .relay import Relay
from .uploads import UploadStore
from .validate import error_body, validate_for_cluster

__all__ = ["PromptRoutes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def _invalid_id() -> web.Response:
    return _json(error_body("invalid_prompt_id", "Invalid prompt_id", "prompt_id must be a new non-empty string"), 400)


class PromptRoutes:
    """Handlers of the client routes over one gateway's parts. ``post_shared`` (replicas):
    posts a prompt into the shared queue and answers whether this replica holds it at once
    (its servers have room and nothing waits); otherwise every replica's claimer is woken."""

    def __init__(self, book: JobBook, keeper: Keeper, uploads: UploadStore, info: ClusterInfo, relay: Relay,
                 servers: Sequence[ServerConfig], online: Callable[[], Awaitable[List[str]]], max_upload: int,
                 *, post_shared: Optional[Callable[[PromptRow], Awaitable[bool]]] = None) -> None:
        self._book = book
        self._keeper = keeper
        self._uploads = uploads
        self._info = info
        self._relay = relay
        self._servers = list(servers)
        self._online = online
        self._max_upload = max_upload
        self._post_shared = post_shared

    def routes(self) -> List[Tuple[str, str, Handler]]:
        return [
            ("GET", "/ws", self.websocket),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_image),
            ("GET", "/view", self.view),
        ]

    # -- the websocket ------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        sid = request.query.get("clientId") or uuid.uuid4().hex
        key = (request_user(request).name, sid)
        await self._relay.settle(key)
        ws = web.WebSocketResponse(max_msg_size=self._max_upload, heartbeat=None)
        await ws.prepare(request)
        client = self._relay.attach(key, ws, {"type": "status", "data": dict(self._book.status_data(), sid=sid)}, request.transport)
        self._book.socket_opened(key)
        try:
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        data = None
                    if isinstance(data, dict) and data.get("type") == "feature_flags":
                        flags = data.get("data")
                        if isinstance(flags, dict) and flags.get("supports_preview_metadata"):
                            self._relay.want_metadata(key)
                        self._relay.send(key, "feature_flags", await self._info.features(self._max_upload))
                first = False
        finally:
            self._relay.detach(client)
        return ws

    # -- prompts ------------------------------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return _json(self._book.status_data()["status"])

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            if isinstance(body, (list, str)):
                return _json(error_body("no_prompt", "No prompt provided", "No prompt provided"), 400)
            raise TypeError("body must be an object")
        if "prompt" not in body:
            return _json(error_body("no_prompt", "No prompt provided", "No prompt provided"), 400)
        prompt = body["prompt"]
        book, uploads = self._book, self._uploads
        given = body.get("prompt_id")
        if given is not None and (not isinstance(given, str) or not given.strip() or len(given) > 200 or given in book.active):
            return _invalid_id()
        extra_data = body.get("extra_data", {})
        if not isinstance(extra_data, dict):
            raise TypeError("'extra_data' must be an object")
        extra_data = dict(extra_data)
        client_id = body.get("client_id")
        if client_id is not None:
            extra_data["client_id"] = client_id
        inputs, versions = uploads.bind(prompt) if isinstance(prompt, dict) else ({}, [])
        # Held at once: an upload under the same name while this request awaits must not
        # delete the file this prompt was bound to.
        uploads.hold(versions)
        infos = await self._info.object_infos()
        ok, error, outputs, node_errors = validate_for_cluster(prompt, list(infos.values()), {n: {"image"} for n in inputs})
        if not ok:
            uploads.release(versions)
            return _json({"error": error, "node_errors": node_errors}, 400)
        workflow = None
        if isinstance(prompt, dict):  # a loader naming an upload folder: copied to the servers
            online = set(await self._online())
            try:
                workflow = await with_folders_copied(prompt, uploads, self._info.session, [s for s in self._servers if s.name in online])
            except BaseException:
                uploads.release(versions)
                raise
        number: Any = float(body["number"]) if "number" in body else book.next_number(bool(body.get("front")))
        user = request_user(request)
        cid = str(client_id or "")
        gj = GatewayJob(
            prompt_id=given or str(uuid.uuid4()), number=number, client_id=cid, user=user.name, owner=user.owner,
            keep=not self._relay.is_connected((user.name, cid)), prompt=prompt, extra_data=extra_data, outputs=outputs,
            inputs=inputs, held=versions, workflow=workflow,
        )
        bound = {node: (v.digest, os.path.basename(v.path)) for node, v in zip(inputs, versions)}
        held = False  # replicas: this one holds it at once
        try:
            # Committed before the answer: a prompt_id the client was given is never lost.
            if self._post_shared is not None:
                held = await self._post_shared(gj.row(bound))
            else:
                await self._keeper.run(self._keeper.store.add_prompt, gj.row(bound))
        except IntegrityError:  # that prompt_id is queued already (a POST sent again, another replica)
            uploads.release(versions)
            return _invalid_id()
        except Exception:
            uploads.release(versions)
            raise
        if self._post_shared is not None and not held:
            # In the one queue: the replica with room claims it (maybe this one).
            uploads.release(versions)
            book.queue_changed()  # this replica's sockets hear of it, its lists show it
        else:
            book.add(gj)
        return _json({"prompt_id": gj.prompt_id, "number": number, "node_errors": node_errors})

    # -- files --------------------------------------------------------------------------------

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        return await receive_upload(request, self._uploads, self._keeper)

    async def view(self, request: web.Request) -> web.StreamResponse:
        return await serve_view(request, self._uploads, self._server_of, {s.name: s for s in self._servers}, self._info.session)

    async def _server_of(self, key: Tuple[str, str, str]) -> Optional[str]:
        """The server that made an output file: in memory, else as the store recorded it."""
        name = self._book.files.get(key)
        if name is None:
            name = await self._keeper.read(self._keeper.store.file_server, key)
        return name
