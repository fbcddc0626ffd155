# comfy-cluster, run by Nuke at start-up when it has a GUI: the "ComfyUI Cluster" menus, the
# clean-up on script close and exit, and the gateway when NUKE_COMFYUI_GATEWAY=host:port asks for
# it (see comfy_cluster_nuke/startup.py). Leaves no name in Nuke's shared namespace.
__import__("comfy_cluster_nuke.startup").startup.menus()
