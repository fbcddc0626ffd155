"""comfy-cluster: run ComfyUI workflows on a cluster of ComfyUI servers, from Nuke or any Python.

>>> import comfy_cluster
>>> with comfy_cluster.ServerPool.from_env() as pool:          # doctest: +SKIP
...     job = pool.submit("workflow_api.json")
...     print(job.result().outputs)

The public names are re-exported here; everything else is internal.
"""

from __future__ import annotations

from .balance import Candidate, FastestCompletion, LeastLoaded, Priority, RoundRobin, STRATEGIES
from .config import ServerConfig
from .dispatch import Batch
from .errors import (
    ComfyClusterError,
    ConfigError,
    JobCancelled,
    JobFailed,
    NodeError,
    NoServerAvailable,
    ServerError,
    UnsafePathError,
    WorkflowError,
)
from .jobs import Job, JobEvent, JobResult, OutputFile
from .pool import ServerPool
from .status import ServerStatus
from .workflow import WorkflowInputError, frame_workflows, load_workflow, set_inputs

__version__ = "0.1.0"

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
    "set_inputs",
    "__version__",
]
