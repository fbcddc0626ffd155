"""Record a ComfyUI server's answers for the scenarios of ``shared/comfyui-api/record.py``.

:func:`record` runs the same 25 scenarios against any ComfyUI (real or mock) and returns the
same structure as ``record.py`` writes, so the result can be compared with the reference
``transcripts.json`` by shape (``compare.py``). Two things differ from ``record.py``, both to
make the run deterministic and quick instead of timing-dependent:

* instead of sleeping one second before looking at the busy queue, it reads the websocket
  until the running job has reported ``interrupt_after`` progress steps (10, what the real
  server had reported after that second), then queries, deletes and interrupts at once;
* optional ``pause``/``resume`` callables freeze the server's running job around the two
  timing-sensitive moments (while the second and third busy jobs are queued, and from the
  10th progress step until the interrupt), so a loaded machine cannot reorder events. The
  mock offers them (``pause_jobs``/``resume_jobs``); against a real server leave them out
  and the run depends on timing like record.py's;
* the job that runs after the interrupted one may take less time (``next_seconds``); its
  30 progress steps are the same;
* the three busy jobs are sent with client-chosen prompt_ids (uuid4s, sorted): compare.py
  describes a dict keyed by ids by its first key in sorted order, so ``history_max2`` is
  only comparable when the interrupted job's id sorts before the next one's, as it happened
  to in the reference recording.

Uses only requests and websocket-client (the library's runtime dependencies).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

import requests
import websocket

__all__ = ["record", "main", "TERMINAL_EVENTS"]

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def _img(seed: int = 0, w: int = 64, h: int = 64) -> Dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": 1, "color": seed}}


def _save(src: str, prefix: str = "rec") -> Dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": prefix}}


def _sleep(src: str, seconds: float, steps: int, seed: int = 0) -> Dict[str, Any]:
    return {"class_type": "TestSleep", "inputs": {"image": [src, 0], "seconds": seconds, "steps": steps, "seed": seed}}


class _Listener:
    """One websocket for the whole recording; keeps every message in order."""

    def __init__(self, ws_base: str, timeout: float) -> None:
        self.cid = str(uuid.uuid4())
        self.ws = websocket.create_connection(f"{ws_base}/ws?clientId={self.cid}", timeout=timeout)
        self.msgs: List[Dict[str, Any]] = []

    def _next(self) -> Optional[Dict[str, Any]]:
        message = self.ws.recv()
        if isinstance(message, bytes):
            self.msgs.append({"binary": True, "length": len(message), "head_hex": message[:8].hex()})
            return None
        data: Dict[str, Any] = json.loads(message)
        self.msgs.append(data)
        return data

    def until(self, prompt_id: str, kinds: Sequence[str] = TERMINAL_EVENTS) -> None:
        while True:
            data = self._next()
            if data is not None and data["type"] in kinds and data["data"].get("prompt_id") == prompt_id:
                return

    def until_progress(self, prompt_id: str, value: int) -> None:
        while True:
            data = self._next()
            if data is None:
                continue
            if data["type"] == "progress" and data["data"].get("prompt_id") == prompt_id and data["data"].get("value", 0) >= value:
                return
            if data["type"] in TERMINAL_EVENTS and data["data"].get("prompt_id") == prompt_id:
                raise RuntimeError(f"job {prompt_id} ended before progress {value}")

    def take(self) -> List[Dict[str, Any]]:
        messages, self.msgs = self.msgs, []
        return messages

    def close(self) -> None:
        self.ws.close()


def record(
    base_url: str,
    *,
    success_seconds: float = 0.5,
    busy_seconds: float = 3.0,
    busy_steps: int = 30,
    interrupt_after: int = 10,
    next_seconds: Optional[float] = None,
    timeout: float = 60.0,
    pause: Optional[Callable[[], None]] = None,
    resume: Optional[Callable[[], None]] = None,
) -> Dict[str, Any]:
    """Run record.py's scenarios against ``base_url`` and return the transcript dict."""
    base = base_url.rstrip("/")
    ws_base = base.replace("http", "ws", 1)
    http = requests.Session()
    transcript: Dict[str, Any] = {}

    def post(path: str, body: Any) -> Dict[str, Any]:
        r = http.post(base + path, json=body, timeout=timeout)
        try:
            j: Any = r.json()
        except ValueError:
            j = r.text
        return {"status": r.status_code, "body": j}

    def get(path: str) -> Dict[str, Any]:
        r = http.get(base + path, timeout=timeout)
        try:
            j: Any = r.json()
        except ValueError:
            j = r.text[:2000]
        return {"status": r.status_code, "body": j}

    listener = _Listener(ws_base, timeout)
    try:
        transcript["ws_connect"] = listener.msgs[:]
        # 1. success with progress
        prompt = {"1": _img(1), "2": _sleep("1", success_seconds, 5, seed=time.time_ns() % 1000), "3": _save("2")}
        r = post("/prompt", {"prompt": prompt, "client_id": listener.cid})
        listener.until(r["body"]["prompt_id"])
        transcript["success"] = {"post": r, "ws": listener.take(), "history": get(f"/history/{r['body']['prompt_id']}")}
        # 2. identical resubmission: fully cached
        r = post("/prompt", {"prompt": prompt, "client_id": listener.cid})
        listener.until(r["body"]["prompt_id"])
        transcript["cached"] = {"post": r, "ws": listener.take()}
        # 3. validation errors
        transcript["unknown_node"] = post("/prompt", {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
        transcript["no_outputs"] = post("/prompt", {"prompt": {"1": _img(2)}})
        bad = dict(_img(3), inputs={"width": "wide", "height": 8, "batch_size": 1, "color": 0})
        transcript["bad_input"] = post("/prompt", {"prompt": {"1": bad, "3": _save("1")}})
        transcript["not_json"] = {"status": http.post(base + "/prompt", data=b"{nope", timeout=timeout).status_code}
        # 4. runtime error
        prompt = {"1": _img(4), "2": {"class_type": "TestFail", "inputs": {"image": ["1", 0], "message": "boom"}}, "3": _save("2")}
        r = post("/prompt", {"prompt": prompt, "client_id": listener.cid})
        listener.until(r["body"]["prompt_id"])
        transcript["runtime_error"] = {"post": r, "ws": listener.take(), "history": get(f"/history/{r['body']['prompt_id']}")}
        # 5. queue with pending items, then delete one, interrupt the running one
        ids = sorted(str(uuid.uuid4()) for _ in range(3))
        if pause is not None:
            pause()  # the first job must still be in its first step when the others queue
        for k, prompt_id in enumerate(ids):
            seconds = busy_seconds if k == 0 or next_seconds is None else next_seconds
            prompt = {"1": _img(10 + k), "2": _sleep("1", seconds, busy_steps, seed=time.time_ns() % 100000 + k), "3": _save("2")}
            answer = post("/prompt", {"prompt": prompt, "client_id": listener.cid, "prompt_id": prompt_id})
            if answer["body"].get("prompt_id") != prompt_id:
                raise RuntimeError(f"server did not accept prompt {prompt_id}: {answer}")
        if resume is not None:
            resume()
        listener.until_progress(ids[0], interrupt_after)
        if pause is not None:
            pause()  # no further step until the delete and the interrupt are in
        transcript["queue_busy"] = get("/queue")
        transcript["prompt_get"] = get("/prompt")
        transcript["delete_pending"] = post("/queue", {"delete": [ids[2]]})
        transcript["queue_after_delete"] = get("/queue")
        transcript["interrupt"] = post("/interrupt", {"prompt_id": ids[0]})
        if resume is not None:
            resume()
        listener.until(ids[0])
        transcript["interrupted_ws"] = listener.take()
        transcript["interrupted_history"] = get(f"/history/{ids[0]}")
        listener.until(ids[1])
        transcript["next_after_interrupt_ws"] = listener.take()
        transcript["deleted_history"] = get(f"/history/{ids[2]}")
        # 6. info endpoints
        transcript["system_stats"] = get("/system_stats")
        transcript["object_info_TestSleep"] = get("/object_info/TestSleep")
        transcript["object_info_SaveImage"] = get("/object_info/SaveImage")
        transcript["history_max2"] = get("/history?max_items=2")
        transcript["features"] = get("/features")
        transcript["view_missing"] = {
            "status": http.get(base + "/view", params={"filename": "nope.png", "type": "output"}, timeout=timeout).status_code
        }
        first = next(iter(transcript["success"]["history"]["body"].values()))["outputs"]["3"]["images"][0]
        v = http.get(base + "/view", params=first, timeout=timeout)
        transcript["view_ok"] = {"status": v.status_code, "content_type": v.headers.get("Content-Type"), "length": len(v.content)}
        up = http.post(
            base + "/upload/image",
            files={"image": ("lab_in.png", v.content, "image/png")},
            data={"overwrite": "true", "subfolder": "lab"},
            timeout=timeout,
        )
        transcript["upload_image"] = {"status": up.status_code, "body": up.json()}
    finally:
        listener.close()
        http.close()
    return transcript


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m comfy_cluster.testing.transcripts BASE_URL OUT.json``: record any server."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m comfy_cluster.testing.transcripts BASE_URL OUT.json", file=sys.stderr)
        return 2
    transcript = record(args[0])
    with open(args[1], "w", encoding="utf-8") as handle:
        json.dump(transcript, handle, indent=1)
    print("wrote", args[1], "keys", list(transcript))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
