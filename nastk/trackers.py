"""Where a run's log rows go besides its CSV: nowhere (the default), TensorBoard or MLflow.

The CSV is always written (:class:`nastk.engine.common.CsvLog`); a tracker receives the same rows, with the
iteration as their step, and pictures such as the decoded architecture. TensorBoard and MLflow are optional
extras (``pip install nastk[tensorboard]``, ``nastk[mlflow]``), imported only when chosen.

* ``tensorboard``: event files in ``RUN/tensorboard/<stage>`` (``search``, ``fold_K``);
* ``mlflow``: one MLflow run per stage in the experiment named after the spec, at ``MLFLOW_TRACKING_URI``
  when it is set and in ``RUN/mlruns`` (a file store: ``mlflow ui --backend-store-uri RUN/mlruns``)
  otherwise. A resumed stage continues its MLflow run,
  whose id is kept in the stage's folder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nastk.errors import DataError
from nastk.io import atomic_write_text

LOGGERS = ("csv", "tensorboard", "mlflow")
MLFLOW_RUN_ID_FILE = "mlflow_run_id.txt"


@runtime_checkable
class Tracker(Protocol):
    def log_row(self, row: Mapping[str, Any], step: int) -> None: ...

    def log_image(self, name: str, png: Path, step: int) -> None: ...

    def close(self, ok: bool = True) -> None: ...


class NullTracker:
    """The default: the CSV alone."""

    def log_row(self, row: Mapping[str, Any], step: int) -> None:
        pass

    def log_image(self, name: str, png: Path, step: int) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


def numeric_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's finite numbers by column (trackers plot numbers; ``phase`` and empty cells are left out);
    ``iteration`` is the step, not a value."""
    values = {}
    for key, value in row.items():
        if key == "iteration" or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            values[key] = number
    return values


def check_logger(kind: str) -> None:
    """Refuse an unknown tracker, or one whose extra is not installed, before a run does any work."""
    import importlib.util

    if kind not in LOGGERS:
        raise DataError(f"--logger: {kind!r} is not one of {', '.join(LOGGERS)}")
    if kind != "csv" and importlib.util.find_spec(kind) is None:
        raise _missing_extra(kind)


def _missing_extra(name: str) -> DataError:
    return DataError(f"--logger {name}: {name} is not installed; pip install 'nastk[{name}]'")


class TensorBoardTracker:
    """Scalars and images in a TensorBoard log directory."""

    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing_extra("tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log_row(self, row: Mapping[str, Any], step: int) -> None:
        for key, value in numeric_values(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a run is watched while it runs

    def log_image(self, name: str, png: Path, step: int) -> None:
        from matplotlib.image import imread

        pixels = imread(png)[..., :3]  # RGBA -> RGB
        self.writer.add_image(name, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self, ok: bool = True) -> None:
        self.writer.close()


class MlflowTracker:
    """Metrics and artifacts of one MLflow run, through the client API (no global active run)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id_file: Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing_extra("mlflow") from None
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = (
                self._resumed_run(run_id_file)
                or self.client.create_run(experiment_id, run_name=run_name).info.run_id
            )
        except Exception as exc:  # MLflow's errors are long; the run has not started, so one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"--logger mlflow: tracking URI {tracking_uri}: {first}") from None
        atomic_write_text(run_id_file, self.run_id + "\n")

    def _resumed_run(self, run_id_file: Path) -> str | None:
        if not run_id_file.is_file():
            return None
        run_id = run_id_file.read_text().strip()
        try:
            self.client.get_run(run_id)
        except Exception:  # another store, or a deleted run: start a new one
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_row(self, row: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in numeric_values(row).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, name: str, png: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(png), artifact_path=f"{name}/iteration_{step}")

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def mlflow_tracking_uri(run: Path) -> str:
    """``MLFLOW_TRACKING_URI`` where the user set one, else a file store inside the run directory.

    MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set; the default store is allowed
    here (a user who set the variable keeps their choice), since a database store needs SQLAlchemy.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path(run).resolve().joinpath("mlruns").as_uri()


def open_tracker(kind: str, run: Path, stage: str, stage_dir: Path, experiment: str) -> Tracker:
    """The tracker ``kind`` (one of :data:`LOGGERS`) for one stage of a run (``search`` or ``fold_K``)."""
    if kind == "csv":
        return NullTracker()
    if kind == "tensorboard":
        return TensorBoardTracker(Path(run) / "tensorboard" / stage)
    if kind == "mlflow":
        return MlflowTracker(
            mlflow_tracking_uri(run), experiment, stage, Path(stage_dir) / MLFLOW_RUN_ID_FILE
        )
    raise DataError(f"--logger: {kind!r} is not one of {', '.join(LOGGERS)}")


@contextmanager
def tracking(
    kind: str, run: Path, stage: str, stage_dir: Path, experiment: str, main: bool
) -> Iterator[Tracker]:
    """:func:`open_tracker` on the main rank (the others send nothing), closed when the stage ends; a stage
    that fails closes it as failed (MLflow shows the run as FAILED)."""
    tracker = open_tracker(kind, run, stage, stage_dir, experiment) if main else NullTracker()
    try:
        yield tracker
    except BaseException:
        tracker.close(ok=False)
        raise
    tracker.close()
