"""ComfyUI's own web page, served by the gateway as ComfyUI 0.3.64 serves it.

The page is the ``comfyui-frontend-package`` build (the one ComfyUI 0.3.64 pins; another with
``front_end_root``), workflow templates come from ``comfyui-workflow-templates`` (``/templates``)
and node documentation from ``comfyui-embedded-docs`` (``/docs``) when installed. Custom nodes'
web extensions live on the servers: ``/extensions`` lists the gateway's own core extensions and
every online server's, and a file under ``/extensions/<name>/`` is streamed from a server that
listed extension ``<name>`` (else from any server that has it).
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
from typing import Awaitable, Callable, Dict, List, Mapping, Optional, Tuple

from aiohttp import web

from ..config import ServerConfig
from .info import ClusterInfo
from .login import PUBLIC
from .proxy import Online, stream_first

__all__ = ["Frontend", "package_dir", "check_front_end_root"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def package_dir(module: str, sub: str) -> Optional[str]:
    """``<package>/<sub>`` of an installed package (``comfyui_frontend_package``, ...), or None."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    where = os.path.join(os.path.dirname(os.path.abspath(mod.__file__ or "")), sub)
    return where if os.path.isdir(where) else None


def check_front_end_root(folder: str) -> str:
    """``folder`` made absolute if it holds a frontend build; ValueError naming it otherwise."""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise ValueError(f"--front-end-root {folder!r}: no index.html there (expected a ComfyUI frontend build)")
    return os.path.abspath(folder)


class Frontend:
    """The web page's files and ``/extensions``; see the module docstring.

    ``front_end_root``: a folder holding a frontend build (its ``index.html``); default: the
    installed ``comfyui-frontend-package``. :attr:`web_root` is None when there is neither.
    """

    def __init__(
        self,
        info: ClusterInfo,
        servers: Mapping[str, ServerConfig],
        online: Online,
        front_end_root: Optional[str] = None,
    ) -> None:
        self.web_root = check_front_end_root(front_end_root) if front_end_root else package_dir("comfyui_frontend_package", "static")
        self.templates = package_dir("comfyui_workflow_templates", "templates")
        self.docs = package_dir("comfyui_embedded_docs", "docs")
        self._info = info
        self._servers = servers
        self._online = online
        self._where: Dict[str, List[str]] = {}  # extension name -> servers that listed it

    def __repr__(self) -> str:
        return f"Frontend(web_root={self.web_root!r})"

    def own_extensions(self) -> List[str]:
        """``/extensions/...`` URLs of the web root's own scripts (ComfyUI's core extensions)."""
        if self.web_root is None:
            return []
        files = glob.glob(os.path.join(glob.escape(self.web_root), "extensions", "**", "*.js"), recursive=True)
        return sorted("/" + os.path.relpath(f, self.web_root).replace(os.sep, "/") for f in files)

    async def extensions(self, request: web.Request) -> web.StreamResponse:
        """``GET /extensions``: the union of the gateway's and the online servers' scripts."""
        out = self.own_extensions()
        seen = set(out)
        where: Dict[str, List[str]] = {}
        for server, answer in (await self._info.each("/extensions")).items():
            for url in answer if isinstance(answer, list) else []:
                if not isinstance(url, str) or not url.startswith("/extensions/"):
                    continue
                name = url.split("/")[2]
                if server not in where.setdefault(name, []):
                    where[name].append(server)
                if url not in seen:
                    seen.add(url)
                    out.append(url)
        self._where = where
        return web.json_response(out)

    async def extension_file(self, request: web.Request) -> web.StreamResponse:
        """``GET /extensions/<name>/<file>``: the web root's own, else from a server that has it."""
        tail = request.match_info["tail"]
        own = self._own_file(os.path.join("extensions", tail))
        if own is not None:
            return web.FileResponse(own)
        name = tail.split("/", 1)[0]
        online = await self._online()
        first = [s for s in self._where.get(name, []) if s in online]
        answer = await stream_first(request, self._info.session, self._servers, first + [s for s in online if s not in first])
        return answer if answer is not None else web.Response(status=404)

    def _own_file(self, rel: str) -> Optional[str]:
        if self.web_root is None:
            return None
        full = os.path.abspath(os.path.join(self.web_root, rel))
        if os.path.commonpath((self.web_root, full)) != self.web_root or not os.path.isfile(full):
            return None
        return full

    async def index(self, request: web.Request) -> web.StreamResponse:
        assert self.web_root is not None
        response = web.FileResponse(os.path.join(self.web_root, "index.html"))
        response.headers.update({"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})
        return response

    async def custom_template(self, request: web.Request) -> web.StreamResponse:
        """``/api/workflow_templates/<custom node>/<file>``: a custom node's example workflow."""
        answer = await stream_first(request, self._info.session, self._servers, await self._online())
        return answer if answer is not None else web.Response(status=404)

    @staticmethod
    async def _no_cache(request: web.Request, response: web.StreamResponse) -> None:
        # ComfyUI's cache_control: scripts, styles and index*.json are revalidated, so a
        # browser picks up another frontend (or a server's new extension) at once.
        name = request.path.rsplit("/", 1)[-1]
        if request.path.endswith((".js", ".css")) or (name.startswith("index") and name.endswith(".json")):
            response.headers.setdefault("Cache-Control", "no-cache")

    def add_static(self, app: web.Application) -> None:
        """The file routes, after every API route (the web root's static route takes the rest)."""
        app.on_response_prepare.append(self._no_cache)
        app.router.add_route("GET", "/extensions/{tail:.+}", self.extension_file)
        for prefix in ("/api", ""):
            app.router.add_route("GET", prefix + "/workflow_templates/{module}/{file:.+}", self.custom_template)
        for url, folder in (("/templates", self.templates), ("/docs", self.docs)):
            if folder is not None:
                app.router.add_static(url, folder)
        if self.web_root is not None:
            app.router.add_static("/", self.web_root, name=PUBLIC)  # no sign-in needed (login.py)

    def routes(self) -> List[Tuple[str, str, Handler]]:
        """The API routes of the page's files (with and without ``/api``, as every route)."""
        return [("GET", "/extensions", self.extensions)]
