"""The gateway's state store on SQLite: URLs, the default place per OS, migrations, and each
kind of row (prompts with their bound uploads, the attempt ledger, history, files, uploads,
users' settings and userdata)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from comfy_cluster.state import PromptRow, StateURLError, Store, UserData, data_dir, default_state_url, safe_url
from comfy_cluster.state.engine import HEAD
from comfy_cluster.state.urls import engine_url


def url_in(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store tests on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return url_in(tmp_path)
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize("platform, environ, expected", [
    ("linux", {"XDG_DATA_HOME": "/data"}, "sqlite:////data/comfy-cluster/gateway.sqlite3"),
    ("win32", {"LOCALAPPDATA": "C:\\Users\\a\\AppData\\Local"}, "sqlite:///C:/Users/a/AppData/Local/comfy-cluster/gateway.sqlite3"),
    ("linux", {"COMFY_CLUSTER_GATEWAY_STATE": "postgresql://comfy@db:5432/comfy"}, "postgresql://comfy@db:5432/comfy"),
])
def test_the_default_state_is_a_file_in_the_users_data_folder(platform: str, environ: dict, expected: str) -> None:
    url = default_state_url(environ, platform)
    if platform == "win32":
        url = url.replace("\\", "/")
    assert url == expected


def test_the_data_folder_on_macos_is_application_support() -> None:
    assert data_dir({}, "darwin").endswith("/Library/Application Support/comfy-cluster")


@pytest.mark.parametrize("url, message", [
    ("nonsense", "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ("sqlite:///:memory:", "would lose everything on restart"),
    ("sqlite:///", "needs a file path"),
    ("postgresql://u:pw@host/", "expected postgresql://USER@HOST:PORT/DB"),
])
def test_a_bad_url_is_refused_in_one_line_without_its_password(url: str, message: str) -> None:
    with pytest.raises(StateURLError) as info:
        engine_url(url)
    assert message in str(info.value) and "\n" not in str(info.value) and ":pw@" not in str(info.value)


def test_safe_url_hides_the_password() -> None:
    assert safe_url("postgresql://comfy:s3cret@db:5432/x") == "postgresql://comfy:***@db:5432/x"
    assert safe_url("postgresql://comfy@db:5432/x") == "postgresql://comfy@db:5432/x"


def test_a_new_database_is_migrated_and_opening_it_again_keeps_everything(state_url: str) -> None:
    store = Store(state_url)
    store.add_prompt(PromptRow("p1", 3, "ann", "c1", {"prompt": {"1": {}}}, inputs={"7": ("d" * 64, "plate.png")}))
    store.reserve_attempt("a1", "p1", "gpu1")
    store.reserve_attempt("a2", "p1", "gpu2")
    store.end_attempt("a1")
    cid = store.client_id()
    store.close()
    again = Store(state_url)
    (row,) = again.unfinished()
    assert (row.prompt_id, row.number, row.owner, row.client_id, row.body) == ("p1", 3.0, "ann", "c1", {"prompt": {"1": {}}})
    assert row.inputs == {"7": ("d" * 64, "plate.png")}
    assert row.attempts == [("a1", "gpu1", "ended"), ("a2", "gpu2", "reserved")]
    assert again.client_id() == cid
    with again.reading() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM cc_alembic_version").all() == [(HEAD,)]
    again.close()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    Store(url_in(tmp_path)).close()
    with sqlite3.connect(tmp_path / "state.sqlite3") as conn:
        conn.execute("UPDATE cc_alembic_version SET version_num = '9999'")
    with pytest.raises(StateURLError, match="schema 9999, newer than this comfy-cluster"):
        Store(url_in(tmp_path))


def test_finishing_a_prompt_keeps_its_history_and_files_and_trims_the_oldest(state_url: str) -> None:
    store = Store(state_url)
    for i in range(4):
        pid = f"p{i}"
        store.add_prompt(PromptRow(pid, i, None, "c", {}))
        store.reserve_attempt(f"a{i}", pid, "gpu1")
        store.finish(pid, "succeeded", {"n": i}, [(("output", "", f"f{i}.png"), "gpu1")],
                     owner=None, client_id="c", created=1.0, started=2.0, keep=3)
    assert store.unfinished() == []
    assert [pid for pid, _ in store.history_page()] == ["p1", "p2", "p3"]
    assert [pid for pid, _ in store.history_page(max_items=2)] == ["p2", "p3"]
    assert [pid for pid, _ in store.history_page(max_items=1, offset=0)] == ["p1"]
    assert store.history_item("p3") == {"n": 3} and store.history_item("p0") is None
    assert store.file_server(("output", "", "f3.png")) == "gpu1"
    assert store.file_server(("output", "", "f0.png")) is None  # trimmed with its item
    total, rows = store.history_rows(statuses=["succeeded"], offset=1, limit=1)
    assert total == 3 and [r["prompt_id"] for r in rows] == ["p2"]
    store.delete_history(["p2"])
    assert store.history_item("p2") is None and store.file_server(("output", "", "f2.png")) is None
    store.clear_history()
    assert store.history_page() == []
    store.close()


def test_upload_bytes_stay_while_an_index_entry_or_an_unfinished_prompt_names_them(state_url: str) -> None:
    store = Store(state_url)
    store.put_upload(("input", "", "a.png"), "d1", b"one")
    store.add_prompt(PromptRow("p", 0, None, "c", {}, inputs={"1": ("d1", "a.png")}))
    store.put_upload(("input", "", "a.png"), "d2", b"two")  # a new version under the name
    assert store.uploads() == [(("input", "", "a.png"), "d2", 3)]
    assert store.blob("d1") == b"one"  # the waiting prompt still needs it
    store.delete_prompt("p")
    assert store.blob("d1") is None and store.blob("d2") == b"two"
    store.drop_upload(("input", "", "a.png"))
    assert store.blob("d2") is None
    store.close()


def test_users_settings_and_userdata(state_url: str) -> None:
    store = Store(state_url)
    users = UserData(store)
    assert users.settings("ann") == {}
    users.set_settings("ann", {"Comfy.Theme": "dark"})
    users.set_setting("ann", "Comfy.Locale", "fr")
    assert users.settings("ann") == {"Comfy.Theme": "dark", "Comfy.Locale": "fr"}
    assert users.settings("bob") == {}
    assert users.write("ann", "workflows/a.json", b"{}")
    assert not users.write("ann", "workflows/a.json", b"[]", overwrite=False)
    assert users.read("ann", "workflows/a.json") == b"{}" and users.read("bob", "workflows/a.json") is None
    assert users.move("ann", "workflows/a.json", "workflows/b.json")
    assert [(p, size) for p, size, _ in users.list("ann", "workflows")] == [("b.json", 2)]
    assert users.delete("ann", "workflows/b.json") and not users.delete("ann", "workflows/b.json")
    store.close()


def test_two_replicas_recording_the_same_file_name_at_once_both_commit(postgres_url: str) -> None:
    """Two servers make files of the same name (each numbers its own outputs): two replicas
    recording them at the same moment must both commit (the later one wins), never fail a
    prompt's end on the unique key."""
    import threading

    import psycopg

    from comfy_cluster.testing import wait_until

    a, b = Store(postgres_url), Store(postgres_url)
    key = ("output", "", "demo_00001_.png")
    errors: list = []

    def other_replica() -> None:
        try:
            b.note_files("p2", [(key, "m1")])
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    host, port = postgres_url.split("@")[1].split("/")[0].split(":")
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(f"host={host} port={port} user=postgres dbname={dbname}", autocommit=True) as watch:
        with a.transaction() as conn:
            from comfy_cluster.state import schema  # the first replica's row, not committed yet

            conn.execute(schema.files.insert().values(type=key[0], subfolder=key[1], filename=key[2], server="m0", prompt_id="p1"))
            thread = threading.Thread(target=other_replica)
            thread.start()
            wait_until(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0] > 0,
                       timeout=30, message="the other replica waiting on the row")
        thread.join(timeout=30)
    assert errors == [] and b.file_server(key) == "m1"
    a.close()
    b.close()


def test_a_prompt_is_ended_for_the_replicas_once_its_history_is_committed(postgres_url: str) -> None:
    """What a replica asks before a client's socket opens: which of the prompts the client got
    live are out of the queue (finished, with their history in the same commit, or deleted
    while waiting); a prompt still queued or running is not."""
    from comfy_cluster.state.shared import SharedQueue

    store = Store(postgres_url)
    shared = SharedQueue(store, "r0", "http://127.0.0.1:1")
    try:
        for i, pid in enumerate(("done", "running", "waiting", "deleted")):
            store.add_prompt(PromptRow(pid, i, None, "c", {}))
        store.reserve_attempt("a1", "running", "gpu1")
        store.reserve_attempt("a2", "done", "gpu1")
        store.finish("done", "interrupted", {"n": 1}, [], owner=None, client_id="c", created=1.0, started=2.0, keep=10)
        store.delete_prompt("deleted")
        asked = ["running", "done", "waiting", "deleted", "never-posted"]
        assert shared.ended(asked) == ["done", "deleted", "never-posted"]
        assert store.history_item("done") == {"n": 1}
    finally:
        store.close()


def test_many_live_prompts_are_told_in_notices_within_notifys_payload_bound(postgres_url: str) -> None:
    """A replica's socket that closes after getting many kept prompts live tells the others in
    as many NOTIFY payloads as the bound needs (PostgreSQL refuses one over 8000 bytes), all
    of them in order, from one commit."""
    import json
    import uuid

    import psycopg

    from comfy_cluster.state.shared import CHANNEL_EVENTS, MAX_PAYLOAD, SharedQueue

    store = Store(postgres_url)
    shared = SharedQueue(store, "r0", "http://127.0.0.1:1")
    pids = [str(uuid.uuid4()) for _ in range(600)] + ["p" * 200]  # the longest prompt_id the store takes
    host, port = postgres_url.split("@")[1].split("/")[0].split(":")
    dbname = postgres_url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(f"host={host} port={port} user=postgres dbname={dbname}", autocommit=True) as listen:
            listen.execute(f"LISTEN {CHANNEL_EVENTS}")
            shared.publish_live("artist:shot010:1", pids, user="u" * 200)
            notes = []
            for note in listen.notifies(timeout=10):
                notes.append(note.payload)
                if sum(len(json.loads(p)["live"]) for p in notes) >= len(pids):
                    break
        data = [json.loads(p) for p in notes]
        assert len(notes) > 1 and all(len(p.encode()) <= MAX_PAYLOAD for p in notes)
        assert [pid for d in data for pid in d["live"]] == pids
        assert {(d["from"], d["client_id"], d["user"]) for d in data} == {("r0", "artist:shot010:1", "u" * 200)}
        assert len({d["n"] for d in data}) == len(data)  # numbered apart: equal payloads of one commit come once
    finally:
        store.close()
