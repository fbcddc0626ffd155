# comfy-cluster, run by Nuke at start-up (GUI, nuke -t and render farm alike): puts the library
# and this Nuke's dependency folder on sys.path and checks that they import
# (see comfy_cluster_nuke/startup.py). Nuke runs this file in a namespace shared with every
# other plugin, so it leaves no name behind: no import statement, no assignment.
__import__("comfy_cluster_nuke.startup").startup.init()
