import os
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


@pytest.fixture(autouse=True, scope="session")
def _no_shared_cache():
    """A user's $NASTK_CACHE must not receive (or serve) the tests' caches."""
    saved = os.environ.pop("NASTK_CACHE", None)
    yield
    if saved is not None:
        os.environ["NASTK_CACHE"] = saved


def run_cli(*args, cwd=None):
    """Run ``python -m nastk`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "nastk", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def cli_in_process(capfd, *args) -> tuple[int, str, str]:
    """Run ``nastk.cli.main`` in this process (fast): its exit code, stdout and stderr."""
    from nastk.cli import main

    capfd.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def retrained(tmp_path_factory):
    """(tmp, synthetic task, run): a tiny search and both folds retrained, each with its out-of-fold
    predictions, and postprocessing.json. Shared by the predict and cross-validation tests: copy the run
    before changing it."""
    from test_engine import tiny_spec

    from nastk.data.synthetic import write_synthetic_task
    from nastk.engine.options import RunOptions
    from nastk.engine.retrain import run_retrain
    from nastk.engine.search import run_search

    tmp = tmp_path_factory.mktemp("pred")
    root = write_synthetic_task(tmp / "Synth", cases=4, size=24, test_cases=2)
    _, spec = tiny_spec(tmp, root, **{"retrain.iters": 4, "retrain.val_every": 100})
    run = tmp / "run"
    run_search(spec, RunOptions(out=run, quiet=True))
    run_retrain(spec, run / "arch.json", "all", RunOptions(out=run, quiet=True))
    return tmp, root, run
