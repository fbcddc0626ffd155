"""The node's "file colorspace": a pulldown of the script's own colorspaces, checked before a run.

The names come from the script's OCIO config, as Nuke's own Read lists them
(``nuke.getColorspaceList`` of the ``result`` Read's colorspace knob): colorspaces without
their family path, and the config's roles (``scene_linear``, ``matte_paint``...), which keep
their meaning when a show moves between configs whose colorspace names differ (Nuke 14's
``ACES - ACEScg`` is Nuke 16's ``ACEScg``). The first choice, ``default``, is the script's
8-bit default (Project Settings > Color > 8-bit files), which an OCIO config may give as a
role or as a ``default (...)`` entry.

:func:`resolve` is called when a run is set up, before any GPU work: a choice the script's
config does not have (the config changed since) is refused with the list to pick from.
Main thread only.
"""

from __future__ import annotations

from typing import List, Optional

import nuke

__all__ = ["KNOB", "DEFAULT_CHOICE", "script_colorspaces", "make_knob", "refresh", "resolve"]

KNOB = "colorspace"
DEFAULT_CHOICE = "default"
_READ = "result"  # the node's inner Read (see .node): its colorspace knob lists the config


def _names(knob: Optional[nuke.Knob]) -> List[str]:
    if knob is None:
        return []
    out: List[str] = []
    for item in nuke.getColorspaceList(knob):
        name = str(item).split("\t", 1)[0].strip()  # a role: "role<TAB>role (space)"
        if name and name != "default" and not name.startswith("default (") and name not in out:
            out.append(name)
    return out


def script_colorspaces(node: nuke.Node) -> List[str]:
    """The colorspaces (and roles) of the script's OCIO config, as a Read offers them."""
    read = node.node(_READ) if isinstance(node, nuke.Group) else None
    if read is not None:
        return _names(read.knob("colorspace"))
    return _names(nuke.root().knob("int8Lut"))


def make_knob(choices: List[str]) -> nuke.Enumeration_Knob:
    """The pulldown, ``default`` first."""
    knob = nuke.Enumeration_Knob(KNOB, "file colorspace", [DEFAULT_CHOICE] + choices)
    knob.setTooltip(
        "Colorspace of the images sent to and read back from ComfyUI: one of this script's (OCIO roles included). "
        "default: the script's 8-bit default (Project Settings > Color)."
    )
    return knob


def refresh(node: nuke.Node) -> None:
    """Fill the pulldown from the script's config again, keeping the choice (even one the
    config lacks now: :func:`resolve` names it rather than silently picking another)."""
    knob = node.knob(KNOB)
    if not isinstance(knob, nuke.Enumeration_Knob):
        return
    chosen = str(knob.value())
    items = [DEFAULT_CHOICE] + script_colorspaces(node)
    if chosen and chosen not in items:
        items.append(chosen)
    if items != list(knob.values()):
        knob.setValues(items)
        knob.setValue(chosen or DEFAULT_CHOICE)


def _script_default() -> str:
    knob = nuke.root().knob("int8Lut")
    value = str(knob.value()).strip() if knob is not None else ""
    if value.startswith("default (") and value.endswith(")"):
        value = value[len("default (") : -1].strip()  # "default (matte_paint)": the role inside
    return value or "sRGB"


def resolve(node: nuke.Node) -> str:
    """The colorspace name to give the Write and the Read; ValueError (one line, with the
    script's choices) when the script's config does not have the node's choice."""
    knob = node.knob(KNOB)
    chosen = str(knob.value()).strip() if knob is not None else ""
    available = script_colorspaces(node)
    name = _script_default() if chosen in ("", DEFAULT_CHOICE) else chosen
    if available and name not in available:
        what = "the script's 8-bit default" if chosen in ("", DEFAULT_CHOICE) else "file colorspace"
        shown = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
        raise ValueError(f"{what} {name!r} is not a colorspace of this script's OCIO config; choose one of: {shown}")
    return name
