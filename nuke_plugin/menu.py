"""Run by Nuke at start-up when it has a GUI: the "ComfyUI Cluster" menus.

Main menu bar: ComfyUI Cluster > ComfyUI Cluster Run, Servers... ; the Nodes toolbar gets the
node too. Commands are strings so that they find the current module after a reload.
"""

from __future__ import annotations

import nuke

MENU = "ComfyUI Cluster"
CREATE_NODE = "import nuke_plugin.node; nuke_plugin.node.create()"
OPEN_PANEL = "import nuke_plugin.panel; nuke_plugin.panel.show()"


def add_menus() -> None:
    menu = nuke.menu("Nuke").addMenu(MENU)
    menu.addCommand("ComfyUI Cluster Run", CREATE_NODE)
    menu.addCommand("Servers...", OPEN_PANEL)
    nuke.menu("Nodes").addMenu(MENU).addCommand("ComfyUI Cluster Run", CREATE_NODE)


add_menus()
