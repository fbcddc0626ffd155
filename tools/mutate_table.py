"""Mutation of the failure table's rows (docs/TESTING.md): is each row of ``policy.TABLE``
guarded by a behavioural test?

mutmut mutates code in functions; ``policy.TABLE`` is data, so its rows are mutated here, each
field the code reads (see :func:`mutants`): a FAIL that moves, a MOVE that fails, a wait that
gives up at once, a window dropped, ``exclude``/``mark_down``/``maybe_there`` cleared. Each
mutant runs the behavioural test files below (never tests/test_policy.py, which compares the
table with the docs' text) and stops at the first failure::

    python tools/mutate_table.py            # every row
    python tools/mutate_table.py --list     # the mutants only
    python tools/mutate_table.py 3 7        # mutants 3 and 7

The mutant is put in place by a pytest plugin (this file, loaded with ``-p``) that replaces
the row in ``policy.TABLE`` before any test runs; ``decide`` reads the table at each call.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_promises.py", "tests/test_promises_core.py", "tests/test_completion.py", "tests/test_fault_matrix.py", "tests/test_jobs.py",
         "tests/test_status.py", "tests/test_reliability.py", "tests/test_mock_faults_injected.py"]
ENV = "COMFY_CLUSTER_TABLE_MUTANT"


def mutants() -> List[Tuple[str, object, object]]:
    """(description, key, replacement Decision) for each mutant, in a fixed order.

    Only what the code reads is mutated: for POST and UPLOAD rows the action, ``exclude``,
    ``mark_down`` and ``maybe_there``; for the rows that wait (follow, history, cancel) the
    loss window only (``runner._lost`` and ``_unreadable`` read nothing else: they always wait,
    then move): it is made 0 (gives up at once) and, where the row sets one, dropped (the
    pool's ``server_lost_after``). The probe and view rows are read by no code (the status
    monitor marks a server offline on any failed probe; ``job.download`` raises)."""
    from comfy_cluster.policy import TABLE, Action, Decision, Phase

    wrong = {Action.FAIL: Decision(Action.MOVE, mark_down=True), Action.MOVE: Decision(Action.FAIL)}
    out: List[Tuple[str, object, object]] = []
    for key, d in TABLE.items():
        if key[0] in (Phase.PROBE, Phase.VIEW):
            continue
        label = f"({key[0].value}, {key[1]})"
        if d.action is Action.WAIT:
            out.append((f"{label} waits -> gives up at once (window 0)", key, dataclasses.replace(d, window=0.0)))
            if d.window is not None:
                out.append((f"{label} window {d.window:g} s -> server_lost_after", key, dataclasses.replace(d, window=None)))
            continue
        out.append((f"{label} {d.action.value} -> {wrong[d.action].action.value}", key, wrong[d.action]))
        if d.exclude:
            out.append((f"{label} exclude -> not", key, dataclasses.replace(d, exclude=False)))
        if d.mark_down:
            out.append((f"{label} mark_down -> not", key, dataclasses.replace(d, mark_down=False)))
        if d.maybe_there:
            out.append((f"{label} maybe_there -> not", key, dataclasses.replace(d, maybe_there=False)))
    return out


def pytest_configure(config: object) -> None:
    """Plugin side: put mutant ``$COMFY_CLUSTER_TABLE_MUTANT`` in place."""
    index = os.environ.get(ENV)
    if index is not None:
        from comfy_cluster.policy import TABLE

        _, key, replacement = mutants()[int(index)]
        TABLE[key] = replacement  # type: ignore[index,assignment]


def main(argv: List[str]) -> int:
    listed = mutants()
    if "--list" in argv:
        for i, (what, _, _) in enumerate(listed):
            print(f"{i:3} {what}")
        return 0
    chosen = [int(a) for a in argv] or list(range(len(listed)))
    started = time.monotonic()
    survivors = []
    for i in chosen:
        env = dict(os.environ, **{ENV: str(i)}, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tools")]))
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "mutate_table", *TESTS],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        verdict = "killed" if rc == 1 else "survived" if rc == 0 else f"error (pytest exit {rc})"
        print(f"{i:3} {verdict:9} {time.monotonic() - t0:5.0f} s  {listed[i][0]}", flush=True)
        if verdict != "killed":
            survivors.append(i)
    print(f"{len(chosen) - len(survivors)}/{len(chosen)} row mutants killed in {time.monotonic() - started:.0f} s")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
