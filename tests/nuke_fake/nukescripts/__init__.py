"""A strict fake of the part of Foundry's ``nukescripts`` package the plugin uses: PythonPanel.

Panels hold real (fake) knobs, so their values follow the same main-thread rule as nodes.
Tests click panel buttons with ``nuke._fake.panel_press``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import nuke

__all__ = ["PythonPanel"]


class PythonPanel:
    """A floating panel of knobs; subclasses override ``knobChanged(knob)``."""

    def __init__(self, title: str = "", id: str = "", scrollable: bool = True) -> None:
        nuke._main_only("PythonPanel()")
        self._title = title
        self._id = id
        self._panel_knobs: List[nuke.Knob] = []
        self._shown = False
        self._destroyed = False  # closed by the user: Nuke deleted the panel under this object

    def addKnob(self, knob: nuke.Knob) -> None:
        nuke._main_only("PythonPanel.addKnob")
        if not isinstance(knob, nuke.Knob):
            raise TypeError("addKnob needs a Knob")
        if any(k._name == knob._name for k in self._panel_knobs):
            raise ValueError(f"the panel already has a knob named {knob._name}")
        self._panel_knobs.append(knob)

    def removeKnob(self, knob: nuke.Knob) -> None:
        nuke._main_only("PythonPanel.removeKnob")
        self._panel_knobs.remove(knob)

    def knobs(self) -> Dict[str, nuke.Knob]:
        nuke._main_only("PythonPanel.knobs")
        return {k._name: k for k in self._panel_knobs}

    def knobChanged(self, knob: nuke.Knob) -> None:
        """Called on the main thread when the user changes a knob or clicks a button."""

    def show(self) -> None:
        nuke._main_only("PythonPanel.show")
        if self._destroyed:
            raise RuntimeError("Internal C++ object (PythonPanel) already deleted.")
        self._shown = True

    def showModalDialog(self) -> bool:
        nuke._main_only("PythonPanel.showModalDialog")
        self._shown = True
        return True

    def addToPane(self, pane: Optional[Any] = None) -> None:
        nuke._main_only("PythonPanel.addToPane")
        self._shown = True

    def setMinimumSize(self, width: int, height: int) -> None:
        nuke._main_only("PythonPanel.setMinimumSize")

    def title(self) -> str:
        return self._title
