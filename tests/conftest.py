import subprocess
import sys

import pytest
import torch

from nastk_dints import ops as dints_ops

PAPER_OPS = ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]


@pytest.fixture
def paper_ops():
    return {name: getattr(dints_ops, name) for name in PAPER_OPS}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def run_cli(*args, cwd=None):
    """Run ``python -m nastk`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "nastk", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
