"""What the cluster offers, as one server would say it: the union of its servers' answers.

``/object_info`` lists a node type if any online server has it (choice lists, such as model
files, are merged); ``/models``, ``/embeddings`` are unions; ``/system_stats`` lists every
server's device (named ``"<server>: <device>"``) and can carry a configured ``argv`` for
clients that derive the ComfyUI folder from it. Answers are fetched with aiohttp on the
gateway's loop and node definitions are cached for ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import aiohttp

from ..config import ServerConfig
from ..tls import ssl_context

__all__ = ["ClusterInfo", "merge_object_info", "ssl_for"]

log = logging.getLogger(__name__)

MAX_INFO_BYTES = 64 * 1024 * 1024


def ssl_for(server: ServerConfig) -> Any:
    """aiohttp's ``ssl=`` for a server: the library's one trust decision (``verify_tls``)."""
    if not server.url.startswith("https"):
        return None
    return ssl_context(server.verify_tls, server.name)


def merge_object_info(infos: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """One ``/object_info`` for several servers: every node type; choice lists merged."""
    out: Dict[str, Any] = {}
    for info in infos:
        for name, node in info.items():
            if name not in out:
                out[name] = _copy(node)
                continue
            spec = out[name].get("input") or {}
            for section, inputs in ((node.get("input") or {}).items()):
                if not isinstance(inputs, dict) or not isinstance(spec.get(section), dict):
                    continue
                for input_name, entry in inputs.items():
                    have = spec[section].get(input_name)
                    if isinstance(have, list) and have and isinstance(have[0], list) and isinstance(entry, list) and entry and isinstance(entry[0], list):
                        seen = set(map(str, have[0]))
                        have[0] = have[0] + [c for c in entry[0] if str(c) not in seen]
    return out


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


class ClusterInfo:
    """Reads info endpoints of the servers ``online()`` names (loop thread only)."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        online: Callable[[], Awaitable[List[str]]],
        *,
        ttl: float = 30.0,
        argv: Optional[List[str]] = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servers = {s.name: s for s in servers}
        self._online = online
        self._ttl = ttl
        self.argv = argv
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(2.0, timeout))
        self._clock = clock
        self._object_info: Dict[str, Tuple[float, Dict[str, Any]]] = {}
        self._session: Optional[aiohttp.ClientSession] = None
        self._lock: Optional[asyncio.Lock] = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, server: str, path: str, params: Optional[Mapping[str, str]] = None) -> Any:
        """``GET path`` on ``server`` as JSON (raises on any failure)."""
        cfg = self._servers[server]
        async with self.session.get(
            cfg.url + path, params=params, headers=cfg.headers, ssl=ssl_for(cfg), timeout=self._timeout
        ) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_INFO_BYTES:
                raise ValueError(f"{path} answer too large")
            return await resp.json(content_type=None)

    async def each(self, path: str) -> Dict[str, Any]:
        """``{server: answer}`` for every online server that answered ``path``."""
        names = await self._online()

        async def one(name: str) -> Tuple[str, Any]:
            try:
                return name, await self.get(name, path)
            except Exception as exc:  # noqa: BLE001 - one server's failure leaves it out
                log.debug("%s %s: %s", name, path, exc)
                return name, None

        answers = await asyncio.gather(*(one(n) for n in names))
        return {n: a for n, a in answers if a is not None}

    async def object_infos(self) -> Dict[str, Dict[str, Any]]:
        """Each online server's node definitions, cached for ``ttl`` seconds."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        names = await self._online()
        now = self._clock()
        stale = [n for n in names if n not in self._object_info or now - self._object_info[n][0] > self._ttl]
        if stale:
            async with self._lock:
                stale = [n for n in stale if n not in self._object_info or now - self._object_info[n][0] > self._ttl]

                async def one(name: str) -> None:
                    try:
                        info = await self.get(name, "/object_info")
                    except Exception as exc:  # noqa: BLE001
                        log.warning("cannot read object_info of %s: %s", name, exc)
                        return
                    if isinstance(info, dict):
                        self._object_info[name] = (self._clock(), info)

                await asyncio.gather(*(one(n) for n in stale))
        return {n: self._object_info[n][1] for n in names if n in self._object_info}

    def forget(self, server: str) -> None:
        """Drop a server's cached node definitions (it restarted, maybe with other nodes)."""
        self._object_info.pop(server, None)

    async def object_info(self) -> Dict[str, Any]:
        return merge_object_info(list((await self.object_infos()).values()))

    async def union_list(self, path: str) -> List[Any]:
        out: List[Any] = []
        seen = set()
        for answer in (await self.each(path)).values():
            for item in answer if isinstance(answer, list) else []:
                key = repr(item)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        return out

    async def system_stats(self) -> Dict[str, Any]:
        answers = await self.each("/system_stats")
        system: Dict[str, Any] = {}
        devices: List[Any] = []
        for name, stats in answers.items():
            if not isinstance(stats, dict):
                continue
            if not system and isinstance(stats.get("system"), dict):
                system = dict(stats["system"])
            for dev in stats.get("devices") or []:
                if isinstance(dev, dict):
                    devices.append(dict(dev, name=f"{name}: {dev.get('name', '')}"))
        if self.argv is not None:
            system["argv"] = list(self.argv)
        return {"system": system, "devices": devices}

    async def features(self, max_upload_size: int) -> Dict[str, Any]:
        answers = await self.each("/features")
        merged: Dict[str, Any] = {}
        for answer in answers.values():
            if isinstance(answer, dict):
                for k, v in answer.items():
                    merged.setdefault(k, v)
        # The gateway receives uploads itself, and gives previews their node and prompt
        # (previews.with_metadata) to a client that asks, as a server does.
        merged["max_upload_size"] = max_upload_size
        merged["supports_preview_metadata"] = True
        return merged
