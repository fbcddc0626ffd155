"""comfy-cluster's Nuke plugin: the "ComfyUI Cluster Run" node, the servers panel and the menu.

This package is the only place that imports ``nuke``; everything it does on the cluster goes
through :mod:`comfy_cluster`. Install it by adding this folder to ``NUKE_PATH``: Nuke then runs
``init.py`` (puts ``comfy_cluster`` and its dependencies on ``sys.path``) and, with a GUI,
``menu.py`` (adds the "ComfyUI Cluster" menu).

Modules: :mod:`.node` (creating the node), :mod:`.run` (Execute, Cancel and ``submit`` for the
Script Editor and ``nuke -t``), :mod:`.panel` (the "ComfyUI Servers" panel) and
:mod:`.mainthread` (getting calls onto Nuke's main thread).
"""

from __future__ import annotations

__all__ = ["node", "run", "panel", "mainthread"]
