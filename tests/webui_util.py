"""A scripted session of the web page's per-user requests, run against any ComfyUI URL.

:func:`userdata_session` does what the page does when a user saves, lists, opens, renames and
deletes workflows and changes settings, with the path forms the page sends (``%2F`` for
subfolders), plus bad input. It returns each answer (status and a comparable body), so the
gateway's answers can be checked against expectations and against a real ComfyUI's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional, Tuple

import requests

Answer = Tuple[str, int, Any]


def _body(resp: requests.Response) -> Any:
    try:
        data = resp.json()
    except ValueError:
        return resp.text
    if isinstance(data, dict) and {"path", "size", "modified", "created"} <= set(data):
        return {"path": data["path"], "size": data["size"]}  # times differ between runs
    if isinstance(data, list):
        out = []
        for e in data:
            if isinstance(e, dict):
                e = {k: v for k, v in e.items() if k not in ("modified", "created")}
            out.append(e)
        return out
    return data


def userdata_session(base: str, prefix: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> List[Answer]:
    """Run the session on ``base`` (``http://host:port``); ``prefix`` keeps its files apart."""
    p = prefix or "cc" + uuid.uuid4().hex[:8]
    s = requests.Session()
    s.headers.update(headers or {})
    out: List[Answer] = []

    def call(label: str, method: str, path: str, data: Optional[bytes] = None) -> Any:
        resp = s.request(method, base + path, data=data, timeout=30)
        out.append((label, resp.status_code, _body(resp)))
        return resp

    wf = json.dumps({"nodes": [], "links": []}).encode()
    call("save", "POST", f"/api/userdata/{p}%2Fa.json", wf)
    call("save again, no overwrite", "POST", f"/api/userdata/{p}%2Fa.json?overwrite=false", wf)
    call("save full_info", "POST", f"/api/userdata/{p}%2Fsub%2Fb.json?overwrite=true&full_info=true", b"{}")
    call("get", "GET", f"/api/userdata/{p}%2Fa.json")
    call("get missing", "GET", f"/api/userdata/{p}%2Fnone.json")
    call("list", "GET", f"/api/userdata?dir={p}")
    call("list recurse", "GET", f"/api/userdata?dir={p}&recurse=true")
    call("list split", "GET", f"/api/userdata?dir={p}&recurse=true&split=true")
    call("list full_info", "GET", f"/api/userdata?dir={p}&recurse=true&full_info=true")
    call("list no dir", "GET", "/api/userdata")
    call("list missing dir", "GET", f"/api/userdata?dir={p}-none")
    call("list outside", "GET", "/api/userdata?dir=..%2F..")
    call("v2 list", "GET", f"/api/v2/userdata?path={p}")
    call("v2 missing", "GET", f"/api/v2/userdata?path={p}-none")
    call("v2 a file", "GET", f"/api/v2/userdata?path={p}%2Fa.json")
    call("v2 outside", "GET", "/api/v2/userdata?path=..%2F..")
    call("move", "POST", f"/api/userdata/{p}%2Fa.json/move/{p}%2Fc.json")
    call("move onto, no overwrite", "POST", f"/api/userdata/{p}%2Fc.json/move/{p}%2Fsub%2Fb.json?overwrite=false")
    call("move missing", "POST", f"/api/userdata/{p}%2Fa.json/move/{p}%2Fd.json")
    call("move full_info", "POST", f"/api/userdata/{p}%2Fc.json/move/{p}%2Fe.json?full_info=true")
    call("get outside", "GET", "/api/userdata/..%2F..%2Fcomfy.settings.json")
    call("delete", "DELETE", f"/api/userdata/{p}%2Fe.json")
    call("delete again", "DELETE", f"/api/userdata/{p}%2Fe.json")
    call("list after", "GET", f"/api/userdata?dir={p}&recurse=true")
    key = f"CC.Test.{p}"
    call("setting unset", "GET", f"/api/settings/{key}")
    call("set setting", "POST", f"/api/settings/{key}", json.dumps({"x": [1, 2]}).encode())
    call("setting", "GET", f"/api/settings/{key}")
    call("set settings", "POST", "/api/settings", json.dumps({key + ".b": True}).encode())
    call("setting b", "GET", f"/api/settings/{key}.b")
    resp = s.get(base + "/api/settings", timeout=30)
    out.append(("settings has both", resp.status_code, {k: v for k, v in resp.json().items() if k.startswith(key)}))
    return out
