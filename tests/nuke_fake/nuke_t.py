"""A stand-in for the ``nuke`` executable in terminal mode, for tests that start real processes
(two farm tasks at once, ``openjd-cli`` running the farm template):

    python tests/nuke_fake/nuke_t.py -t SCRIPT.py [ARGS...]

What Nuke does there, with the fake ``nuke`` module (Foundry, "Using the Command-line" and
"Start-up scripts" of the Python Developers Guide): no GUI; each folder of ``NUKE_PATH`` is a
plugin path (on ``sys.path``) and its ``init.py`` runs (``menu.py`` does not: no GUI); then
SCRIPT runs as ``__main__`` with ``sys.argv`` less a trailing frame range (kept in
``nuke.rawArgs``); the exit status is the script's. Nothing else of Nuke is modelled.
"""

from __future__ import annotations

import os
import sys
from typing import List

FAKE_DIR = os.path.dirname(os.path.abspath(__file__))


def main(argv: List[str]) -> int:
    if len(argv) < 2 or argv[0] != "-t":
        print("usage: nuke_t.py -t SCRIPT.py [ARGS...]", file=sys.stderr)
        return 2
    sys.path.insert(0, FAKE_DIR)
    import nuke
    from nuke import _fake

    _fake.reset()
    _fake.set_gui(False)
    for folder in [f for f in os.environ.get("NUKE_PATH", "").split(os.pathsep) if f]:
        nuke.pluginAddPath(folder)
        init = os.path.join(folder, "init.py")
        if os.path.isfile(init):
            with open(init, encoding="utf-8") as fh:
                exec(compile(fh.read(), init, "exec"), {"__name__": "__main__", "nuke": nuke})
    return _fake.run_nuke_t(argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
