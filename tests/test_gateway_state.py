"""The gateway on a state store, in one process: what it kept is there after a stop and a new
start on the same store (history, /view of a finished job's files, uploads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import requests
from gateway_util import ScriptClient, gateway_over, of_prompt

from comfy_cluster.testing import MockCluster
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import load_image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def test_history_view_and_uploads_outlive_the_gateway(mock_cluster_factory: Factory, tmp_path: Path) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    state = {"state": f"sqlite:///{tmp_path}/gw.sqlite3"}
    plate = png_bytes(4, 4, (10, 200, 30))
    with gateway_over(cluster, gateway_kwargs=state) as gw:
        client = ScriptClient(gw.url)
        try:
            pid = client.run(sleep_workflow(seconds=0.05, steps=2, seed=5))
            client.follow(pid)
            item = client.history(pid)
            up = requests.post(gw.url + "/upload/image", files={"image": ("plate.png", plate, "image/png")}, timeout=10)
            assert up.status_code == 200, up.text
        finally:
            client.close()
    with gateway_over(cluster, gateway_kwargs=state) as gw:
        assert requests.get(f"{gw.url}/history/{pid}", timeout=10).json() == {pid: item}
        assert pid in requests.get(f"{gw.url}/history", timeout=10).json()
        image = item["outputs"]["3"]["images"][0]
        view = requests.get(gw.url + "/view", params=image, timeout=10)
        assert view.status_code == 200 and view.content[:4] == b"\x89PNG"
        got = requests.get(gw.url + "/view", params={"filename": "plate.png", "type": "input"}, timeout=10)
        assert got.status_code == 200 and got.content == plate
        # The upload is there for a new prompt too.
        client = ScriptClient(gw.url)
        try:
            pid2 = client.run(load_image_workflow("plate.png"))
            assert client.follow(pid2)[-2]["type"] == "execution_success"
        finally:
            client.close()


def test_a_gateway_without_a_state_forgets_at_stop(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            pid = client.run(sleep_workflow(seconds=0.05, steps=1, seed=2))
            client.follow(pid)
        finally:
            client.close()
        folder = gw.keeper.store.url if gw.keeper else ""
    assert folder.startswith("sqlite:///") and not Path(folder[len("sqlite:///"):]).exists()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_users_settings_and_files_in_the_store_answer_as_the_file_store(mock_cluster_factory: Factory, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from webui_util import userdata_session

    from comfy_cluster.gateway.dbusers import DbUserStore
    from comfy_cluster.state import Store

    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, gateway_kwargs={"user_dir": str(tmp_path / "files")}) as gw:
        on_files = userdata_session(gw.url, "wf")
    url = f"sqlite:///{tmp_path}/users.sqlite3" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    store = Store(url)
    try:
        with gateway_over(cluster, gateway_kwargs={"user_store": DbUserStore(store), "multi_user": True}) as gw:
            alice = requests.post(gw.url + "/api/users", json={"username": "Alice"}).json()
            assert requests.get(gw.url + "/api/users", timeout=10).json()["users"] == {alice: "Alice"}
        with gateway_over(cluster, gateway_kwargs={"user_store": DbUserStore(store)}) as gw:
            in_store = userdata_session(gw.url, "wf")
        assert in_store == on_files
        assert DbUserStore(store).users() == {alice: "Alice"}  # kept in the store
    finally:
        store.close()


def test_a_prompt_whose_row_the_store_refuses_is_never_posted_and_leaves_no_trace(mock_cluster_factory: Factory, tmp_path: Path) -> None:
    """A prompt is handed to the pool only once its row is committed (a branch of issue 20
    handed it over during the commit, to overlap the two; measured, it only delayed the
    answer). The store refuses the row (its prompt_id is taken by a row the book does not
    hold): 400, nothing sent to a server, the other row untouched, no history, no event; the
    next prompt runs as usual."""
    from comfy_cluster.state import PromptRow, Store

    cluster = mock_cluster_factory(speeds=(1.0,))
    store = Store(f"sqlite:///{tmp_path}/gw.sqlite3")
    try:
        with gateway_over(cluster, gateway_kwargs={"state": store}) as gw:
            body = {"prompt": sleep_workflow(seconds=0.01, steps=1, seed=1), "extra_data": {}, "outputs": ["3"], "workflow": None,
                    "owner": "x", "keep": False}
            store.add_prompt(PromptRow("taken", 1, "x", "other", body))  # after the gateway read the store at start
            client = ScriptClient(gw.url)
            try:
                refused = client.post(sleep_workflow(seconds=0.01, steps=1, seed=2), prompt_id="taken")
                assert refused.status_code == 400 and "invalid_prompt_id" in refused.text, refused.text
                pid = client.run(sleep_workflow(seconds=0.01, steps=1, seed=3))
                assert client.follow(pid)[-2]["type"] == "execution_success"
                assert requests.get(f"{gw.url}/history/taken", timeout=10).json() == {}
                queue = requests.get(f"{gw.url}/queue", timeout=10).json()
                assert "taken" not in json.dumps(queue)
                assert of_prompt(list(client.socket.frames), "taken") == []
            finally:
                client.close()
        posted = [p[0] for s in cluster.servers for p in s.received_prompts]
        assert len(posted) == 1 and posted[0] != "taken"
        assert [s.executed_prompt_ids for s in cluster.servers] == [posted]
        assert store.history_item("taken") is None
        assert [r.prompt_id for r in store.unfinished()] == ["taken"]  # the other row, untouched
    finally:
        store.close()
