"""``python -m comfy_cluster`` is the ``comfy-cluster`` command."""

import sys

from .cli import main

sys.exit(main())
