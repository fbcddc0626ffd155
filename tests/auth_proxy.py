"""A reverse proxy like a studio puts in front of ComfyUI: it checks a bearer token on every
request and on the websocket handshake, serves under a path prefix, and forwards to a mock.

Runs an aiohttp app in its own thread on 127.0.0.1, for tests only.
"""

from __future__ import annotations

import asyncio
import threading
from typing import List, Optional

import aiohttp
from aiohttp import web

HOP = {"host", "authorization", "connection", "upgrade", "content-length", "transfer-encoding",
       "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "keep-alive"}


class AuthProxy:
    def __init__(self, upstream: str, token: str, prefix: str = "/comfy") -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.prefix = prefix
        self.seen: List[str] = []  # "http" / "ws" for every request that carried the token
        self.refused: List[str] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused.append("ws" if is_ws else "http")
            return web.Response(status=401, text="401: missing or wrong token")
        self.seen.append("ws" if is_ws else "http")
        tail = request.match_info["tail"]
        target = f"{self.upstream}/{tail}"
        assert self._session is not None
        if is_ws:
            down = web.WebSocketResponse()
            await down.prepare(request)
            async with self._session.ws_connect(target.replace("http", "ws", 1), params=request.query) as up:
                async def pump_up() -> None:
                    async for msg in down:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            await up.send_str(msg.data)

                task = asyncio.ensure_future(pump_up())
                try:
                    async for msg in up:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            await down.send_str(msg.data)
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            await down.send_bytes(msg.data)
                finally:
                    task.cancel()
            await down.close()
            return down
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with self._session.request(request.method, target, params=request.query, data=body, headers=headers) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP and k.lower() != "content-encoding"}
            return web.Response(status=resp.status, body=data, headers=out)

    def start(self) -> "AuthProxy":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self._session = aiohttp.ClientSession()
                app = web.Application()
                app.router.add_route("*", self.prefix + "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, shutdown_timeout=0.1)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

            loop.run_until_complete(boot())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="auth-proxy", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(down(), loop)
        if self._thread is not None:
            self._thread.join(5)
        loop.close()

    def __enter__(self) -> "AuthProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
