"""The mock server answers record.py's 25 scenarios with the shapes a real ComfyUI 0.3.64 did.

The reference (``transcripts.json``) and the comparison rules (``compare.py``) live in
``shared/comfyui-api`` beside the clone (``../shared`` from the repo root), or wherever
``COMFY_API_SPEC_DIR`` points; a clone on its own uses the copy in ``tests/data/comfyui-api``.
The rules are imported from compare.py itself, never rewritten.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import pytest

from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.transcripts import record

REPO_ROOT = Path(__file__).resolve().parents[1]


def _spec_dir() -> Path:
    # Beside the clone first (CI lays shared/ there), then wherever COMFY_API_SPEC_DIR says.
    candidates: List[Path] = [REPO_ROOT.parent / "shared" / "comfyui-api"]
    env = os.environ.get("COMFY_API_SPEC_DIR")
    if env:
        candidates.append(Path(env))
    candidates.append(REPO_ROOT / "tests" / "data" / "comfyui-api")
    for candidate in candidates:
        if (candidate / "transcripts.json").is_file() and (candidate / "compare.py").is_file():
            return candidate
    pytest.fail(f"comfyui-api spec folder not found (looked in {[str(c) for c in candidates]}); set COMFY_API_SPEC_DIR")
    raise AssertionError  # unreachable; pytest.fail raises


def _load_compare(spec_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("comfyui_api_compare", spec_dir / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spec_dir() -> Path:
    return _spec_dir()


@pytest.fixture(scope="module")
def compare(spec_dir: Path) -> ModuleType:
    return _load_compare(spec_dir)


@pytest.fixture(scope="module")
def reference(spec_dir: Path) -> Dict[str, Any]:
    with open(spec_dir / "transcripts.json", encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data


def _differences(compare: ModuleType, real: Dict[str, Any], cand: Dict[str, Any]) -> Dict[str, List[str]]:
    problems: Dict[str, List[str]] = {}
    for key in (k for k in real if not k.startswith("_")):
        if key not in cand:
            problems[key] = ["missing"]
            continue
        diff = compare.diff(real[key], cand[key], key)
        if diff:
            problems[key] = diff
    return problems


@pytest.fixture(scope="module")
def candidate() -> Dict[str, Any]:
    # Speed 1 keeps record.py's pace (0.1 s per busy step); pausing the job around the
    # timing-sensitive steps keeps a loaded machine from reordering the events.
    with MockComfyServer(name="transcripts") as server:
        return record(server.url, next_seconds=0.3, timeout=30, pause=server.pause_jobs, resume=server.resume_jobs)


def test_all_25_scenarios_match_the_real_server(
    compare: ModuleType, reference: Dict[str, Any], candidate: Dict[str, Any]
) -> None:
    scenarios = [k for k in reference if not k.startswith("_")]
    assert len(scenarios) == 25
    problems = _differences(compare, reference, candidate)
    matched = len(scenarios) - len(problems)
    assert not problems, f"{matched}/25 scenarios match:\n" + "\n".join(p for ps in problems.values() for p in ps)


def test_comparison_catches_a_wrong_answer(compare: ModuleType, reference: Dict[str, Any]) -> None:
    # The check above must be able to fail: a dropped message or a changed key is seen.
    broken = json.loads(json.dumps(reference))
    broken["success"]["ws"] = [m for m in broken["success"]["ws"] if m.get("type") != "execution_cached"]
    broken["system_stats"]["body"]["system"].pop("comfyui_version")
    problems = _differences(compare, reference, broken)
    assert set(problems) == {"success", "system_stats"}


def test_mock_specific_details_of_the_transcript(reference: Dict[str, Any], candidate: Dict[str, Any]) -> None:
    # Values compare.py does not look at but a client may: the ones that must be equal.
    success = candidate["success"]
    pid = success["post"]["body"]["prompt_id"]
    item = success["history"]["body"][pid]
    assert item["status"] == {"status_str": "success", "completed": True, "messages": item["status"]["messages"]}
    assert [m[0] for m in item["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    image = item["outputs"]["3"]["images"][0]
    assert image["filename"] == "rec_00001_.png" and image["type"] == "output"
    cached = [m for m in candidate["cached"]["ws"] if m.get("type") == "execution_cached"][0]
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    # The validation answers carry ComfyUI's exact wording.
    assert candidate["unknown_node"]["body"]["error"]["message"] == reference["unknown_node"]["body"]["error"]["message"]
    assert candidate["bad_input"]["body"]["node_errors"] == reference["bad_input"]["body"]["node_errors"]
    assert candidate["object_info_TestSleep"]["body"] == reference["object_info_TestSleep"]["body"]
    assert candidate["object_info_SaveImage"]["body"] == reference["object_info_SaveImage"]["body"]
    runtime = candidate["runtime_error"]["ws"][-1]["data"]
    assert (runtime["exception_message"], runtime["exception_type"], runtime["executed"]) == ("boom\n", "RuntimeError", ["1"])
    assert candidate["view_ok"]["content_type"] == "image/png" and candidate["view_ok"]["length"] > 60
    assert candidate["upload_image"]["body"] == {"name": "lab_in.png", "subfolder": "lab", "type": "input"}
    numbers = [candidate[k]["post"]["body"]["number"] for k in ("success", "cached", "runtime_error")]
    assert numbers == [0, 1, 5]  # every POST /prompt takes a number, even a rejected one
    assert candidate["system_stats"]["body"]["system"]["comfyui_version"] == "0.3.64"
    interrupted = [m["type"] for m in candidate["interrupted_ws"] if m["type"] in ("progress", "execution_interrupted")]
    assert interrupted == ["progress"] * 10 + ["execution_interrupted"]
