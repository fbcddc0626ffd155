"""The "ComfyUI Cluster" menus (main menu bar, and the Nodes toolbar when there is one).

Commands are strings run by Nuke in its shared ``__main__`` namespace: they use
``__import__(...)`` so they bind no name there, and they find the current module after a
reload. Hiero and Nuke Studio's timeline sessions run ``menu.py`` without a node graph: the
Nodes toolbar is then absent and only the main-menu entries that make sense are added.
"""

from __future__ import annotations

import nuke

__all__ = ["MENU", "CREATE_NODE", "OPEN_PANEL", "START_GATEWAY", "STOP_GATEWAY", "add_menus"]

MENU = "ComfyUI Cluster"
CREATE_NODE = '__import__("comfy_cluster_nuke.node").node.create()'
OPEN_PANEL = '__import__("comfy_cluster_nuke.panel").panel.show()'
START_GATEWAY = '__import__("comfy_cluster_nuke.gateway").gateway.start_from_menu()'
STOP_GATEWAY = '__import__("comfy_cluster_nuke.gateway").gateway.stop()'


def _has_node_graph() -> bool:
    # nuke.env["hiero"] is True in a Hiero session (no node graph, no Nodes toolbar).
    return not nuke.env.get("hiero", False)


def add_menus() -> None:
    """Add the menu entries (main thread, at start-up)."""
    main = nuke.menu("Nuke")
    if main is None:  # no main menu bar at all: nothing to add to
        return
    menu = main.addMenu(MENU)
    graph = _has_node_graph()
    if graph:
        menu.addCommand("ComfyUI Cluster Run", CREATE_NODE)
    menu.addCommand("Servers...", OPEN_PANEL)
    menu.addCommand("Start gateway", START_GATEWAY)
    menu.addCommand("Stop gateway", STOP_GATEWAY)
    toolbar = nuke.menu("Nodes") if graph else None
    if toolbar is not None:
        toolbar.addMenu(MENU).addCommand("ComfyUI Cluster Run", CREATE_NODE)
