"""ComfyClient: one server's HTTP API on a ``requests.Session``.

Every call has a connect and a read timeout, every answer a size cap, and every failure is
turned into a :class:`~comfy_cluster.errors.ServerError` (or :class:`WorkflowError` for
ComfyUI's 400 on ``/prompt``) whose message names the server and never a header value.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import socket
import tempfile
import threading
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import requests
import urllib3

from . import localfiles
from .answers import as_dict, as_list, iter_output_files, parse_workflow_error, queue_items
from .config import ServerConfig
from .errors import LocalFileError, ServerError
from .reasons import classify, explain_status, failure_reason, short_reason
from .resolve import ResolveTimeout, check_resolvable
from .tls import ssl_context
from .transport import LightHTTPPool, LightHTTPSPool, TooSlow, TrackingAdapter, body_chunks, tracked

# classify (reasons.py) and as_dict, as_list, iter_output_files, parse_workflow_error
# (answers.py) are imported from here by the rest of the library too.
__all__ = ["ComfyClient", "Timeouts", "classify", "parse_workflow_error", "as_dict", "as_list", "iter_output_files"]

log = logging.getLogger(__name__)

# (connect, read) seconds. Probes must be short so a hanging server never holds anyone up.
Timeouts = Tuple[float, float]
DEFAULT_TIMEOUT: Timeouts = (3.05, 30.0)
# The connect timeout outlasts Windows' refusal: a Windows client retries a refused SYN and
# reports "refused" only after about 2 s, so a shorter wait reads a stopped ComfyUI as
# "connect timed out" (a dead or unreachable host) instead of "connection refused".
PROBE_TIMEOUT: Timeouts = (3.05, 2.0)
# JSON answers (queue, history, object_info) are capped so a broken or hostile server
# cannot make the client hold an endless body in memory. object_info with many custom
# nodes is the largest legitimate answer (a few MB).
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_FILE_BYTES = 2 * 1024 * 1024 * 1024
_CHUNK = 64 * 1024


class ComfyClient:
    """The HTTP API of one ComfyUI server.

    Thread-safe: ``requests.Session`` is shared by all threads of the pool (its connection
    pool is thread-safe for independent requests). Keep-alive connections are reused.
    """

    def __init__(
        self,
        server: ServerConfig,
        *,
        timeout: Timeouts = DEFAULT_TIMEOUT,
        max_json_bytes: int = MAX_JSON_BYTES,
        pool_maxsize: int = 16,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.max_json_bytes = max_json_bytes
        self._pool_maxsize = pool_maxsize
        # One trust decision for HTTPS and the websocket (tls.py): the adapter carries the
        # context; verify=False only turns verification off (requests' cert_reqs).
        self._ssl = ssl_context(server.verify_tls, server.name) if server.url.startswith("https://") else None
        # The session's connections, tracked so close() can cut a request that hangs on a
        # dead server (made with the session).
        self._conns: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._closed = False
        self._lock = threading.Lock()
        # Both made on first use: status probes (the probe pool) are all most servers of a
        # large pool ever see, and a session costs about 6 KB per server.
        self._session: Optional[requests.Session] = None
        self._probe: Optional[urllib3.HTTPConnectionPool] = None
        self._poster: Optional[urllib3.HTTPConnectionPool] = None
        self._prefix = urllib3.util.parse_url(server.url).path or ""

    def __repr__(self) -> str:
        return f"ComfyClient({self.server.name!r}, {self.server.url!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def _http(self) -> requests.Session:
        """The session for every request but status probes (made on first use)."""
        session = self._session
        if session is None:
            with self._lock:
                if self._closed:
                    raise ServerError(f"{self.server.name}: client closed", server=self.server.name, fault="connect")
                if self._session is None:
                    session = requests.Session()
                    session.headers.update(self.server.headers)
                    session.verify = self.server.verify_tls is not False
                    # Proxies from the environment would route studio-internal servers through
                    # a corporate proxy; ComfyUI servers are addressed directly.
                    session.trust_env = False
                    adapter = TrackingAdapter(self._conns, self._ssl, pool_connections=1, pool_maxsize=self._pool_maxsize, max_retries=0)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    self._session = session
                session = self._session
        return session

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: Optional[Timeouts] = None,
        **kwargs: Any,
    ) -> requests.Response:
        url = self.server.url + path
        if self._closed:
            raise ServerError(f"{self.server.name}: client closed", server=self.server.name, fault="connect")
        self._check_resolvable((timeout or self.timeout)[0])
        try:
            return self._http().request(method, url, timeout=timeout or self.timeout, stream=True, **kwargs)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerError(f"{self.server.name}: {failure_reason(exc)}", server=self.server.name, fault=classify(exc)) from None

    def _check_resolvable(self, connect_timeout: float) -> None:
        """The server's name look-up within the connect timeout (see :mod:`.resolve`)."""
        try:
            check_resolvable(self.server.host, self.server.port, connect_timeout)
        except ResolveTimeout as exc:
            raise ServerError(f"{self.server.name}: cannot connect: {exc}", server=self.server.name, fault="connect_timeout") from None

    def _read_capped(self, resp: requests.Response, cap: int, read_timeout: Optional[float] = None) -> bytes:
        """The body of a streamed requests response: see :meth:`_read_raw`."""
        try:
            return self._read_raw(resp.raw, resp.headers.get("Content-Length"), cap, read_timeout)
        finally:
            resp.close()

    def _read_raw(self, raw: Any, declared: Optional[str], cap: int, read_timeout: Optional[float]) -> bytes:
        """The body of a urllib3 response, at most ``cap`` bytes, complete within ``read_timeout``.

        A read timeout bounds the wait for each byte, not the whole body: a server that drips a
        byte now and then would hold the call for ever. So the body must also be complete
        within ``read_timeout`` of the headers (urllib3 >= 2, which has ``read1``).
        """
        if declared and declared.isdigit() and int(declared) > cap:
            raise ServerError(
                f"{self.server.name}: answer of {int(declared)} bytes exceeds the {cap}-byte cap",
                server=self.server.name,
                fault="malformed",
            )
        chunks: List[bytes] = []
        total = 0
        deadline = time.monotonic() + read_timeout if read_timeout is not None else None
        try:
            for chunk in body_chunks(raw, deadline, _CHUNK):
                total += len(chunk)
                if total > cap:
                    raise ServerError(
                        f"{self.server.name}: answer exceeds the {cap}-byte cap", server=self.server.name, fault="malformed"
                    )
                chunks.append(chunk)
        except TooSlow:
            raise ServerError(
                f"{self.server.name}: answer not complete after {read_timeout:g} s (read timed out)",
                server=self.server.name,
                fault="read_timeout",
            ) from None
        except urllib3.exceptions.ReadTimeoutError:
            raise ServerError(f"{self.server.name}: no answer (read timed out)", server=self.server.name, fault="read_timeout") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerError(f"{self.server.name}: answer cut short: {short_reason(exc)}", server=self.server.name, fault=classify(exc) or "connect") from None
        return b"".join(chunks)

    def _json(self, resp: requests.Response, timeout: Optional[Timeouts] = None) -> Any:
        body = self._read_capped(resp, self.max_json_bytes, (timeout or self.timeout)[1])
        if resp.status_code >= 400:
            raise ServerError(
                f"{self.server.name}: HTTP {resp.status_code} on {resp.request.method} {_path(resp)}",
                server=self.server.name,
                status=resp.status_code,
            )
        if not body:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # deep nesting makes json raise RecursionError
            raise ServerError(
                f"{self.server.name}: malformed JSON from {_path(resp)}", server=self.server.name, fault="malformed"
            ) from None

    def get_json(self, path: str, *, timeout: Optional[Timeouts] = None, params: Optional[Mapping[str, Any]] = None) -> Any:
        """GET ``path`` and decode JSON; any failure is a ServerError."""
        return self._json(self._request("GET", path, timeout=timeout, params=params), timeout)

    def post_json(self, path: str, body: Any, *, timeout: Optional[Timeouts] = None) -> Any:
        """POST JSON to ``path``; any failure is a ServerError. An empty answer is None."""
        return self._json(self._request("POST", path, timeout=timeout, json=body), timeout)

    # -- the API ------------------------------------------------------------------------------

    def _light_pool(self, maxsize: int) -> urllib3.HTTPConnectionPool:
        """A bare urllib3 pool (urllib3 is requests' own transport) with the session's headers
        and TLS verification. requests adds about 1 ms of CPU per request on top of urllib3
        (hooks, cookies, settings merging): the requests every job or every probe makes go
        through such a pool."""
        host = self.server.host or "127.0.0.1"
        kwargs: Dict[str, Any] = {"maxsize": maxsize, "headers": dict(self.server.headers), "retries": False}
        if self._ssl is not None:
            kwargs["ssl_context"] = self._ssl
            kwargs["cert_reqs"] = "CERT_NONE" if self.server.verify_tls is False else "CERT_REQUIRED"
            return LightHTTPSPool(host, self.server.port, **kwargs)
        return LightHTTPPool(host, self.server.port, **kwargs)

    def _probe_pool(self) -> urllib3.HTTPConnectionPool:
        """The pool of status probes, the most frequent request the library makes, to every
        server at once (32 probes in parallel serialise on the GIL)."""
        pool = self._probe
        if pool is None:
            with self._lock:
                if self._probe is None:
                    self._probe = self._light_pool(2)
                pool = self._probe
        assert pool is not None
        return pool

    def _post_pool(self) -> urllib3.HTTPConnectionPool:
        """The pool of ``POST /prompt`` (one per job), its connections tracked so close() can
        cut a POST that hangs."""
        pool = self._poster
        if pool is None:
            with self._lock:
                if self._closed:
                    raise ServerError(f"{self.server.name}: client closed", server=self.server.name, fault="connect")
                if self._poster is None:
                    self._poster = tracked(self._light_pool(self._pool_maxsize), self._conns)
                pool = self._poster
        assert pool is not None
        return pool

    def _urlopen(self, pool: urllib3.HTTPConnectionPool, method: str, path: str, timeout: Timeouts, **kwargs: Any) -> Tuple[int, bytes]:
        """``(status, body)`` of one request through a bare urllib3 pool (the probe's or the
        POST's): failures named as :meth:`_request` names them, the body capped at
        ``max_json_bytes``."""
        self._check_resolvable(timeout[0])
        try:
            resp = pool.urlopen(
                method, self._prefix + path, timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                preload_content=False, redirect=False, retries=False, **kwargs,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerError(f"{self.server.name}: {failure_reason(exc)}", server=self.server.name, fault=classify(exc)) from None
        try:
            body = self._read_raw(resp, resp.headers.get("Content-Length"), self.max_json_bytes, timeout[1])
        except BaseException:
            resp.close()  # a body left half-read must not go back to the pool as a live connection
            raise
        finally:
            resp.release_conn()
        return resp.status, body

    def probe_json(self, path: str, *, timeout: Timeouts) -> Any:
        """GET ``path`` through the probe pool; same errors and size cap as :meth:`get_json`."""
        status, body = self._urlopen(self._probe_pool(), "GET", path, timeout)
        if status >= 400:
            raise ServerError(f"{self.server.name}: HTTP {status} on GET {path}", server=self.server.name, status=status)
        try:
            return json.loads(body) if body else None
        except (ValueError, RecursionError):
            raise ServerError(f"{self.server.name}: malformed JSON from {path}", server=self.server.name, fault="malformed") from None

    def queue(self, *, timeout: Optional[Timeouts] = None, probe: bool = False) -> Tuple[List[str], List[str]]:
        """``(running prompt_ids, pending prompt_ids in run order)`` from ``GET /queue``.

        ``probe=True`` uses the light probe connection (status polling).
        """
        if probe:
            data = self.probe_json("/queue", timeout=timeout or PROBE_TIMEOUT)
        else:
            data = self.get_json("/queue", timeout=timeout)
        if not isinstance(data, dict):
            raise ServerError(f"{self.server.name}: /queue answered {type(data).__name__}, not an object", server=self.server.name, fault="malformed")
        running = queue_items(data.get("queue_running"), self.server.name)
        pending = queue_items(data.get("queue_pending"), self.server.name)
        # The server's pending list is a heap array, not sorted: order by number.
        pending.sort(key=lambda item: item[0])
        return [pid for _, pid in running], [pid for _, pid in pending]

    def system_stats(self, *, timeout: Optional[Timeouts] = None, probe: bool = False) -> Dict[str, Any]:
        """``GET /system_stats`` (``probe=True``: through the light probe connection, as the
        status monitor reads it alongside its first probe)."""
        if probe:
            data = self.probe_json("/system_stats", timeout=timeout or PROBE_TIMEOUT)
        else:
            data = self.get_json("/system_stats", timeout=timeout)
        return data if isinstance(data, dict) else {}

    def object_info(self, *, timeout: Optional[Timeouts] = None) -> Dict[str, Any]:
        data = self.get_json("/object_info", timeout=timeout)
        if not isinstance(data, dict):
            raise ServerError(f"{self.server.name}: /object_info is not an object", server=self.server.name, fault="malformed")
        return data

    def history(self, prompt_id: str, *, timeout: Optional[Timeouts] = None) -> Optional[Dict[str, Any]]:
        """The history item of ``prompt_id``, or None while queued, running or unknown."""
        data = self.get_json(f"/history/{prompt_id}", timeout=timeout)
        if not isinstance(data, dict):
            raise ServerError(f"{self.server.name}: /history answered {type(data).__name__}", server=self.server.name, fault="malformed")
        item = data.get(prompt_id)
        if item is None:
            return None
        if not isinstance(item, dict):
            raise ServerError(f"{self.server.name}: history item of {prompt_id} is not an object", server=self.server.name, fault="malformed")
        return item

    def post_prompt(self, body: Mapping[str, Any], *, timeout: Optional[Timeouts] = None) -> Dict[str, Any]:
        """``POST /prompt``: the 200 answer, :class:`WorkflowError` for a 400, else ServerError.
        Sent through a bare urllib3 pool (see :meth:`_light_pool`): once per job."""
        timeout = timeout or self.timeout
        if self._closed:
            raise ServerError(f"{self.server.name}: client closed", server=self.server.name, fault="connect")
        try:
            payload = json.dumps(body, allow_nan=False).encode("utf-8")
        except ValueError as exc:  # NaN or infinity: not JSON (requests refused it alike)
            raise ServerError(f"{self.server.name}: the workflow is not valid JSON: {exc}", server=self.server.name) from None
        status, raw = self._urlopen(
            self._post_pool(), "POST", "/prompt", timeout,
            body=payload, headers=dict(self.server.headers, **{"Content-Type": "application/json"}),
        )
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            data = None
        if status == 400 and isinstance(data, dict):
            raise parse_workflow_error(data, self.server.name)
        if status >= 400:
            raise ServerError(
                f"{self.server.name}: HTTP {status} on POST /prompt{explain_status(status, f'the workflow of {len(payload)} bytes')}",
                server=self.server.name,
                status=status,
            )
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise ServerError(f"{self.server.name}: malformed answer to POST /prompt", server=self.server.name, fault="malformed")
        return data

    def delete_pending(self, prompt_ids: Sequence[str], *, timeout: Optional[Timeouts] = None) -> None:
        self.post_json("/queue", {"delete": list(prompt_ids)}, timeout=timeout)

    def interrupt(self, prompt_id: str, *, timeout: Optional[Timeouts] = None) -> None:
        # Always with the id: an empty body would stop another user's job.
        self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=timeout)

    def upload_image(self, path: str, *, subfolder: str = "", overwrite: bool = True, content: Optional[bytes] = None) -> str:
        """Upload a local image to the server's input folder; the name to use in LoadImage.

        ``content``: the bytes to send under ``path``'s name (already read, e.g. to name the
        subfolder by their hash: what is sent is then exactly what was hashed)."""
        name = os.path.basename(path)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content is None:
            with open(path, "rb") as fh:
                content = fh.read()
        files = {"image": (name, content, ctype)}
        data = {"overwrite": "true" if overwrite else "false", "type": "input"}
        if subfolder:
            data["subfolder"] = subfolder
        resp = self._request("POST", "/upload/image", files=files, data=data)
        if resp.status_code >= 400:
            resp.close()
            raise ServerError(
                f"{self.server.name}: HTTP {resp.status_code} on POST /upload/image{explain_status(resp.status_code, f'the input {name} of {len(content)} bytes')}",
                server=self.server.name,
                status=resp.status_code,
            )
        answer = self._json(resp)
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
            raise ServerError(f"{self.server.name}: malformed answer to /upload/image", server=self.server.name, fault="malformed")
        sub = answer.get("subfolder") or ""
        # LoadImage names a file in a subfolder as "sub/name".
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    def download(self, filename: str, subfolder: str, type_: str, dest: str, *, max_bytes: int = MAX_FILE_BYTES) -> int:
        """Stream ``/view`` into ``dest``: written to a temporary file beside it, then renamed
        over it (``dest`` is complete or untouched). Local failures are LocalFileError."""
        params = {"filename": filename, "subfolder": subfolder, "type": type_}
        resp = self._request("GET", "/view", params=params)
        if resp.status_code != 200:
            resp.close()
            raise ServerError(
                f"{self.server.name}: HTTP {resp.status_code} fetching {filename!r}",
                server=self.server.name,
                status=resp.status_code,
            )
        tmp: Optional[str] = None
        total = 0
        try:
            try:
                fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=os.path.dirname(dest) or ".")
            except OSError as exc:
                raise LocalFileError(f"cannot write in {os.path.dirname(dest)}: {exc.strerror or exc}", path=dest) from None
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in resp.iter_content(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ServerError(f"{self.server.name}: {filename!r} exceeds {max_bytes} bytes", server=self.server.name, fault="malformed")
                        fh.write(chunk)
            except requests.exceptions.RequestException as exc:
                raise ServerError(f"{self.server.name}: download of {filename!r} cut short: {short_reason(exc)}", server=self.server.name, fault=classify(exc) or "connect") from None
            except OSError as exc:  # a full disk, a share gone away
                raise LocalFileError(f"cannot write {dest}: {exc.strerror or exc}", path=dest) from None
            localfiles.replace(tmp, dest)
            tmp = None
        finally:
            resp.close()
            localfiles.remove_quietly(tmp)  # never hides the error that got us here
        return total

    def close(self) -> None:
        """Close every connection, cutting requests still waiting for an answer (they raise
        ServerError); later requests raise at once."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for conn in list(self._conns):
                    sock = getattr(conn, "sock", None)
                    if sock is not None:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                if self._session is not None:
                    self._session.close()
                for conn in list(self._conns):
                    try:
                        conn.close()  # one a pool no longer holds would wait for the GC
                    except OSError:
                        pass
                for pool in (self._probe, self._poster):
                    if pool is not None:
                        pool.close()


def _path(resp: requests.Response) -> str:
    return urlsplit(resp.url).path or "/"
