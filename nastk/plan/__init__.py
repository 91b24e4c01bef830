"""``nastk plan``: plan a complete spec from a dataset's fingerprint and a GPU."""

from nastk.plan.planner import Plan, make_plan
from nastk.plan.render import render, write_plan

__all__ = ["Plan", "make_plan", "render", "write_plan"]
