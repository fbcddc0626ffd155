"""Mutation testing of comfy-cluster's core, one module at a time (docs/TESTING.md).

Usage (from the repository root, with the test extra and mutmut installed)::

    python tools/mutate.py policy              # one module
    python tools/mutate.py policy attempt      # several
    python tools/mutate.py --core              # the core set (CORE below)
    python tools/mutate.py --list              # the modules and the tests each runs against
    python tools/mutate.py policy --survivors  # show the diff of each surviving mutant
    python tools/mutate.py jobs --only 'comfy_cluster.jobs.x*Job*_finish*'   # scoped: these mutants only
    python tools/mutate.py selection --retest  # after adding tests: re-run only the mutants not killed

Each module is mutated in its own scratch copy of the tree, ``.mutation/<module>/`` (ignored by
git), with a generated ``[tool.mutmut]`` section that mutates that module only and selects the
test files that exercise it (mutmut then runs each mutant against just the tests that cover the
mutated function). The scratch copy keeps mutmut's results, so a run that is stopped resumes
where it was, and a second run re-tests only what changed. The score printed (and written to
``.mutation/<module>/score.json``) is killed / (all mutants - those listed as equivalent in
``tools/mutation_equivalent.txt``); "no tests" and "timeout" count as not killed, "timeout"
listed apart since a mutant that hangs a test is caught in practice.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.txt"

# The module and the test files that exercise it. mutmut narrows further, per mutated
# function, to the tests that call it; this list only bounds the one coverage run it makes.
TESTS: Dict[str, List[str]] = {
    "policy": ["tests/test_policy.py", "tests/test_fault_matrix.py", "tests/test_faults_classify.py", "tests/test_completion.py",
               "tests/test_promises.py"],
    "attempt": ["tests/test_ledger_units.py", "tests/test_promises_core.py", "tests/test_core_units.py", "tests/test_fault_matrix.py", "tests/test_jobs.py", "tests/test_promises.py"],
    "jobs": ["tests/test_job_units.py", "tests/test_core_units.py", "tests/test_promises_core.py", "tests/test_promises.py", "tests/test_jobs.py", "tests/test_fault_matrix.py"],
    "selection": ["tests/test_selection.py", "tests/test_core_units.py", "tests/test_status.py", "tests/test_balance.py",
                  "tests/test_parts.py", "tests/test_loaders.py", "tests/test_warm.py"],
    "balance": ["tests/test_balance.py", "tests/test_core_units.py", "tests/test_warm.py", "tests/test_custom_strategy.py"],
    # The fast files (fakes, no server) first; the score in docs/TESTING.md is theirs alone
    # (--tests with the first ones), a lower bound of what the whole list kills.
    "dispatcher": ["tests/test_dispatcher.py", "tests/test_parts.py", "tests/test_core_units.py", "tests/test_promises.py", "tests/test_adopt.py",
                   "tests/test_completion.py", "tests/test_jobs.py"],
    "runner": ["tests/test_runner.py", "tests/test_promises_core.py", "tests/test_adopt.py", "tests/test_fault_matrix.py", "tests/test_jobs.py",
               "tests/test_reliability.py", "tests/test_promises.py", "tests/test_completion.py"],
    # follow.Follower was runner's _Follower (split off to keep runner.py's size): the same tests.
    "follow": ["tests/test_runner.py", "tests/test_promises_core.py", "tests/test_adopt.py", "tests/test_fault_matrix.py", "tests/test_jobs.py",
               "tests/test_reliability.py", "tests/test_promises.py", "tests/test_completion.py", "tests/test_security.py"],
    "warm": ["tests/test_warm.py"],
    # answers.job_failed was runner's _job_failed (moved to keep runner.py's size): measured
    # with runner's test file (--only 'comfy_cluster.answers.x_job_failed*').
    "answers": ["tests/test_runner.py"],
    "planner": ["tests/test_planner.py", "tests/test_batch.py", "tests/test_core_units.py", "tests/test_fault_matrix.py", "tests/test_promises.py", "tests/test_completion.py"],
    "scheduling": ["tests/test_scheduling_units.py", "tests/test_scheduling.py", "tests/test_parts.py", "tests/test_core_units.py", "tests/test_jobs.py", "tests/test_batch.py", "tests/test_warm.py",
                   "tests/test_adopt.py", "tests/test_promises.py"],
    "status": ["tests/test_status_units.py", "tests/test_status.py", "tests/test_core_units.py", "tests/test_selection.py"],
    "wsframes": ["tests/test_events.py", "tests/test_security.py", "tests/test_portable_tls.py::test_https_and_wss_share_one_context"],
    "events": ["tests/test_events.py", "tests/test_portable_tls.py::test_https_and_wss_share_one_context", "tests/test_security.py",
               "tests/test_core_units.py", "tests/test_jobs.py", "tests/test_fault_matrix.py"],
    "gateway/book": ["tests/test_book.py", "tests/test_book_users.py", "tests/test_gateway_units.py", "tests/test_gateway.py", "tests/test_gateway_users.py"],
    "gateway/relay": ["tests/test_relay.py", "tests/test_gateway_units.py", "tests/test_gateway_clients.py", "tests/test_gateway_users.py",
                      "tests/test_gateway.py"],
    # A client socket's queue, split out of relay (2026-12-04): the same tests.
    "gateway/outbox": ["tests/test_relay.py", "tests/test_gateway_units.py", "tests/test_gateway_clients.py", "tests/test_gateway_users.py",
                       "tests/test_gateway.py"],
}
CORE = [m for m in TESTS if m != "answers"]  # answers: its job_failed only (above)
# mutmut's wall-clock limit per mutant is (the covering tests' recorded time + this) x 15. Its
# default (1 s) stops a mutant that makes a fast test wait for its bound (a job never started:
# 30 s) as "timeout"; this lets the test fail first, so the mutant counts as killed.
TIMEOUT_CONSTANT: Dict[str, float] = {"dispatcher": 5.0, "runner": 5.0, "follow": 5.0}
# Copied beside the code: tests read docs (the failure table), README snippets and the Nuke package.
ALSO_COPY = ["docs/", "nuke_plugin/", "README.md", "examples/", "bench/"]


def _source(module: str) -> str:
    return f"comfy_cluster/{module}.py"


def _sync(module: str, tests_override: Sequence[str] = ()) -> Path:
    """Bring the scratch copy of the tree up to date with the working tree (changed files only,
    so mutmut's per-function cache stays valid for what did not change)."""
    dest = SCRATCH / module.replace("/", ".")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    for rel in listed:
        src, dst = ROOT / rel, dest / rel
        if not src.is_file():
            continue
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    tests = [t for t in (tests_override or TESTS[module]) if (ROOT / t.split("::")[0]).is_file()]  # a file or a test id
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8") + (
        "\n[tool.mutmut]\n"
        'source_paths = ["comfy_cluster"]\n'
        f"only_mutate = [{json.dumps(_source(module))}]\n"
        f"also_copy = {json.dumps(ALSO_COPY)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-p", "no:randomly"]\n'
        + (f"timeout_constant = {TIMEOUT_CONSTANT[module]}\n" if module in TIMEOUT_CONSTANT else "")
    )
    (dest / "pyproject.toml").write_text(config, encoding="utf-8")
    return dest


def _equivalent() -> Dict[str, str]:
    """Mutants judged equivalent (no behaviour can tell them apart), with the reason."""
    out: Dict[str, str] = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def _statuses(dest: Path) -> Dict[str, str]:
    """Each mutant's verdict, read from ``mutmut results --all``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=dest,
                         capture_output=True, text=True).stdout
    verdicts: Dict[str, str] = {}
    for line in out.splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep and name.startswith("comfy_cluster."):
            verdicts[name] = verdict
    return verdicts


def score(module: str, dest: Path, seconds: float, only: Sequence[str] = ()) -> Tuple[dict, List[str]]:
    """The module's score and its surviving mutants (equivalent ones left out; with ``only``,
    of the mutants matching those patterns; mutants not run yet count as not killed)."""
    verdicts = {n: v for n, v in _statuses(dest).items() if not only or any(fnmatch.fnmatchcase(n, p) for p in only)}
    equivalent = _equivalent()
    counted = {n: v for n, v in verdicts.items() if n not in equivalent}
    killed = sum(1 for v in counted.values() if v == "killed")
    survivors = sorted(n for n, v in counted.items() if v != "killed")
    result = {
        "module": module,
        "mutants": len(verdicts),
        "equivalent": len(verdicts) - len(counted),
        "killed": killed,
        "timeout": sum(1 for v in counted.values() if v == "timeout"),
        "not_killed": len(survivors),
        "score": round(100.0 * killed / len(counted), 1) if counted else 100.0,
        "seconds": round(seconds),
        "date": time.strftime("%Y-%m-%d"),
        "scope": list(only) or "all",
    }
    (dest / "score.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result, survivors


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="short module names (see --list)")
    parser.add_argument("--core", action="store_true", help="every module of the core set")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--survivors", action="store_true", help="show each surviving mutant's diff")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (default 2)")
    parser.add_argument("--tests", nargs="+", metavar="FILE", help="run against these test files (or test ids, file::name) instead of TESTS[module]")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the mutants whose names match (mutmut's glob; repeatable); the score then counts those")
    parser.add_argument("--retest", action="store_true",
                        help="re-run only the mutants not killed in the last run (after adding tests); the score counts all")
    args = parser.parse_args(argv)
    if args.list:
        for name, tests in TESTS.items():
            print(f"{name:16} {' '.join(tests)}")
        return 0
    modules = CORE if args.core else args.modules
    unknown = [m for m in modules if m not in TESTS]
    if unknown or not modules:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(TESTS)}" if unknown else "name a module or --core")
    failed = 0
    for module in modules:
        dest = _sync(module, args.tests or ())
        started = time.monotonic()
        # tests/conftest.py runs the listed files in this order (fast ones first): mutmut hands
        # pytest a mutant's tests in no fixed order and stops at the first failure.
        env = dict(os.environ, PYTHONPATH=str(dest), COMFY_MUTATE_ORDER=os.pathsep.join(args.tests or TESTS[module]))
        names = list(args.only)
        if args.retest:
            # mutmut keeps a verdict once given; naming a mutant makes it run again. Its map of
            # tests per function is rebuilt: an incremental update for new tests keeps only those.
            names = score(module, dest, 0.0, args.only)[1]
            (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        if names or not args.retest:
            subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *names],
                           cwd=dest, env=env, stdout=subprocess.DEVNULL)
        result, survivors = score(module, dest, time.monotonic() - started, args.only)
        print(json.dumps(result))
        for name in survivors:
            print(f"  not killed: {name}")
            if args.survivors:
                diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=dest,
                                      capture_output=True, text=True).stdout
                print("    " + "\n    ".join(l for l in diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")))
        failed += result["score"] < 90.0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
