"""The gateway's file routes: ``/upload/image`` (and ``/upload/mask``) kept by the gateway,
and ``/view`` streamed from the server that made the file.

The gateway knows which job made which file (from the jobs' ``executed`` events and history
items), so ``/view`` goes to that job's server, and answers 404 for a name no job made, as
ComfyUI does for a missing file (ComfyUI-for-Nuke probes names until a 404). Input files are
the gateway's own uploads.
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable, Dict, Mapping, Optional, Tuple

import aiohttp
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import ServerConfig
from .auth import server_query
from .durable import Keeper
from .info import ssl_for
from .uploads import UploadError, UploadStore, split_reference

__all__ = ["receive_upload", "serve_view"]

_ANNOTATIONS = ((" [input]", "input"), (" [output]", "output"), (" [temp]", "temp"))
_CHUNK = 256 * 1024
_FIELDS = ("subfolder", "type", "overwrite")
_FIELD_BYTES = 4096


async def receive_upload(request: web.Request, store: UploadStore, keeper: Keeper) -> web.StreamResponse:
    """``/upload/image`` and ``/upload/mask``: kept by the gateway, streamed to disk as they
    arrive (never whole in memory), 413 beyond the store's file size limit, and in the state
    store before the answer (a restart, or another replica, finds it there). A mask is stored as
    sent (the gateway does not composite it onto ``original_ref`` as ComfyUI does)."""
    incoming = None
    fields: Dict[str, str] = {}
    filename = ""
    try:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):  # not multipart: ComfyUI answers 400 too
            return web.Response(status=400)
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "image" and part.filename and incoming is None:
                filename = part.filename
                incoming = store.new_file()
                while True:
                    chunk = await part.read_chunk(_CHUNK)
                    if not chunk:
                        break
                    incoming.write(chunk)
            elif part.name in _FIELDS and part.name not in fields:
                fields[part.name] = (await part.read(decode=True))[:_FIELD_BYTES].decode("utf-8", "replace")
            else:
                await part.release()
        if incoming is None:
            return web.Response(status=400)
        answer = store.put_file(
            filename,
            incoming,
            subfolder=fields.get("subfolder", ""),
            type_=fields.get("type") or "input",
            overwrite=fields.get("overwrite") in ("true", "1"),
        )
        incoming = None  # moved into the store, or deleted by it
        key = (answer["type"], answer["subfolder"], answer["name"])
        version = store.lookup(key)
        if version is not None:
            await keeper.run(keeper.store.put_upload_file, key, version.digest, version.path)
    except HttpProcessingError as exc:  # a malformed multipart part (bad header bytes)
        return web.Response(status=exc.code if 400 <= exc.code < 500 else 400, text=f"upload: {exc.message}")
    except UploadError as exc:
        return web.Response(status=exc.status, text=str(exc))
    finally:
        if incoming is not None:
            incoming.discard()
    return web.Response(text=json.dumps(answer), content_type="application/json")


async def serve_view(
    request: web.Request,
    store: UploadStore,
    server_of: Callable[[Tuple[str, str, str]], Awaitable[Optional[str]]],
    servers: Mapping[str, ServerConfig],
    session: aiohttp.ClientSession,
) -> web.StreamResponse:
    """A file a job made, streamed from the server that made it; 404 for any other name."""
    q = request.query
    filename = q.get("filename", "")
    kind = q.get("type", "output")
    for suffix, annotated in _ANNOTATIONS:
        if filename.endswith(suffix):
            filename, kind = filename[: -len(suffix)], annotated
    if not filename:
        return web.Response(status=404)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)  # as ComfyUI: no paths
    subfolder = q.get("subfolder", "")
    if kind == "input":
        key = split_reference(f"{subfolder}/{filename}" if subfolder else filename)
        version = store.lookup(key) if key else None
        if version is None:
            return web.Response(status=404)
        return web.FileResponse(version.path, headers={"Content-Disposition": f'filename="{filename}"'})
    name = await server_of((kind, subfolder, filename))
    server = servers.get(name) if name else None
    if server is None:
        return web.Response(status=404)
    # preview=, channel= pass through; the gateway's own token never goes to a server
    params = server_query(q)
    params.update(filename=filename, type=kind)
    async with session.get(server.url + "/view", params=params, headers=server.headers, ssl=ssl_for(server)) as resp:
        if resp.status != 200:
            return web.Response(status=resp.status)
        out = web.StreamResponse(status=200)
        out.content_type = resp.content_type
        if resp.content_length is not None:
            out.content_length = resp.content_length
        out.headers["Content-Disposition"] = f'filename="{filename}"'
        await out.prepare(request)
        async for chunk in resp.content.iter_chunked(_CHUNK):
            await out.write(chunk)
        await out.write_eof()
        return out
