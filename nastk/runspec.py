"""Where a run directory records the specs it ran with (``--set`` overrides included).

* ``RUN/search/spec.yaml``: the search's spec; ``nastk decode`` reads it.
* ``RUN/retrain/fold_K/spec.yaml``: the spec fold K was retrained with.
* ``RUN/spec.yaml``: the spec of the networks in the run, which predict, report and export read: the
  last retraining's once one ran here, the search's before. A retraining with other ``--set``s than the
  search therefore leaves a truthful record, and ``--resume`` hints that name RUN/spec.yaml name the
  spec the checkpoint was made with.
"""

from __future__ import annotations

from pathlib import Path

from nastk.io import atomic_write_text
from nastk.spec import Spec, dump_spec

SPEC_FILE = "spec.yaml"


def search_spec_path(run: Path) -> Path:
    """The spec RUN's search ran with: RUN/search/spec.yaml, else RUN/spec.yaml (runs from before the
    search kept its own copy, whose RUN/spec.yaml no retraining replaced)."""
    kept = Path(run) / "search" / SPEC_FILE
    return kept if kept.is_file() else Path(run) / SPEC_FILE


def record_search_spec(run: Path, spec: Spec) -> None:
    """The search's spec in RUN/search/, and as RUN/spec.yaml unless a retraining already recorded its own
    there (a search resumed after retraining must not replace the networks' spec)."""
    run = Path(run)
    text = dump_spec(spec)
    if not any((run / "retrain").glob(f"fold_*/{SPEC_FILE}")):
        atomic_write_text(run / SPEC_FILE, text)
    atomic_write_text(run / "search" / SPEC_FILE, text)


def record_retrain_spec(run: Path, fold: int, spec: Spec) -> None:
    """The spec fold ``fold`` retrains with, in its folder and as RUN/spec.yaml; a search's RUN/spec.yaml
    that has no copy in RUN/search/ yet (a run from before it was kept there) is moved there first."""
    run = Path(run)
    current, kept = run / SPEC_FILE, run / "search" / SPEC_FILE
    if (run / "search").is_dir() and current.is_file() and not kept.is_file():
        atomic_write_text(kept, current.read_text())
    text = dump_spec(spec)
    atomic_write_text(run / "retrain" / f"fold_{fold}" / SPEC_FILE, text)
    if not current.is_file() or current.read_text() != text:
        atomic_write_text(current, text)
