"""What a user types to ``comfy-cluster submit``: frame ranges, per-frame file patterns,
``--set``/``--input`` values, and the quotes cmd.exe leaves around them (split from cli.py,
which runs the commands). Prints only notes about removed quotes, to stderr."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from .consoles import unquote
from .workflow import WorkflowInputError, frame_workflows, load_workflow, parse_node_input, seeded_copies, set_inputs

__all__ = ["parse_frames", "frame_path", "build_workflows", "unquote_options"]


def parse_frames(text: str) -> List[int]:
    """``"1-100"``, ``"1-100x2"``, ``"1,5,10-12"`` -> frame numbers (ValueError names the bad part)."""
    frames: List[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?", part)
        if not m:
            raise ValueError(f"--frames: cannot read {part!r} (use 1-100, 1-100x2 or 1,5,10-20)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3) or 1)
        if last < first or step < 1:
            raise ValueError(f"--frames: empty range {part!r}")
        frames.extend(range(first, last + 1, step))
    if not frames:
        raise ValueError("--frames: no frames")
    return frames


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def frame_path(pattern: str, frame: int) -> str:
    """``plate.####.png`` / ``plate.%04d.png`` with the frame number put in.

    Only the first ``####`` or ``%0Nd`` is a frame number; any other ``%`` is part of the name
    (``pattern % frame`` failed with a traceback on ``plate_%s.%04d.png``).
    """
    m = re.search(r"#+|%0?(\d*)d", pattern)
    if not m:
        return pattern
    width = len(m.group(0)) if m.group(0).startswith("#") else int(m.group(1) or 0)
    number = str(frame).zfill(width) if frame >= 0 else "-" + str(-frame).zfill(max(width - 1, 0))
    return pattern[: m.start()] + number + pattern[m.end():]


def build_workflows(args: argparse.Namespace) -> Tuple[List[Dict[str, Any]], List[Optional[Dict[str, str]]]]:
    base = load_workflow(args.workflow)
    values: Dict[str, Dict[str, Any]] = {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise WorkflowInputError(f"--set: expected NODE.INPUT=VALUE, got {item!r}")
        node, name = parse_node_input(key)
        values.setdefault(node, {})[name] = _value(raw)
    base = set_inputs(base, values)
    input_specs: List[Tuple[str, str]] = []
    for item in args.input or []:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise WorkflowInputError(f"--input: expected NODE=FILE, got {item!r}")
        input_specs.append((node, path))
    if args.frames:
        frames = parse_frames(args.frames)
        per_frame_input = any(frame_path(p, 1) != frame_path(p, 2) for _, p in input_specs)
        if not args.frame_input and not per_frame_input:
            raise WorkflowInputError(
                "--frames needs --frame-input NODE.INPUT (the input that gets the frame number) "
                "or an --input with #### or %04d in its file name"
            )
        workflows = frame_workflows(base, frames, args.frame_input) if args.frame_input else [base for _ in frames]
        inputs = [{n: frame_path(p, f) for n, p in input_specs} or None for f in frames]
    else:
        workflows, seeds = seeded_copies(base, args.count)
        if args.count > 1 and not seeds:
            print(f"comfy-cluster: warning: --count {args.count}: the workflow has no seed input, so ComfyUI answers "
                  "the copies from its cache (the same images)", file=sys.stderr)
        inputs = [{n: p for n, p in input_specs} or None for _ in range(args.count)]
    return workflows, inputs


def unquote_options(args: argparse.Namespace) -> None:
    """Remove one pair of outer quotes from file and value options: cmd.exe passes single
    quotes on (``--out 'C:\\renders'`` arrives with its quotes), as bash examples write them."""
    def strip(option: str, value: str) -> str:
        plain = unquote(value)
        if plain != value.strip():
            print(f"comfy-cluster: {option}: removed the quotes around {plain!r} (cmd.exe passes single quotes on)", file=sys.stderr)
        return plain

    for name, option in (("workflow", "WORKFLOW"), ("out", "--out"), ("frames", "--frames"), ("frame_input", "--frame-input")):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, strip(option, getattr(args, name)))
    for name, option in (("input", "--input"), ("set", "--set")):
        items = getattr(args, name, None)
        if items:
            pairs = [strip(option, item).partition("=") for item in items]
            setattr(args, name, [key + sep + (strip(option, value) if sep else "") for key, sep, value in pairs])
