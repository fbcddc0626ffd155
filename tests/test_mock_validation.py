"""Property tests of the mock's prompt validation: any JSON input gives ComfyUI's answers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_cluster.testing.nodes import BUILTIN_NODES, NodeEnv
from comfy_cluster.testing.validation import validate_prompt
from comfy_cluster.testing.workflows import sleep_workflow

ENV = NodeEnv(input_dir="/nonexistent/in", output_dir="/nonexistent/out", temp_dir="/nonexistent/tmp", models=["m.safetensors"])
KNOWN = {
    "invalid_input_type",
    "value_smaller_than_min",
    "value_bigger_than_max",
    "bad_linked_input",
    "return_type_mismatch",
    "exception_during_validation",
    "exception_during_inner_validation",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["seconds", "steps", "seed", "image"]), value=json_values)
def test_any_input_value_is_accepted_or_rejected_like_comfyui(name: str, value: Any) -> None:
    prompt = json.loads(json.dumps(sleep_workflow()))
    prompt["2"]["inputs"][name] = value
    ok, error, outputs, node_errors = validate_prompt(prompt, BUILTIN_NODES, ENV)
    if ok:
        assert outputs == ["3"] and node_errors == {}
        return
    assert error is not None and error["type"] == "prompt_outputs_failed_validation"
    kinds = {e["type"] for errors in node_errors.values() for e in errors["errors"]}
    assert kinds and kinds <= KNOWN, node_errors
    json.dumps(node_errors)  # the answer must be serialisable


@settings(max_examples=100, deadline=None)
@given(seconds=st.floats(0, 600), steps=st.integers(1, 1000), seed=st.integers(0, 2147483648))
def test_values_inside_the_ranges_are_valid(seconds: float, steps: int, seed: int) -> None:
    ok, error, outputs, _ = validate_prompt(sleep_workflow(seconds=seconds, steps=steps, seed=seed), BUILTIN_NODES, ENV)
    assert ok and error is None and outputs == ["3"]


@settings(max_examples=100, deadline=None)
@given(steps=st.one_of(st.integers(max_value=0), st.integers(min_value=1001)))
def test_values_outside_the_ranges_are_refused(steps: int) -> None:
    ok, error, _, node_errors = validate_prompt(sleep_workflow(steps=steps), BUILTIN_NODES, ENV)
    assert not ok
    kind = node_errors["2"]["errors"][0]["type"]
    assert kind == ("value_smaller_than_min" if steps < 1 else "value_bigger_than_max")
