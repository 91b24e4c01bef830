"""The knobs of runs that survive restarts, each shown to change the outcome: --auto-resume (start or
continue; a finished run is left alone), SIGTERM/SIGUSR1 (checkpoint, exit 75), checkpoint_minutes (a
wall-clock cadence). One process, in this process where it can be; the torchrun scenarios are in
test_restarts.py."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from test_engine import tiny_spec

from nastk import checkpoint as ckpt
from nastk.engine import distributed as dd
from nastk.engine.loop import Loop, StepResult
from nastk.engine.stop import stop_requests
from nastk.errors import PREEMPTED_EXIT_CODE, Preempted
from nastk.progress import Reporter

from conftest import cli_in_process


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread in these in-process runs (--threads 1): fast on a shared two-core machine; the
    thread settings are put back for the tests that follow."""
    from nastk import threads

    n, chosen = torch.get_num_threads(), threads._chosen_by_nastk
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    threads._chosen_by_nastk = chosen


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from nastk.data.synthetic import write_synthetic_task

    folder = tmp_path_factory.mktemp("data")
    root = write_synthetic_task(folder / "Synth", cases=4, size=24, test_cases=1)
    SHARED_CACHE[:] = [str(folder / "cache")]  # preprocessed once for the module's runs
    return root


SHARED_CACHE: list[str] = []


def spec_of(tmp_path, root, **override):
    return tiny_spec(tmp_path, root, **{"dataset.cache_dir": SHARED_CACHE[0], **override})


def _loop(total, checkpoints, *, every=100, minutes=None, stop=None, clock=None, step_hook=None):
    def step(it, log):
        if step_hook is not None:
            step_hook(it)
        return StepResult("train", "")

    loop = Loop(0, total, 1, every, checkpoints.append, None, Reporter(total, 0, False, True, "t"))
    loop.stop, loop.checkpoint_minutes = stop, minutes
    if clock is not None:
        loop.clock = clock
    loop.run(step)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, None])
def test_a_stop_signal_checkpoints_after_the_current_iteration_and_raises(sig):
    saved = []
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def hook(it):
        if it == 3 and sig is not None:
            os.kill(os.getpid(), sig)  # arrives in the middle of iteration 3

    with stop_requests() as stop:
        if sig is None:
            _loop(10, saved, stop=stop, step_hook=hook)
        else:
            with pytest.raises(Preempted, match=f"stopped by {sig.name} after iteration 4 of 10"):
                _loop(10, saved, stop=stop, step_hook=hook)
    assert saved == ([10] if sig is None else [4])  # unscheduled checkpoint at the stop, then no more
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are put back


def test_checkpoint_minutes_adds_a_wall_clock_cadence():
    now = [0.0]

    def hook(it):
        now[0] = 20.0 * (it + 1)  # each iteration takes 20 s

    timed, plain = [], []
    _loop(10, timed, every=4, minutes=1.0, clock=lambda: now[0], step_hook=hook)
    now[0] = 0.0
    _loop(10, plain, every=4, clock=lambda: now[0], step_hook=hook)
    assert plain == [4, 8, 10]
    # 60 s after the last checkpoint (any kind): after iteration 3 (60 s), 4 (scheduled), 7 (140 s), 8, 10
    assert timed == [3, 4, 7, 8, 10]


def test_one_process_agrees_with_itself():
    one = dd.Dist(0, 1, 0, torch.device("cpu"))
    assert dd.any_flags([True, False], one) == [True, False] and dd.from_main("x", one) == "x"


def test_checkpoint_minutes_is_not_part_of_the_spec_hash(tmp_path, synth):
    _, spec = spec_of(tmp_path, synth)
    _, other = spec_of(tmp_path, synth, **{"search.checkpoint_minutes": 5, "retrain.checkpoint_minutes": 2})
    _, changed = spec_of(tmp_path, synth, **{"search.checkpoint_every": 3})
    assert other.search.checkpoint_minutes == 5
    assert ckpt.spec_hash(spec) == ckpt.spec_hash(other) != ckpt.spec_hash(changed)


def test_checkpoint_minutes_reaches_the_search_loop(tmp_path, synth, monkeypatch):
    from nastk.engine import search
    from nastk.engine.options import RunOptions

    saved = []
    original = search.save_checkpoint
    monkeypatch.setattr(search, "save_checkpoint", lambda *a: saved.append(a[-1]) or original(*a))
    _, spec = spec_of(tmp_path, synth, **{"search.checkpoint_every": 100, "search.checkpoint_minutes": 1e-9})
    search.run_search(spec, RunOptions(out=tmp_path / "run", quiet=True))
    assert saved == list(range(1, 9))  # a checkpoint after every iteration; by count alone only at 8


def _search(capfd, spec, run, *flags):
    return cli_in_process(
        capfd, "search", spec, "--out", run, "--quiet", "--deterministic", "--threads", "1", *flags
    )


def _stop_search_at(monkeypatch, iteration: int, sig=signal.SIGTERM):
    from nastk.engine import search

    original = search.SearchStep.__call__

    def step(self, it, log):
        result = original(self, it, log)
        if it == iteration:
            os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(search.SearchStep, "__call__", step)


def test_auto_resume_starts_continues_and_leaves_a_finished_search_alone(tmp_path, synth, capfd, monkeypatch):
    spec, _ = spec_of(tmp_path, synth, **{"search.checkpoint_every": 100, "search.joint_iters": 8})
    run = tmp_path / "run"
    # --resume is strict: nothing to resume; both flags at once are refused
    code, _, err = _search(capfd, spec, run, "--resume")
    assert code == 2 and "nothing to resume" in err and not run.exists()
    code, _, err = _search(capfd, spec, run, "--resume", "--auto-resume")
    assert code == 2 and err.startswith("error: --resume and --auto-resume") and not run.exists()
    # SIGUSR1 during iteration 5: a checkpoint after it (none is scheduled before the end), exit 75
    with monkeypatch.context() as patch:
        _stop_search_at(patch, 5, signal.SIGUSR1)
        code, _, err = _search(capfd, spec, run, "--auto-resume")
    assert code == PREEMPTED_EXIT_CODE, err
    assert err.strip().startswith("stopped by SIGUSR1 after iteration 6 of 12")
    assert torch.load(run / "search" / "checkpoint.pt", weights_only=True)["iteration"] == 6
    assert not (run / "arch.json").exists()
    log = (run / "log.txt").read_text()
    assert "--auto-resume: no checkpoint" in log and "stopped by SIGUSR1 after iteration 6" in log
    # without --auto-resume (or --resume) the same command refuses to touch the run
    code, _, err = _search(capfd, spec, run)
    assert code == 2 and "--auto-resume" in err
    # the same command continues (to the uninterrupted result: test_restarts.py)
    assert _search(capfd, spec, run, "--auto-resume")[0] == 0
    assert "search resumed at iteration 6 of 12" in (run / "log.txt").read_text()
    # started again once finished: nothing written, exit 0 (--resume instead rewrites and decodes again)
    before = {p: p.stat().st_mtime_ns for p in (run / "search").iterdir()} | {
        run / "arch.json": (run / "arch.json").stat().st_mtime_ns
    }
    code, _, _ = _search(capfd, spec, run, "--auto-resume")
    assert code == 0 and {p: p.stat().st_mtime_ns for p in before} == before
    assert "is finished (iteration 12 of 12); nothing to do" in (run / "log.txt").read_text()
    assert _search(capfd, spec, run, "--resume")[0] == 0
    assert (run / "arch.json").stat().st_mtime_ns != before[run / "arch.json"]
    # a checkpoint of another spec is still refused
    other, _ = spec_of(tmp_path, synth, **{"search.checkpoint_every": 100, "search.joint_iters": 9})
    code, _, err = _search(capfd, other, run, "--auto-resume")
    assert code == 2 and "spec changed" in err


def test_a_signal_in_a_fold_s_last_steps_stops_before_the_next_fold(retrained, tmp_path, capfd):
    from nastk.engine import retrain
    from nastk.spec import load_spec

    tmp, _, shared = retrained
    spec = tmp / "spec.yaml"
    parsed = load_spec(spec)
    run = tmp_path / "r"
    run.mkdir()
    shutil.copy(shared / "arch.json", run / "arch.json")
    total = parsed.retrain.warmup_iters + parsed.retrain.iters
    original = retrain.RetrainStep.__call__

    def step(self, it, log):
        result = original(self, it, log)
        if self.fold == 0 and it == total - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    args = (
        "retrain",
        spec,
        "--arch",
        run / "arch.json",
        "--fold",
        "all",
        "--quiet",
        "--auto-resume",
        "--threads",
        "1",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(retrain.RetrainStep, "__call__", step)
        code, _, err = cli_in_process(capfd, *args)
    assert code == PREEMPTED_EXIT_CODE and "after fold 0" in err
    assert (run / "retrain" / "fold_0" / "model_final.pt").is_file()
    assert list((run / "retrain" / "fold_0" / "validation").glob("*.nii.gz"))  # out-of-fold done
    assert not (run / "retrain" / "fold_1").exists() and not (run / "postprocessing.json").exists()
    final0 = (run / "retrain" / "fold_0" / "model_final.pt").stat().st_mtime_ns
    assert cli_in_process(capfd, *args)[0] == 0
    assert (run / "retrain" / "fold_0" / "model_final.pt").stat().st_mtime_ns == final0  # skipped
    assert (run / "retrain" / "fold_1" / "model_final.pt").is_file() and (
        run / "postprocessing.json"
    ).is_file()
    log = (run / "log.txt").read_text()
    assert "retrain fold 0 is already trained" in log and "--auto-resume: no checkpoint in" in log
    # started again once finished: exit 0, no model or prediction written again
    written = {p: p.stat().st_mtime_ns for p in (run / "retrain").rglob("*") if p.suffix in (".pt", ".gz")}
    assert cli_in_process(capfd, *args)[0] == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_predict_auto_resume_skips_what_is_written(retrained, tmp_path, capfd):
    _, root, shared = retrained
    run = tmp_path / "run"
    shutil.copytree(shared, run)
    out = tmp_path / "pred"
    args = ("predict", run, "--input", root / "dataset.json", "--output", out, "--quiet", "--threads", "1")
    assert cli_in_process(capfd, *args, "--auto-resume")[0] == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert len(first) == 2
    missing = sorted(first)[0]
    (out / missing).unlink()
    assert cli_in_process(capfd, *args, "--auto-resume")[0] == 0
    again = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert again.keys() == first.keys()
    assert [n for n in again if again[n] != first[n]] == [missing]  # only the missing one written
    assert cli_in_process(capfd, *args)[0] == 0  # without it: every case predicted again
    assert all(p.stat().st_mtime_ns != again[p.name] for p in out.glob("*.nii.gz"))


def test_cli_exit_code_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "running-at-scale.md").read_text()
    assert f"exit code: {PREEMPTED_EXIT_CODE}" in text.lower() or f"code **{PREEMPTED_EXIT_CODE}**" in text


def test_one_torchrun_agent_s_store_is_scoped_by_restart(monkeypatch):
    from datetime import timedelta

    import torch.distributed as tdist

    server = tdist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10))
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(server.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "GROUP_WORLD_SIZE": "1",
        "TORCHELASTIC_RESTART_COUNT": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = dd.restart_store(0, 2, timedelta(seconds=10))
    store.set("rank_0", "address")
    assert server.get("nastk/attempt_1/rank_0") == b"address"  # not what attempt 0 wrote
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # several agents count restarts each: torchrun's store
    assert dd.restart_store(0, 2, timedelta(seconds=10)) is None
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    assert dd.restart_store(0, 2, timedelta(seconds=10)) is None
