"""Signing in to the web UI with a token: the login page, the session cookie (a random id, never
the token), each user's view through their cookie, signing out, expiry, and neither the cookie
nor the token reaching a server."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Tuple

import pytest
import requests
from gateway_util import ScriptClient, gateway_over

from comfy_cluster.gateway.auth import add_user, session_cookie_name
from comfy_cluster.gateway.login import WRONG_TOKEN
from comfy_cluster.gateway.sessions import MemorySessionStore, Session, Sessions
from comfy_cluster.testing import MockCluster
from comfy_cluster.testing.workflows import image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}  # a browser's navigation


class Clock:
    """Wall time the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _users(tmp_path: Any, *names: str) -> Dict[str, str]:
    path = str(tmp_path / "users.json")
    return {"path": path, **{name: add_user(path, name) for name in names}}


def _sign_in(url: str, token: str) -> Tuple[requests.Session, requests.Response]:
    """A browser-like session that posted the login form."""
    s = requests.Session()
    r = s.post(url + "/login", data={"token": token, "next": "/"}, allow_redirects=False, timeout=10)
    return s, r


def _cookie(s: requests.Session) -> Dict[str, str]:
    return {c.name: c.value for c in s.cookies}


# -- the login page and the cookie ------------------------------------------------------------


def test_a_page_without_credentials_goes_to_the_login_form_and_a_token_opens_a_session(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"], "user_dir": str(tmp_path / "ud")}) as gw:
        r = requests.get(gw.url + "/?x=1", headers=PAGE, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/login?next=%2F%3Fx%3D1"
        assert requests.get(gw.url + "/queue", timeout=10).status_code == 401  # the page's API calls: 401, no redirect
        assert requests.get(gw.url + "/extensions/core/groupNode.js", timeout=10).status_code == 401
        # The frontend build's own files are public (a browser fetches the manifest without cookies).
        assert requests.get(gw.url + "/materialdesignicons.min.css", timeout=10).status_code == 200
        form = requests.get(gw.url + r.headers["Location"], headers=PAGE, timeout=10)
        assert form.status_code == 200 and 'name="token"' in form.text and 'value="/?x=1"' in form.text
        assert requests.get(gw.url + "/login/status", timeout=10).json() == {"user": None, "required": True}

        s, signed = _sign_in(gw.url, users["alice"] + "\n")  # a pasted token's newline is forgiven
        assert signed.status_code == 303 and signed.headers["Location"] == "/"
        set_cookie = signed.headers["Set-Cookie"]
        name = session_cookie_name(f"127.0.0.1:{gw.port}")
        assert set_cookie.startswith(name + "=") and name.endswith(f"_{gw.port}")
        attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in set_cookie.lower()
        assert users["alice"] not in set_cookie and len(_cookie(s)[name]) >= 40  # a random id, not the token
        assert s.get(gw.url + "/login/status", timeout=10).json()["user"] == "alice"
        assert s.get(gw.url + "/queue", timeout=10).status_code == 200
        page = s.get(gw.url + "/", headers=PAGE, allow_redirects=False, timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
        # Signed in already: the login page goes straight on, only to this gateway's own paths.
        for target, where in (("/queue", "/queue"), ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil", "/")):
            again = s.get(gw.url + "/login", params={"next": target}, headers=PAGE, allow_redirects=False, timeout=10)
            assert again.status_code == 303 and again.headers["Location"] == where


def test_a_wrong_token_is_refused_with_one_line(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, token="adm1n", gateway_kwargs={"users": users["path"]}) as gw:
        for wrong in ("not-a-token", "", users["alice"][:-1]):
            s, r = _sign_in(gw.url, wrong)
            assert r.status_code == 401 and "Set-Cookie" not in r.headers and not s.cookies
            assert r.text.count("\n") == 0 and r.text.startswith("401: wrong token")
        readme = " ".join(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split())
        assert f"`{WRONG_TOKEN}`" in readme  # README quotes the real message
        html = requests.post(gw.url + "/login", data={"token": "nope"}, headers=PAGE, timeout=10)
        assert html.status_code == 401 and 'class="error">wrong token' in html.text and 'name="token"' in html.text
        admin, r = _sign_in(gw.url, "adm1n")  # the admin token signs in too: every job
        assert r.status_code == 303 and admin.get(gw.url + "/login/status", timeout=10).json()["user"] == "admin"


def test_a_token_in_the_first_url_becomes_a_session_and_leaves_the_address_bar(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"]}) as gw:
        s = requests.Session()
        r = s.get(gw.url + "/", params={"token": users["alice"], "x": "1"}, headers=PAGE, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/?x=1" and users["alice"] not in r.headers["Location"]
        assert s.get(gw.url + "/login/status", timeout=10).json()["user"] == "alice"
        # Scripts' ?token= (websocket clients) stays a per-request credential: no cookie.
        api = requests.get(gw.url + "/queue", params={"token": users["alice"]}, timeout=10)
        assert api.status_code == 200 and "Set-Cookie" not in api.headers
        # A link on another site carrying a token (maybe not hers: login CSRF) signs nobody in.
        other = requests.Session()
        linked = other.get(gw.url + "/", params={"token": users["alice"]}, headers={**PAGE, "Sec-Fetch-Site": "cross-site"}, allow_redirects=False, timeout=10)
        assert linked.status_code == 303 and linked.headers["Location"] == "/" and not other.cookies
        bookmarked = other.get(gw.url + "/", params={"token": users["alice"]}, headers={**PAGE, "Sec-Fetch-Site": "none"}, allow_redirects=False, timeout=10)
        assert bookmarked.status_code == 303 and other.get(gw.url + "/login/status", timeout=10).json()["user"] == "alice"
        wrong = requests.get(gw.url + "/", params={"token": "nope"}, headers=PAGE, allow_redirects=False, timeout=10)
        assert wrong.status_code == 303 and wrong.headers["Location"].startswith("/login?") and "Set-Cookie" not in wrong.headers


def test_without_token_or_users_there_is_nothing_to_sign_in_to(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        assert requests.get(gw.url + "/", headers=PAGE, allow_redirects=False, timeout=10).status_code == 200
        r = requests.get(gw.url + "/login", params={"next": "/queue"}, headers=PAGE, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/queue"
        _, posted = _sign_in(gw.url, "anything")
        assert posted.status_code == 303 and "Set-Cookie" not in posted.headers


# -- the cookie is the user ---------------------------------------------------------------------


def test_each_users_cookie_gives_their_own_jobs_settings_and_events(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))  # bob's job need not wait for alice's
    users = _users(tmp_path, "alice", "bob")
    user_dir = tmp_path / "ud"
    with gateway_over(cluster, gateway_kwargs={"users": users["path"], "user_dir": str(user_dir)}) as gw:
        a_http, _ = _sign_in(gw.url, users["alice"])
        b_http, _ = _sign_in(gw.url, users["bob"])
        alice, bob = ScriptClient(gw.url, cookies=_cookie(a_http)), ScriptClient(gw.url, cookies=_cookie(b_http))
        try:
            a_run = alice.run(sleep_workflow(seconds=30.0, steps=100, seed=1))
            alice.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            b_done = bob.run(image_workflow(color=3))
            bob.follow(b_done)
            # Queue and history: each their own (the others' only as counts).
            q = bob.http.get(gw.url + "/api/queue", timeout=10).json()
            assert q["queue_running"] == [] and q["queue_others"] == {"running": 1, "pending": 0}
            assert [i[1] for i in alice.http.get(gw.url + "/queue", timeout=10).json()["queue_running"]] == [a_run]
            assert list(bob.http.get(gw.url + "/history", timeout=10).json()) == [b_done]
            assert alice.http.get(gw.url + f"/history/{b_done}", timeout=10).json() == {}
            # Cancel without an id (the page's Cancel) stops the caller's own job only.
            assert bob.http.post(gw.url + "/interrupt", json={}, timeout=10).status_code == 200
            assert [s.interrupt_requests for s in cluster] == [[], []]
            assert alice.http.post(gw.url + "/interrupt", json={}, timeout=10).status_code == 200
            assert [f["type"] for f in alice.follow(a_run)][-2:] == ["execution_interrupted", "executing"]
            assert not [f for f in bob.socket.frames if isinstance(f, dict) and f.get("data", {}).get("prompt_id") == a_run]
            # Settings and workflows: in each user's own folder.
            assert alice.http.post(gw.url + "/api/settings/Comfy.Theme", json="dark", timeout=10).status_code == 200
            saved = alice.http.post(gw.url + "/api/userdata/workflows%2Fshot.json", data=b"{}", timeout=10)
            assert saved.status_code == 200
            assert json.loads((user_dir / "alice" / "comfy.settings.json").read_text()) == {"Comfy.Theme": "dark"}
            assert (user_dir / "alice" / "workflows" / "shot.json").exists()
            assert bob.http.get(gw.url + "/api/settings", timeout=10).json() == {}
            assert bob.http.get(gw.url + "/api/userdata/workflows%2Fshot.json", timeout=10).status_code == 404
        finally:
            alice.close()
            bob.close()


def test_with_users_the_page_asks_no_profile_even_in_multi_user_mode(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    user_dir = tmp_path / "ud"
    with gateway_over(cluster, gateway_kwargs={"users": users["path"], "user_dir": str(user_dir), "multi_user": True}) as gw:
        s, _ = _sign_in(gw.url, users["alice"])
        # The sign-in names the user: ComfyUI's single-user answers (no user-select screen).
        assert "users" not in s.get(gw.url + "/api/users", timeout=10).json()
        assert s.post(gw.url + "/api/settings/Comfy.Theme", json="dark", headers={"comfy-user": "bob"}, timeout=10).status_code == 200
        assert json.loads((user_dir / "alice" / "comfy.settings.json").read_text()) == {"Comfy.Theme": "dark"}


def test_logout_and_a_new_token_end_the_session(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"]}) as gw:
        s, _ = _sign_in(gw.url, users["alice"])
        kept = _cookie(s)
        out = s.post(gw.url + "/logout", allow_redirects=False, timeout=10)
        assert out.status_code == 200 and not s.cookies  # the cookie is cleared
        replay = requests.get(gw.url + "/queue", cookies=kept, timeout=10)
        assert replay.status_code == 401  # and the id is worth nothing, even if kept
        page = requests.get(gw.url + "/logout", headers=PAGE, allow_redirects=False, timeout=10)
        assert page.status_code == 303 and page.headers["Location"] == "/login"
        s2, _ = _sign_in(gw.url, users["alice"])
        assert s2.get(gw.url + "/queue", timeout=10).status_code == 200
        linked = s2.get(gw.url + "/logout", headers={**PAGE, "Sec-Fetch-Site": "cross-site"}, allow_redirects=False, timeout=10)
        assert linked.headers["Location"] == "/" and "Set-Cookie" not in linked.headers  # another site's link
        assert s2.get(gw.url + "/queue", timeout=10).status_code == 200
        add_user(users["path"], "alice")  # a new token for alice (the old one leaked, say)
        assert s2.get(gw.url + "/queue", timeout=10).status_code == 401
        back = s2.get(gw.url + "/", headers=PAGE, allow_redirects=False, timeout=10)
        assert back.status_code == 303 and back.headers["Location"].startswith("/login?")


def test_a_session_expires(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    clock = Clock()
    with gateway_over(cluster, gateway_kwargs={"users": users["path"], "sessions": Sessions(ttl=3600, clock=clock)}) as gw:
        s, r = _sign_in(gw.url, users["alice"])
        assert "max-age=3600" in r.headers["Set-Cookie"].lower()
        clock.now += 3599
        assert s.get(gw.url + "/queue", timeout=10).status_code == 200
        clock.now += 1
        assert s.get(gw.url + "/queue", timeout=10).status_code == 401
        assert s.get(gw.url + "/login/status", timeout=10).json()["user"] is None


def test_a_session_survives_a_restart_on_the_same_state_and_expires_there(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    clock = Clock()
    kwargs = {"users": users["path"], "state": f"sqlite:///{tmp_path}/gw.sqlite3", "sessions": Sessions(ttl=3600, clock=clock)}
    with gateway_over(cluster, gateway_kwargs=kwargs) as gw:
        kept, _ = _sign_in(gw.url, users["alice"])
        [session_id] = _cookie(kept).values()
        ended, _ = _sign_in(gw.url, users["alice"])
        [ended_id] = _cookie(ended).values()
        assert ended.post(gw.url + "/logout", timeout=10).status_code == 200
    kwargs["sessions"] = Sessions(ttl=3600, clock=clock)  # a new process: nothing in memory
    with gateway_over(cluster, gateway_kwargs=kwargs) as gw:
        name = session_cookie_name(gw.url.split("//", 1)[1])  # another port: the same id under this gateway's name
        assert requests.get(gw.url + "/queue", cookies={name: session_id}, timeout=10).status_code == 200
        assert requests.get(gw.url + "/login/status", cookies={name: session_id}, timeout=10).json()["user"] == "alice"
        assert requests.get(gw.url + "/queue", cookies={name: ended_id}, timeout=10).status_code == 401
        clock.now += 3600
        assert requests.get(gw.url + "/queue", cookies={name: session_id}, timeout=10).status_code == 401


def test_origin_check_still_holds_for_cookies_and_the_login_form(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"]}) as gw:
        s, _ = _sign_in(gw.url, users["alice"])
        evil = {"Origin": "http://evil.example"}
        r = s.post(gw.url + "/prompt", json={"prompt": image_workflow()}, headers=evil, timeout=10)
        assert r.status_code == 403 and cluster[0].received_prompts == []
        assert requests.post(gw.url + "/login", data={"token": users["alice"]}, headers=evil, allow_redirects=False, timeout=10).status_code == 403
        assert s.post(gw.url + "/logout", headers=evil, timeout=10).status_code == 403
        assert s.get(gw.url + "/login/status", timeout=10).json()["user"] == "alice"
        own = {"Origin": gw.url}
        assert s.post(gw.url + "/prompt", json={"prompt": image_workflow()}, headers=own, timeout=10).status_code == 200


def test_neither_the_cookie_nor_the_token_reaches_a_server(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,), web_extensions={"pack": {"x.js": "// x"}})
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"]}) as gw:
        http, _ = _sign_in(gw.url, users["alice"])
        cookie = _cookie(http)
        client = ScriptClient(gw.url, cookies=cookie)
        try:
            done = client.run(image_workflow(color=9))
            client.follow(done)
            [image] = client.history(done)["outputs"]["3"]["images"]
            assert client.view(image).status_code == 200
            assert client.http.get(gw.url + "/extensions/pack/x.js", timeout=10).status_code == 200
            up = client.http.post(gw.url + "/upload/image", files={"image": ("a.png", b"\x89PNG", "image/png")}, timeout=10)
            assert up.status_code == 200
            for path in ("/object_info", "/api/view_metadata/checkpoints?filename=x", "/api/experiment/models", "/api/i18n"):
                client.http.get(gw.url + path, timeout=10)
        finally:
            client.close()
        # Also the ?token= of a page's first URL.
        requests.get(gw.url + "/", params={"token": users["alice"]}, headers=PAGE, timeout=10)
    secrets = [users["alice"], *cookie.values()]
    seen: List[Tuple[str, Dict[str, str]]] = cluster[0].request_headers
    assert any(path == "/view" for path, _ in seen) and any(path.startswith("/extensions/pack") for path, _ in seen)
    for path, headers in seen:
        assert "cookie" not in headers and "authorization" not in headers, f"{path} got {sorted(headers)}"
        assert not any(s in v for s in secrets for v in headers.values()), path
    for path, query in cluster[0].request_queries:
        assert not any(s in v for s in secrets for v in query.values()) and "token" not in query, path


# -- sessions, store and cookie names ----------------------------------------------------------


def test_sessions_are_random_ids_kept_by_hash_and_bounded() -> None:
    store = MemorySessionStore(limit=2)
    clock = Clock()
    sessions = Sessions(store, ttl=10, clock=clock)
    first = sessions.open("alice", "proof", False)
    assert sessions.get(first) == Session("alice", "proof", False, clock.now + 10)
    assert store.get(first) is None  # kept under the id's hash: a copy of the store opens nothing
    second, third = sessions.open("bob", "p", False), sessions.open("carol", "p", False)
    assert len({first, second, third}) == 3 and len(store) == 2 and sessions.get(first) is None  # the oldest went
    clock.now += 10
    assert sessions.get(second) is None and len(store) == 1  # expired: forgotten on sight
    clock.now += 60
    sessions.open("dave", "p", False)  # opening purges the expired ones
    assert len(store) == 1
    assert sessions.get("") is None and sessions.get("x" * 1000) is None
    with pytest.raises(ValueError, match="session lifetime must be positive"):
        Sessions(ttl=0)


def test_the_cookie_name_keeps_two_gateways_on_one_host_apart() -> None:
    assert session_cookie_name("studio-gw:8188") == "comfy_cluster_session_8188"
    assert session_cookie_name("studio-gw:8189") == "comfy_cluster_session_8189"
    assert session_cookie_name("[::1]:8188") == "comfy_cluster_session_8188"
    assert session_cookie_name("studio-gw") == session_cookie_name("[::1]") == session_cookie_name(None) == "comfy_cluster_session"
