"""pytest plugin for tools/mutate.py: run the tests in the order of the files listed for the
module (``TESTS`` there: fast files first).

mutmut hands pytest the tests that cover a mutant as a set, in no fixed order, and stops at
the first failure (``-x``): with this order, a mutant the fast tests kill costs only those,
and the slow files run only for the mutants that survive them. The order comes in the
environment variable ``COMFY_MUTATE_ORDER`` (paths or test ids joined by ``os.pathsep``).
"""

from __future__ import annotations

import os
from typing import Any, List


def pytest_collection_modifyitems(session: Any, config: Any, items: List[Any]) -> None:
    order = [entry.split("::")[0] for entry in os.environ.get("COMFY_MUTATE_ORDER", "").split(os.pathsep) if entry]
    if not order:
        return

    def rank(item: Any) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, listed in enumerate(order) if path == listed or path.endswith("/" + listed)), len(order))

    items.sort(key=rank)  # stable: the order within a file stays
