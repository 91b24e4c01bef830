"""Runs you can watch: time columns in the logs, a fold's progress.png, and --logger tensorboard / mlflow."""

import csv
import math
from pathlib import Path

import pytest
from test_engine import tiny_spec

from nastk.data.synthetic import write_synthetic_task
from nastk.engine.common import CsvLog
from nastk.engine.loop import RunClock, logged_time
from nastk.engine.options import RunOptions
from nastk.engine.retrain import run_retrain
from nastk.engine.search import run_search
from nastk.report.figures import progress_curves, validation_means
from nastk.trackers import NullTracker, Tracker, numeric_values

from conftest import run_cli


def read_rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# ------------------------------------------------------------------------------------------ time columns


def test_clock_counts_seconds_per_iteration_since_the_previous_row():
    now = FakeTime()
    clock = RunClock(offset=0.0, first_iteration=0, now=now)
    now.now += 2.0
    assert clock.columns(1) == {"time": 2.0, "s_per_it": 1.0}  # iterations 0 and 1
    now.now += 3.0
    assert clock.columns(4) == {"time": 5.0, "s_per_it": 1.0}


def test_a_resumed_clock_continues_from_the_last_logged_time(tmp_path):
    log = CsvLog(tmp_path / "log.csv", resume_from=None)
    log.append({"iteration": 0, "time": 1.5, "s_per_it": 1.5})
    log.append({"iteration": 1, "time": 3.0, "s_per_it": 1.5})
    log.append({"iteration": 2, "time": 4.5, "s_per_it": 1.5})
    resumed = CsvLog(tmp_path / "log.csv", resume_from=1)  # the checkpoint was after iteration 1
    assert logged_time(resumed) == 3.0
    now = FakeTime()
    clock = RunClock(logged_time(resumed), first_iteration=2, now=now)
    now.now += 0.5
    assert clock.columns(2) == {"time": 3.5, "s_per_it": 0.5}


def test_logs_from_before_the_time_column_resume_from_zero(tmp_path):
    log = CsvLog(tmp_path / "log.csv", resume_from=None)
    log.append({"iteration": 0, "L_seg": 1.0})
    assert logged_time(CsvLog(tmp_path / "log.csv", resume_from=0)) == 0.0
    assert logged_time(None) == 0.0


def test_trackers_get_the_finite_numbers_of_a_row():
    row = {"iteration": 3, "phase": "joint", "lr": "0.1", "L_seg": 0.5, "gap": "", "train_dice": math.nan}
    assert numeric_values(row) == {"lr": 0.1, "L_seg": 0.5}
    assert isinstance(NullTracker(), Tracker)


# ------------------------------------------------------------------------------------------ progress.png


def test_progress_figure_from_rows_with_gaps(tmp_path):
    log = [
        {"iteration": i, "lr": 0.1 / (i + 1), "L_seg": 1 / (i + 1), "train_dice": 0.1 * i, "s_per_it": 0.2}
        for i in range(6)
    ]
    log[2]["train_dice"] = ""  # nan batch Dice: a gap
    val = [
        {"iteration": 3, "case": "a", "class": 1, "dice": 0.5},
        {"iteration": 3, "case": "a", "class": 2, "dice": "nan"},
        {"iteration": 5, "case": "a", "class": 1, "dice": 0.7},
        {"iteration": 5, "case": "a", "class": 2, "dice": 0.9},
    ]
    iterations, means = validation_means(val)
    assert list(iterations) == [3, 5] and means[0] == pytest.approx(0.5) and means[1] == pytest.approx(0.8)
    png = progress_curves(log, val, tmp_path / "progress.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    progress_curves(log[:1], [], tmp_path / "first.png")  # before the first validation


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    import test_engine

    root = write_synthetic_task(tmp_path_factory.mktemp("data") / "Synth", cases=6, size=24, test_cases=1)
    test_engine.TINY_ROOT[:] = [root]
    return root


def _assert_time_columns(rows, count):
    assert len(rows) == count
    times = [float(r["time"]) for r in rows]
    assert all(b >= a for a, b in zip(times, times[1:])) and times[0] >= 0
    assert all(float(r["s_per_it"]) >= 0 for r in rows)


def test_search_logs_time_and_sends_rows_and_architecture_to_tensorboard(tmp_path, synth):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, _ = tiny_spec(tmp_path, synth)
    res = run_cli("search", path, "--out", tmp_path / "run", "--quiet", "--logger", "tensorboard")
    assert res.returncode == 0, res.stderr
    rows = read_rows(tmp_path / "run" / "search" / "log.csv")
    _assert_time_columns(rows, 8)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "search"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"L_seg", "lr", "train_dice", "time", "s_per_it"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("L_seg")] == [int(r["iteration"]) for r in rows]
    assert [e.value for e in events.Scalars("L_seg")] == pytest.approx(
        [float(r["L_seg"]) for r in rows], rel=1e-5
    )
    assert "architecture" in tags["images"]


def test_retrain_writes_progress_and_sends_rows_to_mlflow(tmp_path, synth, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()  # a file store: nothing leaves the machine
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
    _, spec = tiny_spec(tmp_path, synth)
    run_search(spec, RunOptions(out=tmp_path / "run", quiet=True, logger="mlflow"))
    run_retrain(
        spec,
        tmp_path / "run" / "arch.json",
        "0",
        RunOptions(out=tmp_path / "run", quiet=True, logger="mlflow"),
    )
    fold = tmp_path / "run" / "retrain" / "fold_0"
    assert (fold / "progress.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_rows(fold / "log.csv")
    _assert_time_columns(rows, 8)

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(spec.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"search", "fold_0"}
    history = client.get_metric_history(runs["fold_0"].info.run_id, "L_seg")
    assert [m.step for m in history] == [int(r["iteration"]) for r in rows]
    assert [m.value for m in history] == pytest.approx([float(r["L_seg"]) for r in rows], rel=1e-5)
    validations = client.get_metric_history(runs["fold_0"].info.run_id, "val_dice")
    assert [m.step for m in validations] == [3, 7]  # val_every 4, and the last iteration
    artifacts = [a.path for a in client.list_artifacts(runs["search"].info.run_id, "architecture")]
    assert artifacts, "the decoded architecture's picture"
    assert runs["fold_0"].info.status == "FINISHED"
    assert (fold / "mlflow_run_id.txt").read_text().strip() == runs["fold_0"].info.run_id


def test_unknown_logger_is_a_usage_error_before_any_work(tmp_path, synth):
    path, _ = tiny_spec(tmp_path, synth)
    res = run_cli("search", path, "--out", tmp_path / "run", "--logger", "wandb")
    assert res.returncode == 2  # typer's usage error, in a box that wraps: compared word by word
    words = " ".join(res.stderr.replace("│", " ").split())
    assert "--logger" in words and "'wandb' is not one of 'csv', 'tensorboard', 'mlflow'" in words
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_csv_is_the_default_and_needs_no_extra(tmp_path, synth):
    _, spec = tiny_spec(tmp_path, synth, **{"search.joint_iters": 1})
    run_search(spec, RunOptions(out=tmp_path / "run", quiet=True))
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "mlruns").exists()
    _assert_time_columns(read_rows(tmp_path / "run" / "search" / "log.csv"), 5)
    assert Path(tmp_path / "run" / "arch.json").is_file()


def test_mlflow_defaults_to_a_file_store_in_the_run(tmp_path, synth, monkeypatch):
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):  # set, then unset: restored after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    _, spec = tiny_spec(tmp_path, synth, **{"search.joint_iters": 1})
    run_search(spec, RunOptions(out=tmp_path / "run", quiet=True, logger="mlflow"))
    assert (tmp_path / "run" / "search" / "mlflow_run_id.txt").is_file()
    assert any((tmp_path / "run" / "mlruns").iterdir())


def test_a_logger_whose_extra_is_missing_is_refused_with_the_install_line(monkeypatch):
    import importlib.util

    from nastk.errors import DataError
    from nastk.trackers import check_logger

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    check_logger("csv")  # needs nothing
    with pytest.raises(
        DataError, match=r"--logger mlflow: mlflow is not installed; pip install 'nastk\[mlflow\]'"
    ):
        check_logger("mlflow")


def test_a_failed_stage_closes_its_tracker_as_failed(monkeypatch, tmp_path):
    import nastk.trackers as trackers

    closed = []

    class Recorder(NullTracker):
        def close(self, ok: bool = True) -> None:
            closed.append(ok)

    monkeypatch.setattr(trackers, "open_tracker", lambda *args: Recorder())
    with trackers.tracking("mlflow", tmp_path, "search", tmp_path, "x", main=True):
        pass
    with (
        pytest.raises(RuntimeError),
        trackers.tracking("mlflow", tmp_path, "search", tmp_path, "x", main=True),
    ):
        raise RuntimeError("killed")
    with trackers.tracking("mlflow", tmp_path, "search", tmp_path, "x", main=False) as other_rank:
        assert type(other_rank) is NullTracker
    assert closed == [True, False]
