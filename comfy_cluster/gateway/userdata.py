"""The web UI's per-user routes, answered as ComfyUI 0.3.64 does (``app/user_manager.py``,
``app/app_settings.py``): ``/users``, ``/settings``, ``/settings/{id}``, ``/userdata`` (list,
get, save, delete, move) and ``/v2/userdata``, over a :class:`~.userstore.UserStore`.

The user comes from :func:`.identity.request_user`; in multi-user mode it must be one of the
store's users (ComfyUI's answers for an unknown one: 401 for settings, 403 for
``/v2/userdata``, a plain 500 elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import unquote

from aiohttp import web

from .identity import MULTI_USER, request_user
from .userstore import StoredFile, UserStore, clean_path

__all__ = ["userdata_routes", "SETTINGS_FILE"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SETTINGS_FILE = "comfy.settings.json"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def _file_info(f: StoredFile, relative_to: str) -> Dict[str, Any]:
    return {"path": _relative(f.path, relative_to), "size": f.size, "modified": f.modified, "created": f.created}


def _relative(path: str, folder: str) -> str:
    return path[len(folder) + 1 :] if folder else path


class _Routes:
    def __init__(self, store: UserStore) -> None:
        self.store = store
        # Settings are read, changed and written whole: one change at a time, or two settings
        # posted at once (the page does) would each write the file without the other's.
        self._settings_lock: Optional[asyncio.Lock] = None

    def _lock(self) -> asyncio.Lock:
        if self._settings_lock is None:
            self._settings_lock = asyncio.Lock()  # made on the loop that uses it
        return self._settings_lock

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        # The store may be files or a database: never on the loop thread.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def user(self, request: web.Request) -> str:
        """The request's user; KeyError when multi-user mode does not know it (as ComfyUI)."""
        user = request_user(request)
        if request.app.get(MULTI_USER, False) and user not in await self._io(self.store.users):
            raise KeyError("Unknown user: " + user)
        return user

    # -- users --------------------------------------------------------------------------------

    async def get_users(self, request: web.Request) -> web.StreamResponse:
        if request.app.get(MULTI_USER, False):
            return _json({"storage": "server", "users": await self._io(self.store.users)})
        root = await self._io(self.store.stat, await self.user(request), "")
        return _json({"storage": "server", "migrated": root is not None})

    async def post_users(self, request: web.Request) -> web.StreamResponse:
        username = (await request.json())["username"]  # ComfyUI: a plain 500 without it
        users = await self._io(self.store.users)
        if username in users.values():
            return _json({"error": "Duplicate username."}, 400)
        name = username.strip()
        if not name:
            raise ValueError("username not provided")
        user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name) + "_" + str(uuid.uuid4())
        await self._io(self.store.add_user, user_id, name)
        return _json(user_id)

    # -- settings -----------------------------------------------------------------------------

    async def _settings(self, request: web.Request) -> Tuple[str, Dict[str, Any]]:
        try:
            user = await self.user(request)
        except KeyError:
            raise web.HTTPUnauthorized() from None
        data = await self._io(self.store.read, user, SETTINGS_FILE)
        try:
            settings = json.loads(data) if data is not None else {}
        except ValueError:  # a corrupted file reads as no settings, as in ComfyUI
            settings = {}
        return user, settings

    async def _save(self, user: str, settings: Dict[str, Any]) -> None:
        await self._io(self.store.write, user, SETTINGS_FILE, json.dumps(settings, indent=4).encode())

    async def get_settings(self, request: web.Request) -> web.StreamResponse:
        return _json((await self._settings(request))[1])

    async def get_setting(self, request: web.Request) -> web.StreamResponse:
        settings = (await self._settings(request))[1]
        return _json(settings.get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.StreamResponse:
        await self._settings(request)  # ComfyUI: an unknown user's 401 comes before the body
        new = await request.json()
        async with self._lock():
            user, settings = await self._settings(request)
            await self._save(user, {**settings, **new})  # a non-object body: plain 500, as ComfyUI
        return web.Response(status=200)

    async def post_setting(self, request: web.Request) -> web.StreamResponse:
        await self._settings(request)
        value = await request.json()
        async with self._lock():
            user, settings = await self._settings(request)
            settings[request.match_info["id"]] = value
            await self._save(user, settings)
        return web.Response(status=200)

    # -- userdata -----------------------------------------------------------------------------

    async def _target(self, request: web.Request, param: str = "file") -> Union[web.Response, Tuple[str, str]]:
        raw = request.match_info.get(param, "")
        if not raw:
            return web.Response(status=400)
        user = await self.user(request)
        path = clean_path(unquote(raw) if "%" in raw else raw)  # ComfyUI decodes once more
        if not path:
            return web.Response(status=403)
        return user, path

    async def list_userdata(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        directory = q.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        user = await self.user(request)
        folder = clean_path(unquote(directory) if "%" in directory else directory)
        if folder is None:
            return web.Response(status=403, text="Invalid directory")
        top = await self._io(self.store.stat, user, folder)
        if top is None:
            return web.Response(status=404, text="Directory not found")
        recurse = q.get("recurse", "").lower() == "true"
        full_info = q.get("full_info", "").lower() == "true"
        split = q.get("split", "").lower() == "true"
        entries = await self._io(self.store.walk, user, folder, recurse) if top.is_dir else []
        out: List[Any] = []
        for f in entries:
            rel = _relative(f.path, folder)
            if f.is_dir or any(part.startswith(".") for part in rel.split("/")):
                continue  # ComfyUI lists with glob: files only, no hidden names
            out.append(_file_info(f, folder) if full_info else [rel] + rel.split("/") if split else rel)
        return _json(out)

    async def list_userdata_v2(self, request: web.Request) -> web.StreamResponse:
        requested = unquote(request.query.get("path", ""))
        try:
            user = await self.user(request)
        except KeyError:
            return web.Response(status=403, text="Invalid user specified in request")
        folder = clean_path(requested)
        if folder is None:
            return web.Response(status=400, text="Invalid path requested")
        top = await self._io(self.store.stat, user, folder)
        if top is None:
            return _json([]) if folder == "" else web.Response(status=404, text="Requested path not found")
        if not top.is_dir:
            return web.Response(status=400, text="Requested path is not a directory")
        results: List[Dict[str, Any]] = []
        for f in await self._io(self.store.walk, user, folder, True):
            entry: Dict[str, Any] = {"name": f.path.rsplit("/", 1)[-1], "path": f.path, "type": "directory" if f.is_dir else "file"}
            if not f.is_dir:
                entry.update(size=f.size, modified=f.modified)
            results.append(entry)
        results.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return _json(results)

    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        target = await self._target(request)
        if isinstance(target, web.Response):
            return target
        data = await self._io(self.store.read, *target)
        if data is None:
            return web.Response(status=404)
        kind = mimetypes.guess_type(target[1])[0] or "application/octet-stream"
        return web.Response(body=data, content_type=kind)

    async def post_userdata(self, request: web.Request) -> web.StreamResponse:
        target = await self._target(request)
        if isinstance(target, web.Response):
            return target
        user, path = target
        overwrite = request.query.get("overwrite", "true") != "false"
        full_info = request.query.get("full_info", "false").lower() == "true"
        if not overwrite and await self._io(self.store.stat, user, path) is not None:
            return web.Response(status=409, text="File already exists")
        body = await request.read()
        try:
            saved: StoredFile = await self._io(self.store.write, user, path, body)
        except OSError:
            return web.Response(status=400, reason='Invalid filename. Please avoid special characters like :\\/*?"<>|')
        return _json(_file_info(saved, "") if full_info else saved.path)

    async def delete_userdata(self, request: web.Request) -> web.StreamResponse:
        target = await self._target(request)
        if isinstance(target, web.Response):
            return target
        if await self._io(self.store.stat, *target) is None:
            return web.Response(status=404)
        if not await self._io(self.store.delete, *target):
            raise IsADirectoryError(target[1])  # ComfyUI's os.remove of a folder: plain 500
        return web.Response(status=204)

    async def move_userdata(self, request: web.Request) -> web.StreamResponse:
        source = await self._target(request)
        if isinstance(source, web.Response):
            return source
        user, src = source
        if await self._io(self.store.stat, user, src) is None:
            return web.Response(status=404)
        dest = await self._target(request, "dest")
        if isinstance(dest, web.Response):
            raise ValueError("invalid destination")  # ComfyUI fails here with a plain 500
        overwrite = request.query.get("overwrite", "true") != "false"
        full_info = request.query.get("full_info", "false").lower() == "true"
        if not overwrite and await self._io(self.store.stat, user, dest[1]) is not None:
            return web.Response(status=409, text="File already exists")
        moved: StoredFile = await self._io(self.store.move, user, src, dest[1])
        return _json(_file_info(moved, "") if full_info else moved.path)


def userdata_routes(store: UserStore) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` for the per-user routes over ``store``."""
    r = _Routes(store)
    return [
        ("GET", "/users", r.get_users),
        ("POST", "/users", r.post_users),
        ("GET", "/settings", r.get_settings),
        ("POST", "/settings", r.post_settings),
        ("GET", "/settings/{id}", r.get_setting),
        ("POST", "/settings/{id}", r.post_setting),
        ("GET", "/userdata", r.list_userdata),
        ("GET", "/v2/userdata", r.list_userdata_v2),
        ("GET", "/userdata/{file}", r.get_userdata),
        ("POST", "/userdata/{file}", r.post_userdata),
        ("DELETE", "/userdata/{file}", r.delete_userdata),
        ("POST", "/userdata/{file}/move/{dest}", r.move_userdata),
    ]

