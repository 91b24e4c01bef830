"""Runs that survive their cluster: real torchrun (2 gloo processes, --max-restarts 2) restarting the one
documented command line (docs/running-at-scale.md) after a worker is SIGKILLed, after SIGTERM to the agent,
and after a kill during a checkpoint write; the results are bit-identical to an uninterrupted run's, and
the logs have every row once."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nastk.data.synthetic import write_synthetic_task

from tinydata import TINY_SPEC

DOCS = Path(__file__).resolve().parents[1] / "docs" / "running-at-scale.md"
# The one command line per job, for the first launch and every restart: the docs show exactly these.
SEARCH_LINE = (
    'torchrun --standalone --nproc_per_node "$NPROC" --max-restarts 2 '
    '-m nastk search "$SPEC" --out "$RUN" --auto-resume --deterministic'
)
RETRAIN_LINE = (
    'torchrun --standalone --nproc_per_node "$NPROC" --max-restarts 2 '
    '-m nastk retrain "$SPEC" --arch "$RUN/arch.json" --fold all --auto-resume --deterministic'
)
TOTAL, EVERY = 40, 16  # search iterations; scheduled checkpoints at 16, 32 and 40

# Loaded by every process of a run (PYTHONPATH) where NASTK_TEST_KILL_AT is set: the N-th checkpoint write
# of a process writes half the file to its temporary and SIGKILLs the process, once (a marker file says so).
KILL_IN_WRITE = """
import os
if os.environ.get("NASTK_TEST_KILL_AT"):
    import signal
    from pathlib import Path
    import nastk.io as nio

    _real, _count = nio.atomic_write_bytes, [0]

    def _write(path, data):
        marker = Path(os.environ["NASTK_TEST_KILL_MARKER"])
        if Path(path).name == "checkpoint.pt":
            _count[0] += 1
            if _count[0] == int(os.environ["NASTK_TEST_KILL_AT"]) and not marker.exists():
                marker.write_text(str(path))
                with nio.atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
        return _real(path, data)

    nio.atomic_write_bytes = _write
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A task, a spec (16^3 patches, 2 layers, 4 filters, 40 search iterations), a `torchrun` on PATH that
    is this interpreter's, and the uninterrupted search run with the documented line."""
    tmp = tmp_path_factory.mktemp("restarts")
    root = write_synthetic_task(tmp / "Synth", cases=6, size=24, test_cases=1)
    data = json.loads(json.dumps(TINY_SPEC))
    data["dataset"].update(root=str(root), cache_dir=str(tmp / "cache"))
    data["space"]["params"]["filters"] = 4
    data["search"].update(
        warmup_iters=4, weight_iters=12, joint_iters=24, milestones=[10], checkpoint_every=EVERY, log_every=1
    )
    data["retrain"].update(warmup_iters=2, iters=10, val_every=12, checkpoint_every=4)
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "torchrun"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    shim.chmod(0o755)
    hooks = tmp / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_IN_WRITE)
    ctx = {"tmp": tmp, "spec": spec, "bin": bin_dir, "hooks": hooks}
    full = tmp / "full"
    assert _launch(ctx, SEARCH_LINE, full).wait(timeout=600) == 0, _output(full)
    ctx["full"] = full
    return ctx


def _env(ctx, run: Path, **extra) -> dict:
    path = os.pathsep.join([str(ctx["hooks"]), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {
        **os.environ,
        "PATH": f"{ctx['bin']}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "NPROC": "2",
        "SPEC": str(ctx["spec"]),
        "RUN": str(run),
        **extra,
    }


def _launch(ctx, line: str, run: Path, **extra) -> subprocess.Popen:
    """The documented line, as a shell runs it (``exec``: the process is torchrun's agent)."""
    run.mkdir(exist_ok=True)
    out = (ctx["tmp"] / f"{run.name}.out").open("ab")
    return subprocess.Popen(
        ["bash", "-c", f"exec {line}"], env=_env(ctx, run, **extra), stdout=out, stderr=out
    )


def _output(run: Path) -> str:
    path = run.parent / f"{run.name}.out"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _wait_rows(proc: subprocess.Popen, path: Path, rows: int) -> None:
    end = time.monotonic() + 300
    while _rows(path) < rows:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path} had {rows} rows"
        assert time.monotonic() < end, f"{path} never had {rows} rows"
        time.sleep(0.02)


def _worker(agent: int, rank: int) -> int:
    """The pid of the agent's worker process of ``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under {agent}")


def _same_search(a: Path, b: Path) -> None:
    assert (a / "search" / "arch_params.npz").read_bytes() == (b / "search" / "arch_params.npz").read_bytes()
    assert (a / "arch.json").read_bytes() == (b / "arch.json").read_bytes()


def _log_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k not in ("time", "s_per_it")} for r in csv.DictReader(fh)]


def _events(run: Path, what: str) -> dict[str, int]:
    """How many times RUN/log.txt says the job started, resumed and finished."""
    text = (run / "log.txt").read_text()
    return {word: text.count(f"{what} {word}") for word in ("started", "resumed", "finished")}


def test_the_docs_show_exactly_the_tested_command_lines():
    text = DOCS.read_text()
    assert SEARCH_LINE in text and RETRAIN_LINE in text


def test_search_with_a_worker_killed_halfway_restarts_and_is_bit_identical(setup):
    run = setup["tmp"] / "killed"
    agent = _launch(setup, SEARCH_LINE, run)
    _wait_rows(agent, run / "search" / "log.csv", TOTAL // 2)
    os.kill(_worker(agent.pid, 1), signal.SIGKILL)
    assert agent.wait(timeout=600) == 0, _output(run)
    _same_search(setup["full"], run)
    # every row once, as uninterrupted; the human log says what happened, each event once
    assert _log_rows(run / "search" / "log.csv") == _log_rows(setup["full"] / "search" / "log.csv")
    assert [int(r["iteration"]) for r in _log_rows(run / "search" / "log.csv")] == list(range(TOTAL))
    assert _events(run, "search") == {"started": 1, "resumed": 1, "finished": 1}
    assert f"search resumed at iteration {EVERY} of {TOTAL}" in (run / "log.txt").read_text()


def _stopped_at(run: Path) -> int:
    return torch.load(run / "search" / "checkpoint.pt", weights_only=True)["iteration"]


def test_sigterm_checkpoints_on_every_rank_after_one_agreed_iteration_and_the_same_line_finishes(setup):
    run = setup["tmp"] / "terminated"
    log_csv = run / "search" / "log.csv"
    agent = _launch(setup, SEARCH_LINE, run)
    # SIGTERM to rank 1 alone: rank 0 never gets a signal, yet both stop after the same iteration, with
    # a checkpoint; torchrun sees its workers fail (exit 75) and restarts the group, which continues
    _wait_rows(agent, log_csv, EVERY + 2)
    os.kill(_worker(agent.pid, 1), signal.SIGTERM)
    end = time.monotonic() + 300
    while "resumed at iteration" not in (run / "log.txt").read_text():
        assert agent.poll() is None and time.monotonic() < end, _output(run)
        time.sleep(0.02)
    first = _stopped_at(run)
    assert EVERY + 2 <= first < 2 * EVERY  # not a scheduled checkpoint (16, 32, 40)
    log = (run / "log.txt").read_text()
    assert f"stopped by a signal on another rank after iteration {first} of {TOTAL}" in log  # rank 0's line
    assert f"search resumed at iteration {first} of {TOTAL}" in log
    # then SIGTERM to the torchrun agent, which passes it to both workers and ends
    _wait_rows(agent, log_csv, first + 2)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=600) != 0  # torchrun reports the signal (the workers' exit 75: test_stop.py)
    second = _stopped_at(run)
    assert first + 2 <= second < TOTAL and second % EVERY != 0  # newer than the last scheduled one
    assert f"stopped by SIGTERM after iteration {second} of {TOTAL}" in (run / "log.txt").read_text()
    stops = [
        line
        for line in _output(run).splitlines()
        if line.startswith(f"stopped by SIGTERM after iteration {second}")
    ]
    assert len(stops) == 2  # each rank stopped, after the same iteration
    assert [int(r["iteration"]) for r in _log_rows(log_csv)] == list(range(second))
    # the same line again finishes the run, bit-identical to the uninterrupted one
    again = _launch(setup, SEARCH_LINE, run)
    assert again.wait(timeout=600) == 0, _output(run)
    _same_search(setup["full"], run)
    assert _log_rows(log_csv) == _log_rows(setup["full"] / "search" / "log.csv")
    assert f"search resumed at iteration {second} of {TOTAL}" in (run / "log.txt").read_text()
    assert _events(run, "search") == {"started": 1, "resumed": 2, "finished": 1}


def test_a_kill_during_a_checkpoint_write_restarts_from_the_previous_one(setup):
    run = setup["tmp"] / "torn"
    marker = setup["tmp"] / "torn.killed"
    agent = _launch(setup, SEARCH_LINE, run, NASTK_TEST_KILL_AT="2", NASTK_TEST_KILL_MARKER=str(marker))
    assert agent.wait(timeout=600) == 0, _output(run)
    assert marker.read_text() == str(run / "search" / "checkpoint.pt")  # killed writing the 2nd (32)
    log = (run / "log.txt").read_text()
    assert f"search resumed at iteration {EVERY} of {TOTAL}" in log  # the previous good one
    assert _events(run, "search") == {"started": 1, "resumed": 1, "finished": 1}
    assert not [p.name for p in (run / "search").iterdir() if p.name.endswith(".tmp")]  # the torn file went
    _same_search(setup["full"], run)
    assert _log_rows(run / "search" / "log.csv") == _log_rows(setup["full"] / "search" / "log.csv")


def test_retrain_all_folds_killed_in_the_second_fold_gives_the_same_models_and_predictions(setup):
    runs = {}
    for name in ("retrain_full", "retrain_killed"):
        runs[name] = setup["tmp"] / name
        runs[name].mkdir()
        shutil.copy(setup["full"] / "arch.json", runs[name] / "arch.json")
    full, run = runs["retrain_full"], runs["retrain_killed"]
    assert _launch(setup, RETRAIN_LINE, full).wait(timeout=600) == 0, _output(full)
    agent = _launch(setup, RETRAIN_LINE, run)
    _wait_rows(agent, run / "retrain" / "fold_1" / "log.csv", 6)
    os.kill(_worker(agent.pid, 1), signal.SIGKILL)
    assert agent.wait(timeout=600) == 0, _output(run)
    files = sorted(p.relative_to(full) for p in full.rglob("*") if p.is_file())
    compared = [f for f in files if f.suffix in (".pt", ".gz") or f.name == "postprocessing.json"]
    assert any(f.suffix == ".gz" for f in compared) and len([f for f in compared if f.suffix == ".pt"]) == 6
    for name in compared:  # weights, checkpoints, out-of-fold predictions, post-processing: bit-identical
        assert (full / name).read_bytes() == (run / name).read_bytes(), name
    for fold in (0, 1):
        logged = [int(r["iteration"]) for r in _log_rows(run / "retrain" / f"fold_{fold}" / "log.csv")]
        assert logged == list(range(12))
    text = (run / "log.txt").read_text()
    assert text.count("retrain fold 0 started") == 1 and "retrain fold 0 is already trained" in text
    assert text.count("retrain fold 1 started") == 1 and text.count("retrain fold 1 resumed") == 1
    assert text.count("retrain fold 1 finished") == 1
    with np.load(setup["full"] / "search" / "arch_params.npz") as params:
        assert params["edge_logits"].shape[0] == 2  # the searched space really is 2 layers
