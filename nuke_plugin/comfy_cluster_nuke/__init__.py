"""comfy-cluster's Nuke plugin: the "ComfyUI Cluster Run" node, the servers panel and the menu.

This package is the only code that imports ``nuke``; everything it does on the cluster goes
through :mod:`comfy_cluster`. It lives in ``nuke_plugin/comfy_cluster_nuke`` so that putting
``nuke_plugin`` on ``NUKE_PATH`` (which puts it on ``sys.path``) adds exactly one top-level
name, ``comfy_cluster_nuke``: a studio's own ``import run`` or ``import panel`` never gets ours.

Modules, one concern each:

* :mod:`.startup` - ``sys.path`` set-up and the dependency check (``init.py``), the menus (``menu.py``);
* :mod:`.node` - creating the node and its knobs; :mod:`.params` - workflow parameters as knobs;
* :mod:`.settings` - reading the knobs for a run; :mod:`.outputs` - where results are written;
* :mod:`.render` - rendering the node's inputs to files; :mod:`.run` - Execute, Cancel, ``submit``;
* :mod:`.report` - ComfyUI's errors in words; :mod:`.panel` - the "ComfyUI Servers" panel;
* :mod:`.lifecycle` - cancelling runs when the script closes or Nuke quits;
* :mod:`.gateway` - serving the cluster as one ComfyUI URL from inside Nuke;
* :mod:`.mainthread` - getting calls onto Nuke's main thread.

Nothing is imported here: ``init.py`` imports :mod:`.startup` before the library's
dependencies are on ``sys.path``.
"""
