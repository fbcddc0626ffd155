"""The state store's group commit (comfy_cluster/state/group.py) on real SQLite and a real
PostgreSQL server: writes asked while a commit runs share the next one, each caller is told
only once its write is committed, one bad write fails alone, order is kept within a lane,
and a replica that no longer holds a prompt writes nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List

import pytest
from sqlalchemy.exc import IntegrityError

from comfy_cluster.state import Fenced, PromptRow, Store
from comfy_cluster.state import schema as t
from comfy_cluster.state.group import MAIN, GroupCommit, Refused, submit, submit_lazy

TIMEOUT = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path}/state.sqlite3" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    s = Store(url)
    yield s
    s.close()


def _row(pid: str, number: float = 0) -> PromptRow:
    return PromptRow(pid, number, None, "c", {"prompt": {}})


def _hold_the_lane(store: Store, lane: str) -> "tuple[threading.Event, threading.Event]":
    """A write in ``lane`` that stays in its commit until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()

    def blocking(_obj: Any, conn: Any) -> None:
        entered.set()
        assert release.wait(TIMEOUT)

    store.lane(lane).submit(blocking, store)
    assert entered.wait(TIMEOUT)
    return entered, release


def test_writes_asked_while_a_commit_runs_share_the_next_commit(store: Store) -> None:
    lane = store.group
    store.add_prompt(_row("p"))
    _, release = _hold_the_lane(store, MAIN)
    before = lane.commits
    futures = [submit(store.note_files, "p", [(("output", "", f"f{i}.png"), "gpu1")]) for i in range(20)]
    assert not any(f.done() for f in futures)  # nobody is told before its commit
    release.set()
    for f in futures:
        f.result(TIMEOUT)
    assert lane.commits - before == 2  # the held one, then all twenty together
    assert all(store.file_server(("output", "", f"f{i}.png")) == "gpu1" for i in range(20))


def test_a_posted_prompt_never_waits_behind_a_running_jobs_commit(postgres_url: str) -> None:
    """PostgreSQL: posts commit on connections of their own. (SQLite has one writer: a post
    waits for the commit in progress, never for the writes queued behind it.)"""
    store = Store(postgres_url)
    _, release = _hold_the_lane(store, MAIN)
    try:
        submit(store.add_prompt, _row("p")).result(TIMEOUT)  # committed while the main lane is held
    finally:
        release.set()
    assert [r.prompt_id for r in store.unfinished()] == ["p"]
    store.close()


def test_a_write_told_done_is_committed_for_another_connection(store: Store) -> None:
    submit(store.add_prompt, _row("p1")).result(TIMEOUT)
    with store.reading() as conn:  # a connection of its own: sees committed rows only
        assert conn.execute(t.prompts.select().where(t.prompts.c.prompt_id == "p1")).first() is not None


def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(store: Store) -> None:
    store.add_prompt(_row("dup"))
    store.add_prompt(_row("p"))
    _, release = _hold_the_lane(store, MAIN)
    good1 = submit(store.reserve_attempt, "a1", "p", "gpu1")
    bad = submit(store.reserve_attempt, "a1", "dup", "gpu1")  # the same attempt id again: a unique violation
    good2 = submit(store.set_state, "p", "running")
    release.set()
    good1.result(TIMEOUT)
    good2.result(TIMEOUT)
    with pytest.raises(IntegrityError):
        bad.result(TIMEOUT)
    rows = {r.prompt_id: r for r in store.unfinished()}
    assert rows["p"].attempts == [("a1", "gpu1", "reserved")] and rows["p"].state == "running" and rows["dup"].attempts == []


def test_a_refused_write_fails_alone_without_undoing_the_others(store: Store) -> None:
    """A replica that no longer holds a prompt (taken over) records no attempt and no end
    for it; writes batched with it still commit."""
    store.add_prompt(_row("mine"))
    store.add_prompt(_row("theirs"))
    with store.transaction() as conn:
        conn.execute(t.prompts.update().values(replica="r1"))
    _, release = _hold_the_lane(store, MAIN)
    ok = submit(store.reserve_attempt, "a1", "mine", "gpu1", "r1")
    fenced = submit(store.reserve_attempt, "a2", "theirs", "gpu1", "r2")
    ended = submit(store.finish, "theirs", "succeeded", {}, [], owner=None, client_id="c", created=0.0, started=None, keep=10, replica="r2")
    release.set()
    ok.result(TIMEOUT)
    for f in (fenced, ended):
        with pytest.raises(Fenced):
            f.result(TIMEOUT)
    rows = {r.prompt_id: r for r in store.unfinished()}
    assert rows["mine"].attempts == [("a1", "gpu1", "reserved")]
    assert rows["theirs"].attempts == [] and store.history_item("theirs") is None


def test_writes_of_one_lane_commit_in_the_order_asked(store: Store) -> None:
    """A job's writes are asked in order (attempt, state, end): the end deletes what came
    before, so the later write must never run first."""
    store.add_prompt(_row("p"))
    futures = [submit(store.reserve_attempt, "a1", "p", "gpu1"), submit(store.set_state, "p", "running", started=5.0),
               submit(store.finish, "p", "succeeded", {"n": 1}, [], owner=None, client_id="c", created=0.0, started=5.0, keep=10)]
    for f in futures:
        f.result(TIMEOUT)
    assert store.unfinished() == [] and store.history_item("p") == {"n": 1}


def test_a_lazy_write_rides_with_the_next_write_that_is_waited_for(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3", lazy_delay=3600)
    store.add_prompt(_row("p"))
    before = store.group.commits
    running = submit_lazy(store.set_state, "p", "running", started=5.0)
    files = submit_lazy(store.note_files, "p", [(("output", "", "a.png"), "gpu1")])
    assert not running.done() and not files.done()  # no commit of their own
    store.reserve_attempt("a1", "p", "gpu1")  # waited for: one commit carries all three
    assert running.done() and files.done() and store.group.commits - before == 1
    row = store.unfinished()[0]
    assert (row.state, row.started, row.attempts) == ("running", 5.0, [("a1", "gpu1", "reserved")])
    assert store.file_server(("output", "", "a.png")) == "gpu1"
    store.close()


def test_a_lazy_write_alone_is_committed_after_its_delay(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3", lazy_delay=0.05)
    store.add_prompt(_row("p"))
    submit_lazy(store.request_cancel, "p").result(TIMEOUT)
    assert store.unfinished()[0].cancel
    store.close()


def test_lazy_writes_queued_behind_a_lazy_write_are_committed_with_it(tmp_path: Path) -> None:
    """Only the first of several lazy writes wakes the commit thread (to wait for its
    delay); the ones behind it are committed by that same wait, none is left behind."""
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3", lazy_delay=0.05)
    store.add_prompt(_row("p"))
    running = submit_lazy(store.set_state, "p", "running", started=5.0)
    files = submit_lazy(store.note_files, "p", [(("output", "", "a.png"), "gpu1")])
    cancel = submit_lazy(store.request_cancel, "p")
    for future in (running, files, cancel):
        future.result(TIMEOUT)
    row = store.unfinished()[0]
    assert (row.state, row.started, row.cancel) == ("running", 5.0, True)
    assert store.file_server(("output", "", "a.png")) == "gpu1"
    store.close()


def test_close_commits_the_lazy_writes_still_queued(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.sqlite3"
    store = Store(url, lazy_delay=3600)
    store.add_prompt(_row("p"))
    submit_lazy(store.set_state, "p", "running")
    store.close()
    again = Store(url)
    assert again.unfinished()[0].state == "running"
    again.close()


def test_a_blocking_write_with_nothing_queued_commits_on_the_callers_thread(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3")
    seen: List[str] = []

    def where(_obj: Any, conn: Any) -> None:
        seen.append(threading.current_thread().name)

    store.group.run(where, store)
    assert seen == [threading.current_thread().name]
    store.close()


def test_a_write_asked_after_close_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    group = GroupCommit(lambda: None)  # type: ignore[arg-type,return-value]
    group.close()
    with pytest.raises(RuntimeError, match="state store is closed"):
        group.submit(lambda _o, _c: None, None)


def test_refused_is_the_base_of_fenced() -> None:
    assert issubclass(Fenced, Refused)


def test_an_attempts_end_is_recorded_without_waiting_for_a_commit(store: Store) -> None:
    """The library notes an attempt's end inline on its thread: that must not wait for a
    commit (restarts follow the newest copy, ended or not); it rides with the next one."""
    store.add_prompt(_row("p"))
    store.reserve_attempt("a1", "p", "gpu1")
    _, release = _hold_the_lane(store, MAIN)
    try:
        assert store.end_attempt("a1") is None  # returned while the lane is held
    finally:
        release.set()
    store.flush()
    assert store.unfinished()[0].attempts == [("a1", "gpu1", "ended")]


def test_lazy_writes_about_a_prompt_its_end_deletes_are_not_run(tmp_path: Path) -> None:
    """A job's running state, output files and attempt end, queued lazily, are dropped when
    its end is in the same commit (what they would write goes with the prompt): one commit,
    the end's statements only, and the history has what the end recorded."""
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3", lazy_delay=3600)
    store.add_prompt(_row("p"))
    store.reserve_attempt("a1", "p", "gpu1")
    ran: List[str] = []
    lazies = [submit(store.set_state, "p", "running", started=1.0), submit(store.note_files, "p", [(("output", "", "x.png"), "gpu1")])]
    store.end_attempt("a1")
    from sqlalchemy import event

    @event.listens_for(store.engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        ran.append(statement.split()[0] + " " + statement.split()[2])

    store.finish("p", "succeeded", {"n": 1}, [(("output", "", "x.png"), "gpu1")], owner=None, client_id="c", created=0.0, started=1.0, keep=10)
    assert all(f.done() for f in lazies)
    assert not any(r.startswith("UPDATE") for r in ran), ran  # no state, no attempt phase written
    assert store.history_item("p") == {"n": 1} and store.file_server(("output", "", "x.png")) == "gpu1"
    store.close()


def test_a_write_whose_connection_the_server_cut_is_tried_again_on_a_fresh_one(postgres_url: str) -> None:
    """PostgreSQL restarted or a connection cut (an idle timeout, a failover): the job's
    writes, sent together in one round trip (state/pipeline.py), fail on the dead
    connection, which is dropped from the pool, and the write is tried again on a fresh one.
    Nothing of it is lost and the caller sees no error."""
    import sqlalchemy as sa

    store = Store(postgres_url)
    try:
        store.add_prompt(_row("warm"))
        store.reserve_attempt("a0", "warm", "gpu1")  # the main lane has a pooled connection now
        store.add_prompt(_row("p"))
        with store.reading() as conn:  # cut every other connection of this database, from the server
            cut = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()")).scalar()
        assert cut >= 1
        store.reserve_attempt("a1", "p", "gpu1")
        with store.reading() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()"))
        store.finish("p", "succeeded", {"outputs": {}}, [(("output", "", "x.png"), "gpu1")], owner=None, client_id="c",
                     created=0.0, started=None, keep=10)
        assert store.history_item("p") == {"outputs": {}}
        assert store.file_server(("output", "", "x.png")) == "gpu1"
        assert "p" not in {r.prompt_id for r in store.unfinished()}
    finally:
        store.close()


def test_a_prompt_id_stored_twice_is_refused_as_sqlalchemys_integrity_error(store: Store) -> None:
    """The job path's writes go through the driver (state/pipeline.py); its error must still
    reach callers as SQLAlchemy's: the gateway answers a prompt_id posted twice (by a client,
    or on two replicas at once) with ComfyUI's 400 by catching IntegrityError. The other rows
    and the lane go on."""
    store.add_prompt(_row("p"))
    with pytest.raises(IntegrityError):
        store.add_prompt(_row("p", number=2))
    store.add_prompt(_row("q"))
    assert sorted(r.prompt_id for r in store.unfinished()) == ["p", "q"]
    assert store.unfinished()[0].number == 0


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipeline-mode", "libpq-before-14"])
def test_a_jobs_writes_on_postgresql_with_and_without_pipeline_mode(postgres_url: str, pipelined: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg's pipeline mode needs libpq 14 or newer (its binary wheels bundle one; a build
    against an older system libpq has none): without it the job path's statements go one by
    one. Either way a job's writes land, a replica that no longer holds a prompt writes
    nothing for it, and a prompt_id stored twice is refused."""
    import psycopg

    if not pipelined:  # a state no PostgreSQL server can produce: the client library's build
        monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    store = Store(postgres_url)
    try:
        row = PromptRow("p", 0, None, "c", {"prompt": {}}, inputs={"5": ("d" * 64, "in.png")})
        store.add_prompt(row)
        store.add_prompt(_row("theirs"))
        with pytest.raises(IntegrityError):
            store.add_prompt(_row("p"))
        store.reserve_attempt("a1", "p", "gpu1")
        with store.transaction() as conn:
            conn.execute(t.prompts.update().where(t.prompts.c.prompt_id == "theirs").values(replica="r1"))
        with pytest.raises(Fenced):
            store.reserve_attempt("a2", "theirs", "gpu1", "r2")
        with pytest.raises(Fenced):
            store.finish("theirs", "succeeded", {"outputs": {}}, [(("output", "", "t.png"), "gpu1")], owner=None, client_id="c",
                         created=0.0, started=None, keep=10, replica="r2")
        store.finish("p", "succeeded", {"outputs": {"3": {}}}, [(("output", "", "x.png"), "gpu1")], owner=None, client_id="c",
                     created=0.0, started=None, keep=10)
        assert store.history_item("p") == {"outputs": {"3": {}}} and store.history_item("theirs") is None
        assert store.file_server(("output", "", "x.png")) == "gpu1" and store.file_server(("output", "", "t.png")) is None
        assert [(r.prompt_id, r.attempts) for r in store.unfinished()] == [("theirs", [])]
    finally:
        store.close()
