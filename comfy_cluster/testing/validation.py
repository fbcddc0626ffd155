"""Prompt validation with ComfyUI's answers (``execution.validate_prompt`` in 0.3.64).

Only nodes reachable from an output node are validated, errors are reported on the node that
has them (downstream nodes just become invalid), and literal values are converted in place
(``"seconds": 3`` becomes ``3.0`` in the stored prompt), exactly as ComfyUI does. Situations
where ComfyUI itself crashes (a prompt that is not an object) raise, and the server turns that
into ComfyUI's plain-text 500.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .nodes import NodeDef, NodeEnv

__all__ = ["validate_prompt", "is_link", "full_type_name", "ValidationResult"]

logger = logging.getLogger(__name__)

#: (ok, error, outputs to execute, node_errors)
ValidationResult = Tuple[bool, Optional[Dict[str, Any]], List[str], Dict[str, Any]]
_NodeCheck = Tuple[bool, List[Dict[str, Any]], str]


def is_link(value: Any) -> bool:
    """A linked input is ``[source_node_id, output_index]`` (any list, for validation)."""
    return isinstance(value, list)


def full_type_name(klass: type) -> str:
    """ComfyUI's exception type naming: builtins bare, others with their module."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


def _error(kind: str, message: str, details: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _types_match(received: Any, wanted: Any) -> bool:
    """ComfyUI's ``validate_node_input``: equal, a wildcard, or a comma-separated subset."""
    if isinstance(wanted, list) or isinstance(received, list):
        return bool(received == "COMBO" or received == "*" or received == wanted)
    if received == wanted or received == "*" or wanted == "*":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    received_set = {t.strip() for t in received.split(",")}
    wanted_set = {t.strip() for t in wanted.split(",")}
    return received_set.issubset(wanted_set)


class _Validator:
    def __init__(self, prompt: Dict[str, Any], registry: Dict[str, NodeDef], env: NodeEnv) -> None:
        self.prompt = prompt
        self.registry = registry
        self.env = env
        self.validated: Dict[str, _NodeCheck] = {}
        self._visiting: Set[str] = set()

    def node(self, unique_id: str) -> _NodeCheck:
        if unique_id in self.validated:
            return self.validated[unique_id]
        if unique_id in self._visiting:
            # ComfyUI recurses until RecursionError here; name the problem instead.
            raise RecursionError(f"dependency cycle through node {unique_id}")
        self._visiting.add(unique_id)
        try:
            result = self._check(unique_id)
        finally:
            self._visiting.discard(unique_id)
        self.validated[unique_id] = result
        return result

    def _check(self, unique_id: str) -> _NodeCheck:
        node = self.prompt[unique_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        node_def = self.registry[class_type]
        spec = node_def.input_types(self.env)
        sections = [("required", spec.get("required", {})), ("optional", spec.get("optional", {}))]
        errors: List[Dict[str, Any]] = []
        valid = True
        validate_names = set(node_def.validate_inputs)

        for category, section in sections:
            for name, info in section.items():
                input_type = info[0]
                extra_info: Dict[str, Any] = info[1] if len(info) > 1 and isinstance(info[1], dict) else {}
                if name not in inputs:
                    if category == "required":
                        errors.append(_error("required_input_missing", "Required input is missing", name, {"input_name": name}))
                    continue
                value = inputs[name]
                config = [input_type, extra_info]
                if is_link(value):
                    if len(value) != 2:
                        errors.append(
                            _error(
                                "bad_linked_input",
                                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                name,
                                {"input_name": name, "input_config": config, "received_value": value},
                            )
                        )
                        continue
                    source_id = value[0]
                    source = self.prompt[source_id]
                    received_type = self.registry[source["class_type"]].outputs[value[1]]
                    if not _types_match(received_type, input_type):
                        errors.append(
                            _error(
                                "return_type_mismatch",
                                "Return type mismatch between linked nodes",
                                f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                                {"input_name": name, "input_config": config, "received_type": received_type, "linked_node": value},
                            )
                        )
                        continue
                    try:
                        upstream = self.node(source_id)
                    except Exception as ex:  # noqa: BLE001 - reported like ComfyUI does
                        typ, _, tb = sys.exc_info()
                        valid = False
                        self.validated[source_id] = (
                            False,
                            [
                                _error(
                                    "exception_during_inner_validation",
                                    "Exception when validating inner node",
                                    str(ex),
                                    {
                                        "input_name": name,
                                        "input_config": config,
                                        "exception_message": str(ex),
                                        "exception_type": full_type_name(typ or Exception),
                                        "traceback": traceback.format_tb(tb),
                                        "linked_node": value,
                                    },
                                )
                            ],
                            source_id,
                        )
                        continue
                    if upstream[0] is False:
                        valid = False  # the upstream node carries the error
                    continue

                # A literal value: convert like ComfyUI (in place), then check range and list.
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                    inputs[name] = value
                try:
                    if input_type == "INT":
                        value = int(value)
                    elif input_type == "FLOAT":
                        value = float(value)
                    elif input_type == "STRING":
                        value = str(value)
                    elif input_type == "BOOLEAN":
                        value = bool(value)
                    inputs[name] = value
                except Exception as ex:  # noqa: BLE001 - any conversion failure is reported
                    errors.append(
                        _error(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {input_type} value",
                            f"{name}, {value}, {ex}",
                            {"input_name": name, "input_config": config, "received_value": value, "exception_message": str(ex)},
                        )
                    )
                    continue
                if name in validate_names:
                    continue  # the node's own VALIDATE_INPUTS decides, as in ComfyUI
                try:
                    if "min" in extra_info and value < extra_info["min"]:
                        errors.append(
                            _error(
                                "value_smaller_than_min",
                                f"Value {value} smaller than min of {extra_info['min']}",
                                name,
                                {"input_name": name, "input_config": config, "received_value": value},
                            )
                        )
                        continue
                    if "max" in extra_info and value > extra_info["max"]:
                        errors.append(
                            _error(
                                "value_bigger_than_max",
                                f"Value {value} bigger than max of {extra_info['max']}",
                                name,
                                {"input_name": name, "input_config": config, "received_value": value},
                            )
                        )
                        continue
                except TypeError:
                    pass  # a non-numeric literal for a custom type: ComfyUI lets it through
                if isinstance(input_type, list) and value not in input_type:
                    if len(input_type) > 20:
                        list_info = f"(list of length {len(input_type)})"
                        list_config: Any = None
                    else:
                        list_info = str(input_type)
                        list_config = config
                    errors.append(
                        _error(
                            "value_not_in_list",
                            "Value not in list",
                            f"{name}: '{value}' not in {list_info}",
                            {"input_name": name, "input_config": list_config, "received_value": value},
                        )
                    )
                    continue

        if node_def.validate is not None:
            named = {n: inputs.get(n) for n in node_def.validate_inputs}
            verdict = node_def.validate(self.env, named)
            if verdict is not True:
                for name in named:
                    details = name if verdict is False else f"{name} - {verdict}"
                    errors.append(_error("custom_validation_failed", "Custom validation failed for node", details, {"input_name": name}))

        if errors or valid is not True:
            return False, errors, unique_id
        return True, [], unique_id


def validate_prompt(
    prompt: Any,
    registry: Dict[str, NodeDef],
    env: NodeEnv,
    partial_execution_targets: Optional[Iterable[str]] = None,
) -> ValidationResult:
    """Validate ``prompt`` for a server offering ``registry``; see the module docstring."""
    if not isinstance(prompt, dict):
        # ComfyUI indexes the prompt by its keys and crashes with a 500 here.
        raise TypeError(f"prompt must be an object, not {type(prompt).__name__}")
    targets = None if partial_execution_targets is None else {str(t) for t in partial_execution_targets}
    outputs: List[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise TypeError(f"node {node_id} must be an object, not {type(node).__name__}")
        if "class_type" not in node:
            return (
                False,
                _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'", {}),
                [],
                {},
            )
        class_type = node["class_type"]
        node_def = registry.get(class_type) if isinstance(class_type, str) else None
        if node_def is None:
            return (
                False,
                _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.", f"Node ID '#{node_id}'", {}),
                [],
                {},
            )
        if node_def.output_node and (targets is None or node_id in targets):
            outputs.append(node_id)

    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}

    validator = _Validator(prompt, registry, env)
    good_outputs: List[str] = []
    failed: List[Tuple[str, List[Dict[str, Any]]]] = []
    node_errors: Dict[str, Any] = {}
    for output_id in outputs:
        try:
            valid, reasons, _ = validator.node(output_id)
        except Exception as ex:  # noqa: BLE001 - reported like ComfyUI does
            typ, _, tb = sys.exc_info()
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    {"exception_type": full_type_name(typ or Exception), "traceback": traceback.format_tb(tb)},
                )
            ]
            validator.validated[output_id] = (False, reasons, output_id)
        if valid is True:
            good_outputs.append(output_id)
            continue
        failed.append((output_id, reasons))
        for node_id, (node_valid, node_reasons, _) in validator.validated.items():
            # Downstream nodes of a broken one are invalid without reasons: not reported.
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"] if isinstance(prompt.get(node_id), dict) else None,
                    }
                node_errors[node_id]["dependent_outputs"].append(output_id)
        logger.debug("output %s of the prompt failed validation: %s", output_id, reasons)

    if not good_outputs:
        lines = [f"{e['message']}: {e['details']}" for _, errors in failed for e in errors]
        return (
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines), {}),
            [],
            node_errors,
        )
    return True, None, good_outputs, node_errors
