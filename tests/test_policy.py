"""The failure policy: docs/RELIABILITY.md shows the table the code keeps, and decide() reads it."""

from __future__ import annotations

import os

import pytest

from comfy_cluster.errors import ServerError, WorkflowError
from comfy_cluster.policy import REFUSED_LOST_AFTER, Action, Phase, decide, render_table

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "RELIABILITY.md")


def test_the_docs_show_the_table_the_code_keeps():
    with open(DOCS, encoding="utf-8") as fh:
        assert render_table() in fh.read()


@pytest.mark.parametrize(
    "phase, error, action, mark_down, maybe_there",
    [
        (Phase.POST, ServerError("s: refused", fault="refused"), Action.MOVE, True, False),
        (Phase.POST, ServerError("s: timed out", fault="read_timeout"), Action.MOVE, True, True),
        (Phase.POST, ServerError("s: HTTP 500", status=500), Action.MOVE, True, True),
        (Phase.POST, ServerError("s: HTTP 413", status=413), Action.FAIL, False, False),
        (Phase.POST, WorkflowError("s: bad"), Action.FAIL, False, False),
        (Phase.UPLOAD, ServerError("s: reset", fault="connect"), Action.MOVE, True, False),
        (Phase.FOLLOW, ServerError("s: HTTP 500", status=500), Action.WAIT, False, False),
        (Phase.HISTORY, ServerError("s: timed out", fault="read_timeout"), Action.WAIT, False, False),
        (Phase.CANCEL, ServerError("s: refused", fault="refused"), Action.WAIT, False, True),
    ],
)
def test_decide_by_fault_type_never_by_text(phase, error, action, mark_down, maybe_there):
    d = decide(phase, error)
    assert (d.action, d.mark_down, d.maybe_there) == (action, mark_down, maybe_there)


def test_a_missing_node_or_model_moves_and_excludes_the_server():
    d = decide(Phase.POST, WorkflowError("s: missing"), server_specific=True)
    assert d.action is Action.MOVE and d.exclude


def test_refused_while_following_waits_only_briefly():
    assert decide(Phase.FOLLOW, ServerError("s", fault="refused")).window == REFUSED_LOST_AFTER
    assert decide(Phase.FOLLOW, ServerError("s", fault="connect_timeout")).window is None  # server_lost_after
