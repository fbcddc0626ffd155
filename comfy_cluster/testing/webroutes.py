"""The mock server's routes for ComfyUI's web page, answered as ComfyUI 0.3.64 without custom
node locales or example workflows: ``/extensions`` (and the extension files, for a mock given
``web_extensions``), ``/i18n``, ``/workflow_templates``, ``/experiment/models``,
``/view_metadata``, and ``/internal/*`` (folder paths, logs, file lists).

``web_extensions`` stands for custom node packs with a ``WEB_DIRECTORY``:
``{"pack-name": {"main.js": "...", "style.css": "..."}}`` is served at
``/extensions/pack-name/main.js`` and ``/extensions`` lists its ``.js`` files.
"""

from __future__ import annotations

import datetime
import mimetypes
import os
from typing import Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote

from aiohttp import web

from .nodes import NodeEnv

__all__ = ["MockWeb"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HIDDEN_FOLDERS = ("configs", "custom_nodes")  # not listed by /experiment/models


class MockWeb:
    """The routes above for one mock server (``folders()``: its model folders and files)."""

    def __init__(
        self,
        name: str,
        folders: Callable[[], Dict[str, List[str]]],
        env: Callable[[], Optional[NodeEnv]],
        web_extensions: Optional[Mapping[str, Mapping[str, Union[str, bytes]]]] = None,
    ) -> None:
        self._name = name
        self._folders = folders
        self._env = env
        self.web_extensions = {str(k): dict(v) for k, v in (web_extensions or {}).items()}
        self._started = datetime.datetime.now().isoformat()

    def _folder_path(self, folder: str) -> str:
        return f"/mock/{self._name}/models/{folder}"

    async def extensions(self, request: web.Request) -> web.StreamResponse:
        out = [
            f"/extensions/{quote(pack)}/{path}"
            for pack, files in self.web_extensions.items()
            for path in sorted(files)
            if path.endswith(".js")
        ]
        return web.json_response(out)

    async def extension_file(self, request: web.Request) -> web.StreamResponse:
        body = self.web_extensions.get(request.match_info["pack"], {}).get(request.match_info["path"])
        if body is None:
            return web.Response(status=404)
        kind = mimetypes.guess_type(request.match_info["path"])[0] or "application/octet-stream"
        return web.Response(body=body.encode() if isinstance(body, str) else body, content_type=kind)

    async def empty_object(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def model_folders(self, request: web.Request) -> web.StreamResponse:
        names = [f for f in self._folders() if f not in _HIDDEN_FOLDERS]
        return web.json_response([{"name": f, "folders": [self._folder_path(f)]} for f in names])

    async def model_files(self, request: web.Request) -> web.StreamResponse:
        folders = self._folders()
        folder = request.match_info["folder"]
        if folder not in folders:
            return web.Response(status=404)
        return web.json_response([{"name": f, "pathIndex": 0} for f in folders[folder]])

    async def view_metadata(self, request: web.Request) -> web.StreamResponse:
        # The mock's model files carry no safetensors metadata: ComfyUI answers 404 then.
        return web.Response(status=404)

    async def folder_paths(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({f: [self._folder_path(f)] for f in self._folders()})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(f"{self._started} - mock ComfyUI {self._name} started\n")

    async def raw_logs(self, request: web.Request) -> web.StreamResponse:
        entries = [{"t": self._started, "m": f"mock ComfyUI {self._name} started\n"}]
        return web.json_response({"entries": entries, "size": {"cols": 80, "rows": 24}})

    async def files(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["directory_type"]
        env = self._env()
        folder = env.directory(kind) if env is not None else None
        if folder is None:
            return web.json_response({"error": "Invalid directory type"}, status=400)
        entries = [e for e in os.scandir(folder) if e.is_file()]
        entries.sort(key=lambda e: -e.stat().st_mtime)  # newest first, as ComfyUI
        return web.json_response([e.name for e in entries])

    def api_routes(self) -> List[Tuple[str, str, Handler]]:
        """Routes ComfyUI serves with and without ``/api``."""
        return [
            ("GET", "/extensions", self.extensions),
            ("GET", "/i18n", self.empty_object),
            ("GET", "/workflow_templates", self.empty_object),
            ("GET", "/experiment/models", self.model_folders),
            ("GET", "/experiment/models/{folder}", self.model_files),
            ("GET", "/view_metadata/{folder_name}", self.view_metadata),
        ]

    def plain_routes(self) -> List[Tuple[str, str, Handler]]:
        """Routes ComfyUI serves without ``/api`` only (static files, the ``/internal`` app)."""
        return [
            ("GET", "/extensions/{pack}/{path:.+}", self.extension_file),
            ("GET", "/internal/folder_paths", self.folder_paths),
            ("GET", "/internal/logs", self.logs),
            ("GET", "/internal/logs/raw", self.raw_logs),
            ("GET", "/internal/files/{directory_type}", self.files),
        ]
