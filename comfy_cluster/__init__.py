"""comfy-cluster: run ComfyUI workflows on a cluster of ComfyUI servers, from Nuke or any Python.

>>> import comfy_cluster
>>> with comfy_cluster.ServerPool.from_env() as pool:          # doctest: +SKIP
...     job = pool.submit("workflow_api.json")
...     print(job.result().outputs)

The public names are re-exported here; everything else is internal. They are imported on first
use (PEP 562), so that tools of this package that need only the standard library, such as
``python -m comfy_cluster.nuke_setup`` (which installs the dependencies), run before
``requests``, ``websocket-client`` and ``pydantic`` are there.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Dict, List

# A library stays quiet until the application configures logging: without a handler of its
# own, Python's last-resort handler would print the library's warnings to stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

_EXPORTS: Dict[str, str] = {
    "Batch": "planner",
    "Candidate": "balance",
    "ComfyClusterError": "errors",
    "ConfigError": "errors",
    "FastestCompletion": "balance",
    "Job": "jobs",
    "JobCancelled": "errors",
    "JobEvent": "jobs",
    "JobFailed": "errors",
    "JobResult": "jobs",
    "LocalFileError": "errors",
    "LeastLoaded": "balance",
    "NoServerAvailable": "errors",
    "NodeError": "errors",
    "OutputFile": "jobs",
    "Priority": "balance",
    "RoundRobin": "balance",
    "STRATEGIES": "balance",
    "ServerConfig": "config",
    "ServerError": "errors",
    "ServerPool": "pool",
    "ServerStatus": "status",
    "UnsafePathError": "errors",
    "WorkflowError": "errors",
    "WorkflowInputError": "workflow",
    "frame_workflows": "workflow",
    "load_workflow": "workflow",
    "parse_node_input": "workflow",
    "servers_from_env": "config",
    "set_inputs": "workflow",
}

__all__ = [
    "Batch",
    "Candidate",
    "ComfyClusterError",
    "ConfigError",
    "FastestCompletion",
    "Job",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "JobResult",
    "LeastLoaded",
    "LocalFileError",
    "NoServerAvailable",
    "NodeError",
    "OutputFile",
    "Priority",
    "RoundRobin",
    "STRATEGIES",
    "ServerConfig",
    "ServerError",
    "ServerPool",
    "ServerStatus",
    "UnsafePathError",
    "WorkflowError",
    "WorkflowInputError",
    "frame_workflows",
    "load_workflow",
    "parse_node_input",
    "servers_from_env",
    "set_inputs",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .balance import STRATEGIES, Candidate, FastestCompletion, LeastLoaded, Priority, RoundRobin
    from .config import ServerConfig, servers_from_env
    from .planner import Batch
    from .errors import (
        ComfyClusterError,
        ConfigError,
        JobCancelled,
        JobFailed,
        LocalFileError,
        NodeError,
        NoServerAvailable,
        ServerError,
        UnsafePathError,
        WorkflowError,
    )
    from .jobs import Job, JobEvent, JobResult, OutputFile
    from .pool import ServerPool
    from .status import ServerStatus
    from .workflow import WorkflowInputError, frame_workflows, load_workflow, parse_node_input, set_inputs


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'comfy_cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
