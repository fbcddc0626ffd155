"""Group commit in a real gateway process: prompts posted at the same time by many clients
share commits, and every prompt answered 200 is in the store after ``kill -9`` right after
the answers (SQLite, and a replica on a real PostgreSQL server)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Callable, List

import pytest
import requests
from gateway_proc import GatewayProcess

from comfy_cluster.state import Store
from comfy_cluster.testing import MockCluster
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
Factory = Callable[..., MockCluster]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_every_prompt_answered_200_is_in_the_store_after_kill_9(kind: str, mock_cluster_factory: Factory, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    url = f"sqlite:///{tmp_path}/gw.sqlite3" if kind == "sqlite" else str(request.getfixturevalue("postgres_url"))
    extra = ["--replica", "r0"] if kind == "postgresql" else []
    gw = GatewayProcess(cluster.servers_json(), url, extra=extra).start()
    answered: List[str] = []

    def client(n: int) -> List[str]:
        ids = []
        with requests.Session() as s:
            for i in range(5):
                r = s.post(gw.url + "/prompt", json={"prompt": sleep_workflow(seconds=60, steps=2, seed=n * 100 + i), "client_id": f"c{n}"}, timeout=60)
                assert r.status_code == 200, r.text
                ids.append(r.json()["prompt_id"])
        return ids

    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            for ids in pool.map(client, range(20)):
                answered += ids
        gw.kill9()  # at once: nothing after the last answer may be needed to keep them
    finally:
        gw.stop()
    store = Store(url)
    try:
        kept = {r.prompt_id for r in store.unfinished()}
        assert len(answered) == 100 and set(answered) <= kept, sorted(set(answered) - kept)
    finally:
        store.close()
