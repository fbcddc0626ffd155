"""ComfyUI's prompt validation, judged against the node definitions of the cluster's servers.

A client posting to the gateway gets its answer at once, before any server is chosen, so the
gateway validates the prompt itself, from each online server's ``/object_info``: the prompt
is accepted when at least one server can run it. When none can, the answer is ComfyUI's 400
as the most capable server would give it (a server that has every node type is preferred
over one that lacks some). The rules follow ComfyUI 0.3.64's ``validate_prompt``: only nodes
reached from an output node are checked, errors are reported on the node that has them,
literal values must convert to the input's type and respect ``min``/``max`` and choice lists.

Inputs bound to a file the gateway keeps (an upload) are not checked against the server's
file list: the file is uploaded to the server that runs the job.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

__all__ = ["validate_for_cluster", "error_body", "Verdict"]

#: (ok, error, outputs to execute, node_errors)
Verdict = Tuple[bool, Optional[Dict[str, Any]], List[str], Dict[str, Any]]
ObjectInfo = Mapping[str, Any]


def _error(kind: str, message: str, details: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def error_body(kind: str, message: str, details: str = "") -> Dict[str, Any]:
    """A ``POST /prompt`` 400 body without node errors."""
    return {"error": _error(kind, message, details), "node_errors": {}}


def _types_match(received: Any, wanted: Any) -> bool:
    if isinstance(wanted, list) or isinstance(received, list):
        return bool(received == "COMBO" or received == "*" or received == wanted)
    if received == wanted or received == "*" or wanted == "*":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return {t.strip() for t in received.split(",")}.issubset({t.strip() for t in wanted.split(",")})


class _Checker:
    """Validation of one prompt against one server's node definitions."""

    def __init__(self, prompt: Mapping[str, Any], info: ObjectInfo, bound: Mapping[str, Set[str]]) -> None:
        self.prompt = prompt
        self.info = info
        self.bound = bound
        self.done: Dict[str, Tuple[bool, List[Dict[str, Any]]]] = {}
        self.visiting: Set[str] = set()

    def node(self, node_id: str) -> Tuple[bool, List[Dict[str, Any]]]:
        if node_id in self.done:
            return self.done[node_id]
        if node_id in self.visiting:
            raise RecursionError(f"dependency cycle through node {node_id}")
        self.visiting.add(node_id)
        try:
            result = self._check(node_id)
        finally:
            self.visiting.discard(node_id)
        self.done[node_id] = result
        return result

    def _check(self, node_id: str) -> Tuple[bool, List[Dict[str, Any]]]:
        node = self.prompt[node_id]
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            inputs = {}
        spec = self.info[node["class_type"]].get("input") or {}
        errors: List[Dict[str, Any]] = []
        valid = True
        for category in ("required", "optional"):
            for name, entry in (spec.get(category) or {}).items():
                if not isinstance(entry, list) or not entry:
                    continue
                input_type = entry[0]
                opts: Dict[str, Any] = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                config = [input_type, opts]
                if name not in inputs:
                    if category == "required":
                        errors.append(_error("required_input_missing", "Required input is missing", name, {"input_name": name}))
                    continue
                value = inputs[name]
                if isinstance(value, list):
                    if len(value) != 2 or str(value[0]) not in self.prompt:
                        errors.append(
                            _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                   {"input_name": name, "input_config": config, "received_value": value})
                        )
                        continue
                    source_id = str(value[0])
                    source_type = self.prompt[source_id].get("class_type")
                    outputs = (self.info.get(source_type) or {}).get("output") or []
                    slot = value[1]
                    received = outputs[slot] if isinstance(slot, int) and 0 <= slot < len(outputs) else None
                    if not _types_match(received, input_type):
                        errors.append(
                            _error("return_type_mismatch", "Return type mismatch between linked nodes",
                                   f"{name}, received_type({received}) mismatch input_type({input_type})",
                                   {"input_name": name, "input_config": config, "received_type": received, "linked_node": value})
                        )
                        continue
                    if self.node(source_id)[0] is False:
                        valid = False
                    continue
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                try:
                    if input_type == "INT":
                        value = int(value)
                    elif input_type == "FLOAT":
                        value = float(value)
                    elif input_type == "STRING":
                        value = str(value)
                    elif input_type == "BOOLEAN":
                        value = bool(value)
                except Exception as ex:  # noqa: BLE001 - any failed conversion is reported
                    errors.append(
                        _error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                               f"{name}, {value}, {ex}",
                               {"input_name": name, "input_config": config, "received_value": value, "exception_message": str(ex)})
                    )
                    continue
                try:
                    if "min" in opts and value < opts["min"]:
                        errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}", name,
                                             {"input_name": name, "input_config": config, "received_value": value}))
                        continue
                    if "max" in opts and value > opts["max"]:
                        errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}", name,
                                             {"input_name": name, "input_config": config, "received_value": value}))
                        continue
                except TypeError:
                    pass
                if isinstance(input_type, list) and value not in input_type and name not in self.bound.get(node_id, ()):
                    shown = f"(list of length {len(input_type)})" if len(input_type) > 20 else str(input_type)
                    errors.append(
                        _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                               {"input_name": name, "input_config": None if len(input_type) > 20 else config, "received_value": value})
                    )
        if errors or not valid:
            return False, errors
        return True, []


def _validate_one(prompt: Mapping[str, Any], info: ObjectInfo, bound: Mapping[str, Set[str]]) -> Verdict:
    outputs: List[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping):
            return False, _error("invalid_prompt", f"Node {node_id} is not an object.", f"Node ID '#{node_id}'"), [], {}
        if "class_type" not in node:
            return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'"), [], {}
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in info:
            return False, _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.", f"Node ID '#{node_id}'"), [], {}
        if info[class_type].get("output_node"):
            outputs.append(str(node_id))
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    checker = _Checker(prompt, info, bound)
    good: List[str] = []
    node_errors: Dict[str, Any] = {}
    lines: List[str] = []
    for out in outputs:
        try:
            ok, reasons = checker.node(out)
        except Exception as ex:  # noqa: BLE001 - reported like ComfyUI does
            ok, reasons = False, [_error("exception_during_validation", "Exception when validating node", str(ex),
                                         {"exception_type": type(ex).__name__, "traceback": []})]
            checker.done[out] = (False, reasons)
        if ok:
            good.append(out)
            continue
        lines += [f"{e['message']}: {e['details']}" for e in reasons]
        for node_id, (node_ok, node_reasons) in checker.done.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(
                    node_id, {"errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id].get("class_type")}
                )
                if out not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(out)
    if not good:
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines)), [], node_errors
    return True, None, good, node_errors


def validate_for_cluster(prompt: Any, infos: Sequence[ObjectInfo], bound: Mapping[str, Set[str]]) -> Verdict:
    """Validate ``prompt`` for each server's ``/object_info``; the best verdict.

    Accepted when any server accepts it (the one with the fewest dropped outputs wins);
    otherwise the refusal of a server that has every node type, if any. With no node
    definitions at all (no server online), the prompt is accepted unchecked: the job waits
    in the gateway for a server, as it would in the pool.
    """
    if not isinstance(prompt, dict):
        return False, _error("invalid_prompt", "The prompt must be an object mapping node ids to nodes.", ""), [], {}
    if not infos:
        outputs = [str(k) for k, n in prompt.items() if isinstance(n, Mapping)]
        return True, None, outputs, {}
    verdicts = []
    for info in infos:
        verdict = _validate_one(prompt, info, bound)
        if verdict[0] and not verdict[3]:
            return verdict  # a server runs all of it: no need to ask the others
        verdicts.append(verdict)
    accepted = [v for v in verdicts if v[0]]
    if accepted:
        return min(accepted, key=lambda v: len(v[3]))
    for v in verdicts:
        if v[1] is not None and v[1]["type"] != "invalid_prompt":
            return v
    return verdicts[0]
