"""Kept for imports written before the planner moved: ``Batch`` and ``plan_threshold`` live
in :mod:`comfy_cluster.planner`."""

from .planner import Batch, plan_threshold

__all__ = ["Batch", "plan_threshold"]
