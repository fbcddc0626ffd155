"""The routes of ComfyUI's web page on the gateway, over HTTP (the page itself runs in
``test_gateway_browser.py``): the frontend's files, users and settings per user, userdata, the
servers' web extensions as one list, and the union reads (i18n, experiment/models, internal)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.gateway.cli import run_gateway
from comfy_cluster.gateway.frontend import package_dir
from comfy_cluster.gateway.userstore import StoredFile, UserStore, clean_path
from comfy_cluster.testing import MockCluster, MockComfyServer
from gateway_util import gateway_over
from webui_util import userdata_session

REAL = [s.strip() for s in os.environ.get("COMFY_REAL_SERVERS", "").split(",") if s.strip()]
STATIC = package_dir("comfyui_frontend_package", "static")


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster((1.0, 1.0), names=["gpu1", "gpu2"]) as c:
        yield c


def _get(gw: Gateway, path: str, **kw: Any) -> requests.Response:
    return requests.get(gw.url + path, timeout=30, **kw)


def test_the_page_and_its_files_are_comfyuis_frontend(cluster: MockCluster, tmp_path: Any) -> None:
    assert STATIC is not None, "comfyui-frontend-package is installed with the gateway extra"
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        page = _get(gw, "/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        with open(os.path.join(STATIC, "index.html"), "rb") as f:
            assert page.content == f.read()
        assert page.headers["Cache-Control"] == "no-cache"
        for path in ("/materialdesignicons.min.css", "/extensions/core/clipspace.js", "/templates/index.json", "/docs/KSampler/en.md"):
            assert _get(gw, path).status_code == 200, path
        assets = [n for n in os.listdir(os.path.join(STATIC, "assets")) if n.endswith(".js")]
        script = _get(gw, "/assets/" + assets[0])
        assert script.status_code == 200 and script.headers["Cache-Control"] == "no-cache"  # as ComfyUI
        assert isinstance(_get(gw, "/templates/index.json").json(), list)
        assert _get(gw, "/no-such-file.js").status_code == 404
        assert _get(gw, "/assets/..%2F..%2F..%2Fetc%2Fpasswd").status_code in (403, 404)


def test_every_page_route_answers_with_and_without_api(cluster: MockCluster, tmp_path: Any) -> None:
    paths = [
        "/users", "/settings", "/settings/Comfy.Locale", "/i18n", "/experiment/models", "/experiment/models/checkpoints",
        "/workflow_templates", "/v2/userdata", "/extensions", "/internal/folder_paths", "/internal/logs",
        "/internal/logs/raw", "/internal/files/output", "/object_info", "/embeddings", "/system_stats", "/features",
    ]
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        for path in paths:
            for prefix in ("", "/api"):
                r = _get(gw, prefix + path)
                assert r.status_code == 200, (prefix + path, r.status_code)
                r.json()


def test_userdata_and_settings_answer_as_comfyui(cluster: MockCluster, tmp_path: Any) -> None:
    # The same session gives the same answers on a real ComfyUI 0.3.64
    # (test_real_userdata_session_matches_comfyui below).
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        got = {label: (status, body) for label, status, body in userdata_session(gw.url, "wf")}
    assert got["save"] == (200, "wf/a.json")
    assert got["save again, no overwrite"] == (409, "File already exists")
    assert got["save full_info"] == (200, {"path": "wf/sub/b.json", "size": 2})
    assert got["get"] == (200, {"nodes": [], "links": []})
    assert got["get missing"] == (404, "")
    assert got["list"] == (200, ["a.json"])
    assert got["list recurse"] == (200, ["a.json", "sub/b.json"])
    assert got["list split"] == (200, [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]])
    assert got["list full_info"] == (200, [{"path": "a.json", "size": 26}, {"path": "sub/b.json", "size": 2}])
    assert got["list no dir"] == (400, "Directory not provided")
    assert got["list missing dir"] == (404, "Directory not found")
    assert got["list outside"] == (403, "Invalid directory")
    assert got["v2 list"] == (200, [
        {"name": "sub", "path": "wf/sub", "type": "directory"},
        {"name": "a.json", "path": "wf/a.json", "type": "file", "size": 26},
        {"name": "b.json", "path": "wf/sub/b.json", "type": "file", "size": 2},
    ])
    assert got["v2 missing"] == (404, "Requested path not found")
    assert got["v2 a file"] == (400, "Requested path is not a directory")
    assert got["v2 outside"] == (400, "Invalid path requested")
    assert got["move"] == (200, "wf/c.json")
    assert got["move onto, no overwrite"] == (409, "File already exists")
    assert got["move missing"] == (404, "")
    assert got["move full_info"] == (200, {"path": "wf/e.json", "size": 26})
    assert got["get outside"] == (403, "")
    assert got["delete"] == (204, "") and got["delete again"] == (404, "")
    assert got["list after"] == (200, ["sub/b.json"])
    assert got["setting unset"] == (200, None)
    assert got["setting"] == (200, {"x": [1, 2]}) and got["setting b"] == (200, True)
    assert got["settings has both"] == (200, {"CC.Test.wf": {"x": [1, 2]}, "CC.Test.wf.b": True})
    # Kept in ComfyUI's layout: a ComfyUI user folder works as it is, and back.
    assert json.loads((tmp_path / "default" / "comfy.settings.json").read_text())["CC.Test.wf.b"] is True
    assert (tmp_path / "default" / "wf" / "sub" / "b.json").read_bytes() == b"{}"


@pytest.mark.real_comfyui
def test_real_userdata_session_matches_comfyui(cluster: MockCluster, tmp_path: Any) -> None:
    real = userdata_session("http://" + REAL[0])
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        ours = userdata_session(gw.url)
    # Each session has its own prefix: compare with it taken out.
    def plain(answers: List[Any]) -> List[str]:
        return [json.dumps(a).replace(answers[0][2].split("/")[0], "P") for a in answers]

    assert plain(ours) == plain(real)


def test_single_user_mode_settings_and_migration(cluster: MockCluster, tmp_path: Any) -> None:
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        assert _get(gw, "/api/users").json() == {"storage": "server", "migrated": False}
        assert requests.post(gw.url + "/api/settings/Comfy.Locale", json="en").status_code == 200
        assert _get(gw, "/api/users").json() == {"storage": "server", "migrated": True}
        # comfy-user is ComfyUI's multi-user header: one user without --multi-user.
        assert _get(gw, "/api/settings/Comfy.Locale", headers={"comfy-user": "someone"}).json() == "en"
        assert requests.post(gw.url + "/settings", data="[1]").status_code == 500  # ComfyUI: plain 500


def test_multi_user_mode_keeps_each_users_settings_and_files(cluster: MockCluster, tmp_path: Any) -> None:
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path), "multi_user": True}) as gw:
        assert _get(gw, "/api/users").json() == {"storage": "server", "users": {}}
        alice = requests.post(gw.url + "/api/users", json={"username": "Alice M."}).json()
        bob = requests.post(gw.url + "/api/users", json={"username": "bob"}).json()
        assert alice.startswith("Alice-M-_") and bob.startswith("bob_")
        dup = requests.post(gw.url + "/api/users", json={"username": "bob"})
        assert (dup.status_code, dup.json()) == (400, {"error": "Duplicate username."})
        assert _get(gw, "/api/users").json() == {"storage": "server", "users": {alice: "Alice M.", bob: "bob"}}
        a, b = {"comfy-user": alice}, {"comfy-user": bob}
        requests.post(gw.url + "/api/settings/Comfy.Locale", json="fr", headers=a)
        requests.post(gw.url + "/api/userdata/workflows%2Fmine.json", data=b"{}", headers=a)
        assert _get(gw, "/api/settings", headers=a).json() == {"Comfy.Locale": "fr"}
        assert _get(gw, "/api/settings", headers=b).json() == {}
        assert _get(gw, "/api/userdata?dir=workflows", headers=a).json() == ["mine.json"]
        assert _get(gw, "/api/userdata?dir=workflows", headers=b).status_code == 404
        # An unknown user: ComfyUI's answers.
        stranger = {"comfy-user": "mallory"}
        assert _get(gw, "/api/settings", headers=stranger).status_code == 401
        assert _get(gw, "/api/v2/userdata", headers=stranger).status_code == 403
        assert _get(gw, "/api/userdata?dir=workflows", headers=stranger).status_code == 500
        assert _get(gw, "/api/settings").status_code == 401  # no header: "default", unknown here
    assert json.loads((tmp_path / "users.json").read_text()) == {alice: "Alice M.", bob: "bob"}


class MemoryStore(UserStore):
    """Another storage behind the same interface (as a database would be)."""

    def __init__(self) -> None:
        self.files: Dict[str, Dict[str, bytes]] = {}
        self.lock = threading.Lock()

    def users(self) -> Dict[str, str]:
        return {}

    def add_user(self, user_id: str, name: str) -> None:
        raise NotImplementedError

    def stat(self, user: str, path: str) -> Optional[StoredFile]:
        mine = self.files.get(user, {})
        if path in mine:
            return StoredFile(path, False, len(mine[path]))
        if not path or any(p.startswith(path + "/") for p in mine):
            return StoredFile(path, True) if mine or path else None
        return None

    def read(self, user: str, path: str) -> Optional[bytes]:
        return self.files.get(user, {}).get(path)

    def write(self, user: str, path: str, data: bytes) -> StoredFile:
        with self.lock:
            self.files.setdefault(user, {})[path] = data
        return StoredFile(path, False, len(data))

    def delete(self, user: str, path: str) -> bool:
        return self.files.get(user, {}).pop(path, None) is not None

    def move(self, user: str, source: str, dest: str) -> StoredFile:
        data = self.files[user].pop(source)
        return self.write(user, dest, data)

    def walk(self, user: str, folder: str, recurse: bool) -> List[StoredFile]:
        inside = [p for p in self.files.get(user, {}) if not folder or p.startswith(folder + "/")]
        return [StoredFile(p, False, len(self.files[user][p])) for p in sorted(inside) if recurse or "/" not in p[len(folder) + 1 :]]


def test_user_storage_is_an_interface(cluster: MockCluster, tmp_path: Any) -> None:
    store = MemoryStore()
    with gateway_over(cluster, gateway_kwargs={"user_store": store}) as gw:
        requests.post(gw.url + "/api/settings/Comfy.Locale", json="de")
        requests.post(gw.url + "/api/userdata/workflows%2Fx.json", data=b"{}")
        assert _get(gw, "/api/settings").json() == {"Comfy.Locale": "de"}
        assert _get(gw, "/api/userdata?dir=workflows").json() == ["x.json"]
    assert json.loads(store.files["default"]["comfy.settings.json"]) == {"Comfy.Locale": "de"}
    assert store.files["default"]["workflows/x.json"] == b"{}"


@pytest.mark.parametrize("path, clean", [
    ("a/b.json", "a/b.json"), ("a/./b", "a/b"), ("a/../b", "b"), ("", ""), (".", ""),
    ("..", None), ("../x", None), ("a/../../x", None), ("/etc/passwd", None), ("C:x", None), ("a\x00b", None),
])
def test_clean_path_keeps_paths_inside_the_users_folder(path: str, clean: Optional[str]) -> None:
    assert clean_path(path) == clean


def test_extensions_are_the_union_of_the_servers_each_served_by_one_that_has_it(tmp_path: Any) -> None:
    one = MockComfyServer(name="gpu1", web_extensions={"pack-a": {"a.js": "// a", "a.css": "p{}"}}).start()
    two = MockComfyServer(name="gpu2", web_extensions={"pack-b": {"js/b.js": "// b"}}).start()
    try:
        with gateway_over([one, two], gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
            listed = _get(gw, "/api/extensions").json()
            assert "/extensions/core/clipspace.js" in listed  # the frontend's own
            assert "/extensions/pack-a/a.js" in listed and "/extensions/pack-b/js/b.js" in listed
            assert len(listed) == len(set(listed))
            assert _get(gw, "/extensions/pack-a/a.js").text == "// a"
            assert _get(gw, "/extensions/pack-b/js/b.js").text == "// b"
            css = _get(gw, "/extensions/pack-a/a.css")
            assert (css.text, css.headers["Content-Type"].split(";")[0]) == ("p{}", "text/css")
            assert _get(gw, "/extensions/pack-c/c.js").status_code == 404
            two.stop()
            two_gone = lambda: "/extensions/pack-b/js/b.js" not in _get(gw, "/api/extensions").json()  # noqa: E731
            from comfy_cluster.testing import wait_until

            wait_until(two_gone, 30, message="gpu2 seen offline")
            assert _get(gw, "/extensions/pack-b/js/b.js").status_code == 404
            assert _get(gw, "/extensions/pack-a/a.js").text == "// a"
    finally:
        one.stop()
        two.stop()


def test_union_reads_of_models_i18n_and_internal_routes(tmp_path: Any) -> None:
    one = MockComfyServer(name="gpu1", models={"checkpoints": ["a.safetensors"], "loras": ["l.safetensors"]}).start()
    two = MockComfyServer(name="gpu2", models={"checkpoints": ["a.safetensors", "b.safetensors"]}).start()
    try:
        with gateway_over([one, two], gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
            folders = _get(gw, "/api/experiment/models").json()
            assert [f["name"] for f in folders].count("checkpoints") == 1
            assert "configs" not in [f["name"] for f in folders]
            assert _get(gw, "/api/experiment/models/checkpoints").json() == [
                {"name": "a.safetensors", "pathIndex": 0}, {"name": "b.safetensors", "pathIndex": 0}]
            assert _get(gw, "/api/experiment/models/loras").json() == [{"name": "l.safetensors", "pathIndex": 0}]
            assert _get(gw, "/api/experiment/models/nope").status_code == 404
            assert _get(gw, "/api/view_metadata/checkpoints?filename=a.safetensors").status_code == 404
            assert _get(gw, "/api/i18n").json() == {} and _get(gw, "/api/workflow_templates").json() == {}
            logs = _get(gw, "/internal/logs/raw").json()
            assert sorted(e["m"].split("]")[0] for e in logs["entries"]) == ["[gpu1", "[gpu2"]
            assert _get(gw, "/internal/files/bogus").status_code == 400
            assert "checkpoints" in _get(gw, "/internal/folder_paths").json()
    finally:
        one.stop()
        two.stop()


def test_front_end_root_serves_another_build(cluster: MockCluster, tmp_path: Any) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / "index.html").write_text("<p>our build</p>")
    (build / "app.js").write_text("// ours")
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path / "u"), "front_end_root": str(build)}) as gw:
        assert _get(gw, "/").text == "<p>our build</p>"
        assert _get(gw, "/app.js").text == "// ours"
        assert _get(gw, "/api/extensions").json() == []  # the build has no core extensions
    pool = ServerPool([{"url": s.url, "name": s.name} for s in cluster])
    try:
        with pytest.raises(ValueError, match="no index.html"):
            Gateway(pool, port=0, front_end_root=str(tmp_path / "missing"))
    finally:
        pool.close()


def test_cli_refuses_a_front_end_root_without_a_build(cluster: MockCluster, tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    servers = [{"name": s.name, "url": s.url} for s in cluster]
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", json.dumps(servers))
    code = run_gateway(["--port", "0", "--front-end-root", str(tmp_path)], stop=threading.Event())
    assert code == 2
    assert "--front-end-root" in capsys.readouterr().err


@pytest.mark.real_comfyui
def test_real_loader_nodes_match_the_mocks(mock_comfy: MockComfyServer) -> None:
    from comfy_cluster.testing.loader_nodes import LOADER_NODES

    real = requests.get(f"http://{REAL[0]}/object_info", timeout=60).json()
    ours = requests.get(mock_comfy.url + "/object_info", timeout=30).json()
    for name in LOADER_NODES:
        theirs, mine = dict(real[name]), dict(ours[name])
        if theirs.get("output_tooltips") != [None] * len(theirs["output"]):
            theirs.pop("output_tooltips", None)  # the mock's nodes carry no tooltip text
        # Choice lists are the servers' model files.
        for spec in (theirs, mine):
            for inputs in spec["input"].values():
                for key, value in inputs.items():
                    if isinstance(value[0], list):
                        inputs[key] = [["..."]] + value[1:]
        assert mine == theirs, name


def _previews(url: str, flags: Optional[Dict[str, Any]], seed: int) -> Tuple[str, List[bytes]]:
    """Binary frames a client gets for a 3-step txt2img run, after sending ``flags`` (if any)
    as its first message, as ComfyUI's page does."""
    import uuid

    import websocket

    from comfy_cluster.testing.workflows import txt2img_workflow

    sid = uuid.uuid4().hex
    ws = websocket.create_connection("ws" + url[len("http"):] + f"/ws?clientId={sid}", timeout=30)
    try:
        assert json.loads(ws.recv())["type"] == "status"
        if flags is not None:
            ws.send(json.dumps({"type": "feature_flags", "data": flags}))
            assert json.loads(ws.recv())["type"] == "feature_flags"
        pid = requests.post(url + "/prompt", json={"prompt": txt2img_workflow(steps=3, seed=seed), "client_id": sid}, timeout=30).json()["prompt_id"]
        frames: List[bytes] = []
        while True:
            raw = ws.recv()
            if isinstance(raw, bytes):
                frames.append(raw)
                continue
            msg = json.loads(raw)
            if msg["type"] == "executing" and msg["data"].get("node") is None and msg["data"].get("prompt_id") == pid:
                return pid, frames
    finally:
        ws.close()


def test_previews_carry_their_node_for_a_client_that_asks_as_comfyuis_page_does(cluster: MockCluster, tmp_path: Any) -> None:
    import struct

    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        features = _get(gw, "/api/features").json()
        assert features["supports_preview_metadata"] is True
        _, plain = _previews(gw.url, None, seed=5)
        assert len(plain) == 3 and all(struct.unpack(">I", f[:4])[0] == 1 for f in plain)  # PREVIEW_IMAGE
        pid, rich = _previews(gw.url, {"supports_preview_metadata": True}, seed=6)
        assert len(rich) == 3
        for frame in rich:
            kind, size = struct.unpack(">II", frame[:8])
            assert kind == 4  # PREVIEW_IMAGE_WITH_METADATA, as ComfyUI sends it to this client
            meta = json.loads(frame[8 : 8 + size])
            assert meta["node_id"] == meta["display_node_id"] == meta["real_node_id"] == "3"  # the KSampler
            assert meta["parent_node_id"] is None and meta["image_type"] == "image/png"
            assert frame[8 + size : 8 + size + 8] == b"\x89PNG\r\n\x1a\n"
        prompt_ids = {json.loads(f[8 : 8 + struct.unpack(">I", f[4:8])[0]])["prompt_id"] for f in rich}
        assert prompt_ids == {pid}  # the gateway's prompt_id, as in its other events


def _node_story(base: str, prompt: Dict[str, Any]) -> List[Any]:
    """What one job tells its client about its nodes: progress_state (each node's state),
    executing, progress, executed, in order, with ids made comparable."""
    from comfy_cluster.testing.listener import WsListener

    with WsListener(base) as listener:
        pid = requests.post(base + "/prompt", json={"prompt": prompt, "client_id": listener.client_id}, timeout=30).json()["prompt_id"]
        story = []
        for m in listener.until_done(pid):
            kind, data = m.get("type"), m.get("data") or {}
            if kind == "progress_state":
                assert data["prompt_id"] == pid
                story.append((kind, {n: (s["state"], s["value"], s["max"], s["prompt_id"] == pid, s["display_node_id"]) for n, s in data["nodes"].items()}))
            elif kind in ("executing", "progress", "executed", "execution_success", "execution_cached"):
                story.append((kind, data.get("node"), data.get("value")))
        return story


def test_node_progress_states_reach_the_client_as_from_a_server(cluster: MockCluster, mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    # ComfyUI's page (1.27) takes the running node, its outline and its progress bar from
    # progress_state, not from executing/progress.
    from comfy_cluster.testing.workflows import txt2img_workflow

    direct = _node_story(mock_comfy.url, txt2img_workflow(steps=2, seed=3))
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        through = _node_story(gw.url, txt2img_workflow(steps=2, seed=3))
    assert through == direct
    assert ("progress_state", {}) not in through and sum(1 for s in through if s[0] == "progress_state") > 8


def test_settings_posted_at_once_are_all_kept(cluster: MockCluster, tmp_path: Any) -> None:
    # The page posts several settings right after each other (on its first load, two at once).
    import concurrent.futures

    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path)}) as gw:
        def post(i: int) -> int:
            return requests.post(gw.url + f"/api/settings/CC.Key{i}", json=i, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            assert set(ex.map(post, range(40))) == {200}
        assert _get(gw, "/api/settings").json() == {f"CC.Key{i}": i for i in range(40)}


@pytest.mark.real_comfyui
def test_real_page_reads_through_the_gateway_match_the_servers_own(tmp_path: Any) -> None:
    """Over one real ComfyUI, the gateway answers the page's reads as that server does."""
    base = "http://" + REAL[0]
    pool = ServerPool([{"url": base, "name": "real0"}])
    gw = Gateway(pool, port=0, user_dir=str(tmp_path)).start()
    try:
        for path in ("/api/extensions", "/api/i18n", "/api/workflow_templates", "/api/experiment/models",
                     "/api/experiment/models/checkpoints", "/api/embeddings", "/internal/folder_paths"):
            theirs, ours = requests.get(base + path, timeout=60), requests.get(gw.url + path, timeout=60)
            a, b = ours.json(), theirs.json()
            if path == "/api/extensions":  # ComfyUI lists in file system order; the gateway sorts
                a, b = sorted(a), sorted(b)
            assert (ours.status_code, a) == (theirs.status_code, b), path
        for path in ("/", "/materialdesignicons.min.css", "/templates/index.json", "/extensions/core/clipspace.js"):
            theirs, ours = requests.get(base + path, timeout=60), requests.get(gw.url + path, timeout=60)
            assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content), path
        for path in ("/api/experiment/models/nope", "/api/view_metadata/checkpoints?filename=x.safetensors", "/internal/files/bogus"):
            assert requests.get(gw.url + path, timeout=60).status_code == requests.get(base + path, timeout=60).status_code, path
    finally:
        gw.stop()
        pool.close()
