"""The web page's reads of what the servers have, as one ComfyUI answers them: ``/i18n``
(custom nodes' translations, merged), ``/workflow_templates`` (custom nodes' example
workflows), ``/experiment/models`` (model folders and files, the union), ``/view_metadata``
and model previews (from the first server that has the file), and the ``/internal`` routes
(folder paths, logs, file lists) the page calls."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Mapping, Tuple

from aiohttp import web

from ..config import ServerConfig
from .info import ClusterInfo
from .proxy import Online, stream_first

__all__ = ["webinfo_routes", "deep_merge"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def deep_merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    """``extra`` merged into a copy of ``base``: nested objects merged, other values of
    ``base`` kept (the first server's word wins)."""
    out = dict(base)
    for key, value in extra.items():
        have = out.get(key)
        if isinstance(have, dict) and isinstance(value, Mapping):
            out[key] = deep_merge(have, value)
        elif key not in out:
            out[key] = value
    return out


def _union_by(answers: List[Any], key: Callable[[Any], Any]) -> List[Any]:
    out: List[Any] = []
    seen = set()
    for answer in answers:
        for item in answer if isinstance(answer, list) else []:
            k = key(item)
            if k not in seen:
                seen.add(k)
                out.append(item)
    return out


def _name(item: Any) -> Any:
    return item.get("name") if isinstance(item, dict) else repr(item)


def webinfo_routes(info: ClusterInfo, servers: Mapping[str, ServerConfig], online: Online) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` of the routes above."""

    async def answers(path: str) -> List[Any]:
        return list((await info.each(path)).values())

    async def i18n(request: web.Request) -> web.StreamResponse:
        merged: Dict[str, Any] = {}
        for answer in await answers("/i18n"):
            if isinstance(answer, dict):
                merged = deep_merge(merged, answer)
        return web.json_response(merged)

    async def workflow_templates(request: web.Request) -> web.StreamResponse:
        merged: Dict[str, List[Any]] = {}
        for answer in await answers("/workflow_templates"):
            for module, names in (answer.items() if isinstance(answer, dict) else []):
                have = merged.setdefault(module, [])
                have.extend(n for n in (names if isinstance(names, list) else []) if n not in have)
        return web.json_response(merged)

    async def model_folders(request: web.Request) -> web.StreamResponse:
        return web.json_response(_union_by(await answers("/experiment/models"), _name))

    async def model_files(request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        got = await info.each(f"/experiment/models/{folder}")
        if not got:  # no online server has that folder: ComfyUI's 404
            return web.Response(status=404)
        return web.json_response(_union_by(list(got.values()), _name))

    async def from_a_server(request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        path = path[len("/api") :] if path.startswith("/api/") else path
        answer = await stream_first(request, info.session, servers, await online(), path)
        return answer if answer is not None else web.Response(status=404)

    async def folder_paths(request: web.Request) -> web.StreamResponse:
        merged: Dict[str, Any] = {}
        for answer in await answers("/internal/folder_paths"):
            if isinstance(answer, dict):
                merged = deep_merge(merged, answer)
        return web.json_response(merged)

    async def logs(request: web.Request) -> web.StreamResponse:
        return web.json_response("".join(a for a in await answers("/internal/logs") if isinstance(a, str)))

    async def raw_logs(request: web.Request) -> web.StreamResponse:
        entries: List[Dict[str, Any]] = []
        size: Dict[str, Any] = {"cols": 80, "rows": 24}
        for name, answer in (await info.each("/internal/logs/raw")).items():
            if not isinstance(answer, dict):
                continue
            size = answer.get("size") or size
            for e in answer.get("entries") or []:
                if isinstance(e, dict):
                    entries.append(dict(e, m=f"[{name}] {e.get('m', '')}"))  # which server said it
        entries.sort(key=lambda e: str(e.get("t", "")))
        return web.json_response({"entries": entries, "size": size})

    async def files(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["directory_type"]
        if kind not in ("output", "input", "temp"):
            return web.json_response({"error": "Invalid directory type"}, status=400)
        return web.json_response(_union_by(await answers(f"/internal/files/{kind}"), repr))

    return [
        ("GET", "/i18n", i18n),
        ("GET", "/workflow_templates", workflow_templates),
        ("GET", "/experiment/models", model_folders),
        ("GET", "/experiment/models/{folder}", model_files),
        ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.*}", from_a_server),
        ("GET", "/view_metadata/{folder_name}", from_a_server),
        ("GET", "/internal/folder_paths", folder_paths),
        ("GET", "/internal/logs", logs),
        ("GET", "/internal/logs/raw", raw_logs),
        ("GET", "/internal/files/{directory_type}", files),
    ]
