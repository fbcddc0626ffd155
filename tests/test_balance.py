"""Strategies are pure functions of snapshots: table-driven tests, no network."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from comfy_cluster import ConfigError, ServerConfig
from comfy_cluster.balance import (
    Candidate,
    FastestCompletion,
    LeastLoaded,
    Priority,
    RoundRobin,
    expected_seconds,
    get_strategy,
    strategy_name,
)
from comfy_cluster.dispatch import plan_threshold
from comfy_cluster.status import ServerStatus


def cand(i, *, running=0, pending=0, unseen=0, weight=1.0, priority=0, avg=None, in_flight=0):
    srv = ServerConfig(name=f"s{i}", host="127.0.0.1", port=1000 + i, weight=weight, priority=priority)
    st = ServerStatus(
        name=srv.name, url=srv.url, online=True, queue_running=running, queue_pending=pending,
        unseen=unseen, avg_job_seconds=avg, in_flight=in_flight,
    )
    exp = expected_seconds([st], [srv])[0]
    return Candidate(srv, st, i, exp)


@pytest.mark.parametrize(
    "loads, weights, expected",
    [
        ([3, 1, 2], [1, 1, 1], "s1"),
        ([4, 3], [2, 1], "s0"),  # 4/2 = 2 < 3
        ([0, 5, 5], [1, 1, 1], "s0"),
        ([6, 2], [4, 1], "s0"),  # 1.5 < 2
    ],
)
def test_least_loaded_table(loads, weights, expected):
    cands = [cand(i, pending=l, weight=w) for i, (l, w) in enumerate(zip(loads, weights))]
    assert LeastLoaded(random.Random(1)).select(cands, None).name == expected


def test_least_loaded_counts_unseen_submissions():
    cands = [cand(0, unseen=2), cand(1, pending=1)]
    assert LeastLoaded().select(cands, None).name == "s1"


@pytest.mark.parametrize("n", [2, 4])
def test_least_loaded_breaks_ties_at_random_not_always_first(n):
    cands = [cand(i) for i in range(n)]
    strategy = LeastLoaded(random.Random(7))
    picks = Counter(strategy.select(cands, None).name for _ in range(100 * n))
    assert set(picks) == {f"s{i}" for i in range(n)}
    assert min(picks.values()) > 50


def test_round_robin_cycles_and_survives_changing_sets():
    rr = RoundRobin()
    all4 = [cand(i) for i in range(4)]
    assert [rr.select(all4, None).name for _ in range(5)] == ["s0", "s1", "s2", "s3", "s0"]
    # s1 drops out: the cycle continues after the last pick (s0) with the next available.
    three = [all4[0], all4[2], all4[3]]
    assert [rr.select(three, None).name for _ in range(3)] == ["s2", "s3", "s0"]


def test_round_robin_one_counter_for_all_threads():
    rr = RoundRobin()
    cands = [cand(i) for i in range(4)]
    picks: Counter = Counter()
    lock = threading.Lock()

    def work():
        for _ in range(250):
            name = rr.select(cands, None).name
            with lock:
                picks[name] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert picks == Counter({"s0": 250, "s1": 250, "s2": 250, "s3": 250})


def test_priority_prefers_lowest_tier_then_least_loaded():
    cands = [cand(0, priority=1), cand(1, priority=0, pending=3), cand(2, priority=0, pending=1)]
    assert Priority().select(cands, None).name == "s2"
    # Tier 0 gone (offline or full are filtered before the strategy): next tier.
    assert Priority().select([cands[0]], None).name == "s0"


def test_fastest_completion_uses_learned_durations():
    # s0: 2 ahead x 1 s = 3 s to finish ours; s1: 0 ahead x 5 s = 5 s.
    cands = [cand(0, pending=2, avg=1.0), cand(1, avg=5.0)]
    assert FastestCompletion().select(cands, None).name == "s0"
    cands = [cand(0, pending=5, avg=1.0), cand(1, avg=5.0)]
    assert FastestCompletion().select(cands, None).name == "s1"


def test_expected_seconds_from_weight_then_learned():
    a = ServerConfig(name="a", host="h", weight=1)
    b = ServerConfig(name="b", host="h", weight=4)
    sa = ServerStatus(name="a", url=a.url)
    sb = ServerStatus(name="b", url=b.url)
    assert expected_seconds([sa, sb], [a, b]) == [1.0, 0.25]
    sa2 = ServerStatus(name="a", url=a.url, avg_job_seconds=8.0)
    # b has no data: estimated from a's learned speed and the weights.
    assert expected_seconds([sa2, sb], [a, b]) == [8.0, 2.0]


def test_expected_seconds_of_a_new_server_come_from_every_learned_speed_scaled_by_weight():
    # a (weight 2) learned 4 s a job and c (weight 1) 2 s: a unit of weight takes 8 s and
    # 2 s, 5 s on average. b (weight 4, no data yet) is expected to take 5 / 4 s; the learned
    # servers keep their own figures.
    a = ServerConfig(name="a", host="h", weight=2)
    b = ServerConfig(name="b", host="h", weight=4)
    c = ServerConfig(name="c", host="h", weight=1)
    statuses = [ServerStatus(name="a", url=a.url, avg_job_seconds=4.0), ServerStatus(name="b", url=b.url),
                ServerStatus(name="c", url=c.url, avg_job_seconds=2.0)]
    assert expected_seconds(statuses, [a, b, c]) == [4.0, 1.25, 2.0]


def test_get_strategy_by_name_object_or_callable():
    assert get_strategy("round-robin").name == "round_robin"
    obj = LeastLoaded()
    assert get_strategy(obj) is obj

    def mine(candidates, workflow):
        return candidates[-1]

    s = get_strategy(mine)
    assert s.select([cand(0), cand(1)], None).name == "s1"
    with pytest.raises(ConfigError, match="valid: fastest_completion, least_loaded, priority, round_robin"):
        get_strategy("fastest")


@pytest.mark.parametrize("wrong, named", [(42, "int"), (None, "NoneType"), ([LeastLoaded()], "list")])
def test_a_strategy_that_is_no_strategy_is_refused_naming_what_was_given(wrong, named):
    with pytest.raises(ConfigError) as err:
        get_strategy(wrong)
    assert str(err.value) == f"strategy: must be a name, an object with select(), or a callable, got {named}"


class Nearest:  # a user's strategy object without a ``name``
    def select(self, candidates, workflow):
        return candidates[0]


class Named:
    name = "studio_rules"

    def select(self, candidates, workflow):
        return candidates[0]


def test_a_strategys_shown_name_is_its_own_else_its_class_name():
    assert strategy_name(get_strategy("least_loaded")) == "least_loaded"
    assert strategy_name(get_strategy("warm-models")) == "warm_models"
    assert strategy_name(Named()) == "studio_rules"
    assert strategy_name(Nearest()) == "Nearest"
    odd = Nearest()
    odd.name = 3  # a name that is not text is not shown
    assert strategy_name(odd) == "Nearest"


@pytest.mark.parametrize(
    "backlogs, remaining, in_plan",
    [
        # Speeds 1, 2, 4 (seconds per job 1, 0.5, 0.25), all idle, 1 job left: only the fastest.
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 1, [False, False, True]),
        # 7 jobs: 4 + 2 + 1 by t = 1 s: everyone gets one.
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 7, [True, True, True]),
        # 3 jobs: the fast one does 2 by 0.5 s, the middle one 1 by 0.5 s: the slow one waits.
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 3, [False, True, True]),
        # A busy fast server can lose its turn to an idle slower one.
        ([(2.0, 0.25), (0, 1.0)], 1, [False, True]),
    ],
)
def test_plan_threshold(backlogs, remaining, in_plan):
    t = plan_threshold(backlogs, remaining)
    assert [b + d <= t + 1e-6 for b, d in backlogs] == in_plan


def test_load_never_below_our_own_jobs():
    # A websocket reading that predates three of our submissions: still at least 3.
    st = ServerStatus(name="a", url="http://a:1", online=True, queue_running=1, queue_pending=0, unseen=0, in_flight=3)
    assert st.load == 3
    st = ServerStatus(name="a", url="http://a:1", online=True, queue_running=1, queue_pending=4, unseen=1, in_flight=3)
    assert st.load == 6


@pytest.mark.parametrize("name", ["least_loaded", "priority", "fastest_completion"])
def test_named_strategies_take_the_given_random_source(name):
    cands = [cand(i) for i in range(6)]  # all tied
    a = get_strategy(name, random.Random(3))
    b = get_strategy(name, random.Random(3))
    assert [a.select(cands, None).name for _ in range(20)] == [b.select(cands, None).name for _ in range(20)]
    assert len({a.select(cands, None).name for _ in range(50)}) > 1


def test_a_custom_function_places_by_the_workflow_it_is_shown():
    def by_size(candidates, workflow):  # big frames to the last server
        return candidates[-1] if workflow["1"]["inputs"]["width"] > 2048 else candidates[0]

    strategy = get_strategy(by_size)
    cands = [cand(0), cand(1)]
    assert strategy.select(cands, {"1": {"class_type": "EmptyImage", "inputs": {"width": 4096}}}).name == "s1"
    assert strategy.select(cands, {"1": {"class_type": "EmptyImage", "inputs": {"width": 1024}}}).name == "s0"
