"""A strategy of the user's, on mock servers: the workflow it is shown, the name the pool
reports for it, and that name in the error of a job it placed wrongly."""

from __future__ import annotations

import functools
from typing import Any, Sequence

from helpers import servers_of, sleep_workflow, wait_until

from comfy_cluster import ConfigError, ServerPool

FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0))


def by_seed(candidates: Sequence[Any], workflow: Any) -> Any:
    """Even seeds to the first server, odd ones to the second: placement by the workflow."""
    names = sorted(c.name for c in candidates)
    return names[workflow["2"]["inputs"]["seed"] % 2]


def test_a_custom_function_is_shown_each_workflow_and_named_by_its_function(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(4, 4))
    first, second = sorted(s.name for s in cluster.servers)
    with ServerPool(servers_of(cluster, max_queue=8), strategy=by_seed, status_ttl=3600.0, **FAST) as pool:  # room for all
        assert pool.strategy == "by_seed"
        # Both known online first: each job is then shown both servers (room for all five).
        wait_until(lambda: all(s.online for s in pool.status(refresh=True)), what="both servers online")
        jobs = [pool.submit(sleep_workflow(0.01, steps=1, seed=s)) for s in (10, 11, 13, 15, 12)]
        assert [j.result(timeout=60).server for j in jobs] == [first, second, second, second, first]


class Elsewhere:
    """A user's strategy object, no ``name``: it names a server that is not a candidate."""

    def select(self, candidates: Sequence[Any], workflow: Any) -> Any:
        return "render-07"


def elsewhere(candidates: Sequence[Any], workflow: Any, *, target: str) -> Any:
    return target


def test_a_job_a_custom_strategy_places_nowhere_fails_naming_that_strategy(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(4,))
    cases = [
        (Elsewhere(), "Elsewhere"),  # an object: its class name
        (functools.partial(elsewhere, target="render-07"), "custom"),  # a callable without __name__
    ]
    for strategy, name in cases:
        with ServerPool(servers_of(cluster), strategy=strategy, **FAST) as pool:
            assert pool.strategy == name
            job = pool.submit(sleep_workflow(0.01, steps=1))
            assert job.wait(30) and job.status == "failed"
            error = job.exception()
            assert isinstance(error, ConfigError)
            assert str(error).startswith(f"strategy {name}: returned 'render-07', which is not one of the candidates"), error
    assert cluster.servers[0].received_prompts == []
