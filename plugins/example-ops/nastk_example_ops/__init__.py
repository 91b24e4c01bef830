"""Example nastk plugin: one extra cell op, registered as ``example.dwconv3x3x3`` in ``nastk.ops``."""

from nastk_example_ops.ops import dwconv3x3x3

__all__ = ["dwconv3x3x3"]
