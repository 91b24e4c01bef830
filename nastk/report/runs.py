"""What each run directory contributes to a report, at every stage it reached, and what it skipped."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nastk import provenance, registry
from nastk.crossval import choose, chosen_scores, fold_status, read_splits, score_folds
from nastk.data.dataset import DatasetInfo, images_by_name, read_dataset
from nastk.errors import DataError, one_line
from nastk.network import architecture_from_model
from nastk.protocols import SearchSpace
from nastk.report.cv import postprocessing_label
from nastk.report.figures import GapRun
from nastk.report.scoring import DEFAULT_TOLERANCE_MM, check_tolerance_classes, evaluate_folder, references
from nastk.runspec import search_spec_path
from nastk.spec import Spec, load_spec


def _spec_of(run: Path, path: Path | None = None) -> Spec:
    """RUN/spec.yaml (the networks' spec), or the spec at ``path`` in RUN."""
    path = path or run / "spec.yaml"
    if not path.is_file():
        raise DataError(f"{run}: not a run directory (no spec.yaml)")
    return load_spec(path)


def _search_spec_of(run: Path) -> Spec:
    """The spec the run's search ran with: its losses tell how its gap G was searched (Fig. 8)."""
    return _spec_of(run, search_spec_path(run))


@dataclass
class _RunParts:
    """Everything one run contributes to a report, computed before anything is written."""

    run: Path
    name: str
    spec: Spec
    info: DatasetInfo | None = None
    arch: object | None = None
    arch_row: dict = field(default_factory=dict)
    cv: pd.DataFrame | None = None
    decision: dict | None = None
    test: pd.DataFrame | None = None
    unlabelled: list[str] = field(default_factory=list)
    gap: GapRun | None = None
    skipped: list[str] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)  # the folds the run recorded with a model_final.pt
    folds: list[dict] = field(default_factory=list)  # what each fold was trained with (its provenance)


def _dataset_of(run: Path, spec: Spec) -> tuple[DatasetInfo | None, str | None]:
    """The run's dataset, or None and why not (a moved run still reports its architecture)."""
    if not spec.dataset.root:
        return None, f"{run / 'spec.yaml'} sets no dataset.root, so there are no reference labels"
    root = Path(spec.dataset.root)
    if not root.exists():
        return None, f"the dataset {root} (dataset.root in {run / 'spec.yaml'}) is not here"
    return read_dataset(root, spec.dataset.format), None


def _tolerances(run: Path, spec: Spec, info: DatasetInfo, tolerances: dict[int, float]) -> dict[int, float]:
    classes = sorted(c for c in info.labels if c > 0)
    source = str(info.root / "dataset.json")
    spec_tol = {int(k): v for k, v in spec.dataset.nsd_tolerance.items()}
    check_tolerance_classes(spec_tol, classes, source, f"{run / 'spec.yaml'}: dataset.nsd_tolerance")
    check_tolerance_classes(tolerances, classes, source, "--tolerance")
    merged = {**spec_tol, **tolerances}
    return {c: merged.get(c, DEFAULT_TOLERANCE_MM) for c in classes}


def _retrain_hint(run: Path, fold: int | str) -> str:
    return (
        f"`nastk retrain {run / 'spec.yaml'} --arch {run / 'arch.json'} --out {run} --fold {fold} --resume`"
    )


def _cross_validation(part: _RunParts, classes: list[int], tol: dict[int, float], quiet: bool) -> None:
    run = part.run
    if not part.trained:
        part.skipped.append(f"cross-validation: no retrained fold in {run / 'retrain'} (run `nastk retrain`)")
        return
    splits = read_splits(run)
    if splits is None:
        part.skipped.append(
            f"cross-validation: no {run / 'splits.json'} (retrained by an older nastk); "
            f"{_retrain_hint(run, 'all')} writes it and the out-of-fold predictions"
        )
        return
    status = fold_status(run, splits)
    for s in status:
        if s.trained and s.missing:
            part.skipped.append(
                f"cross-validation fold {s.fold}: {len(s.missing)} of {len(s.cases)} out-of-fold predictions "
                f"missing, fold left out; {_retrain_hint(run, s.fold)} predicts them"
            )
    untrained = [s.fold for s in status if not s.trained]
    if untrained:
        part.skipped.append(f"cross-validation: fold(s) {untrained} not retrained, left out")
    complete = [s.fold for s in status if s.complete]
    if not complete:
        return
    if part.info is None:
        part.skipped.append(f"cross-validation: {_no_dataset(part)}")
        return
    refs = {c.id: c.label for c in part.info.training}
    part.cv = score_folds(run, splits, complete, refs, classes, tol, nsd=True, quiet=quiet)
    part.decision = choose(part.cv)


def _fold_agreement(part: _RunParts) -> None:
    """A line in the report where the retrained folds were not made alike (the table of folds says how)."""
    records = [(k, provenance.read_record(part.run, k)) for k in part.trained]
    records = [(k, r) for k, r in records if r is not None]
    for k, record in records[1:]:
        problem = provenance.mismatch(records[0][1], record)
        if problem:
            part.skipped.append(
                f"folds {records[0][0]} and {k} were trained with {problem[0]} ({problem[1]}): the "
                "cross-validation table mixes them; see the table of folds"
            )
            return


def _no_dataset(part: _RunParts) -> str:
    return _dataset_of(part.run, part.spec)[1] or "no dataset"


def _test_set(part: _RunParts, classes: list[int], tol: dict[int, float], quiet: bool, missing: str) -> None:
    folder = part.run / "predictions"
    preds = images_by_name(folder) if folder.is_dir() else {}
    if not preds:
        part.skipped.append(f"test set: no predictions in {folder} (run `nastk predict`)")
        return
    if part.info is None:
        part.unlabelled = sorted(preds)
        part.skipped.append(f"test set scores: {_no_dataset(part)}")
        return
    refs, _, _ = references(part.info.root)
    if not set(preds) & set(refs):
        part.unlabelled = sorted(preds)
        part.skipped.append(
            f"test set scores: {part.info.root} has no labels for the {len(preds)} predicted cases"
        )
        return
    part.test = evaluate_folder(folder, part.info.root, classes, tol, quiet, missing)


def _search_part(part: _RunParts) -> None:
    run, spec = part.run, part.spec
    space = registry.load("spaces", spec.space.name)
    arch_file = run / "arch.json"
    trained = [run / "retrain" / f"fold_{k}" / "model_final.pt" for k in part.trained]
    if arch_file.is_file():
        part.arch = space.load_arch(arch_file)
    if trained and isinstance(space, SearchSpace) and not _trained_with(part, arch_file):
        # retrained from an arch.json kept elsewhere, or arch.json decoded again since: the table pairs the
        # folds' scores with the architecture they were trained with
        part.arch = architecture_from_model(trained[0], space)
    if part.arch is None:
        part.skipped.append(f"architecture: no {arch_file} (run `nastk search` or `nastk decode`)")
    log = run / "search" / "log.csv"
    if not (log.is_file() and log.stat().st_size):
        part.skipped.append(f"search curves: no {log} (this run was not searched here)")
    elif _has_gap(log):
        part.gap = _gap_run(part.name, log, _search_spec_of(run))


def _trained_with(part: _RunParts, arch_file: Path) -> bool:
    """Whether ``arch_file`` is the architecture the run's folds were trained with (as far as their
    provenance records say; True for folds without one and an arch.json that exists)."""
    if part.arch is None:
        return False
    records = [r for r in part.folds if r.get("arch")]
    if not records:
        return True
    if provenance.arch_hash(part.arch) == records[0]["arch"]:
        return True
    part.skipped.append(
        f"architecture: {arch_file} is not what the retrained folds were trained with "
        f"({provenance.record_path(part.run, records[0]['fold'])}: {records[0].get('arch_file')}); "
        "the table shows the folds' architecture"
    )
    return False


def fold_rows(run: Path) -> list[dict]:
    """What each fold that began retraining was trained with: the hashes of its settings, architecture,
    plan, folds and data (its provenance record), and a note where folds differ."""
    rows = []
    for k in provenance.started_folds(run):
        record = provenance.read_record(run, k)
        if record is None:
            rows.append({"fold": k, "spec": "(no record: trained by an older nastk)"})
            continue
        rows.append(
            {
                "fold": k,
                "spec": record["spec"],
                "arch": record["arch"],
                "arch_file": record.get("arch_file"),
                "plan": record["plan"],
                "spacing": record.get("plan_settings", {}).get("plan.spacing"),
                "splits": record["splits"],
                "dataset": record.get("dataset"),
            }
        )
    return rows


def _run_names(runs: list[Path]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names.append(run.name if run.name not in names else str(run))
    return names


def _has_gap(log: Path) -> bool:
    if not (log.is_file() and log.stat().st_size > 0):
        return False
    try:
        return "gap" in pd.read_csv(log, nrows=0).columns
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{log}: not a readable search log ({one_line(exc)})") from None


def gap_runs(runs: list[Path]) -> list[GapRun]:
    """The runs with a search log of the gap G, for Fig. 8 (:func:`nastk.report.figures.gap_figure`)."""
    logs = [(run / "search" / "log.csv", name) for run, name in zip(runs, _run_names(runs))]
    return [_gap_run(name, log, _search_spec_of(log.parent.parent)) for log, name in logs if _has_gap(log)]


def _last_logged(table: pd.DataFrame, column: str) -> float | None:
    values = pd.to_numeric(table.get(column, pd.Series(dtype=float)), errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else None


def _gap_run(name: str, log: Path, spec: Spec) -> GapRun:
    """The search's memory constraint as it logged it: ``sigma_eff`` (the sigma it searched at, which a GB
    budget stands for) and ``budget_gb``; neither without a memory constraint."""
    topology = any(loss.name == "topology" and loss.weight > 0 for loss in spec.losses)
    table = pd.read_csv(log)
    return GapRun(name, log, _last_logged(table, "sigma_eff"), topology, _last_logged(table, "budget_gb"))


def architecture_row(part: _RunParts) -> dict:
    """Table 1 for a run: GMACs, parameters, estimated and measured retraining memory, and the
    cross-validation DSC (percent, with the post-processing cross-validation chose)."""
    from nastk.netstats import architecture_stats
    from nastk.setting import spec_budget

    row: dict = {"run": part.name}
    if part.arch is not None:
        stats = architecture_stats(part.spec, part.arch, spec_budget(part.spec))
        stats.pop("path_cost", None)
        row.update(stats)
    peaks = []
    for log in sorted((part.run / "retrain").glob("fold_*/log.csv")):
        with log.open() as fh:
            peaks += [float(x["peak_mem_mb"]) for x in csv.DictReader(fh) if x.get("peak_mem_mb")]
    row["measured_peak_MB"] = max(peaks) if peaks else np.nan
    if part.cv is not None:
        labels = sorted(int(c) for c in part.cv["class"].unique())
        scores = chosen_scores(part.cv, part.decision)
        for i, lab in enumerate(labels, 1):
            row[f"cv_DSC{i}"] = float(scores.loc[scores["class"] == lab, "dsc"].mean()) * 100
        if len(labels) > 1:
            row["cv_DSC avg"] = float(np.nanmean([row[f"cv_DSC{i}"] for i in range(1, len(labels) + 1)]))
        row["cv_folds"] = int(part.cv["fold"].nunique())
        row["cv_postprocessing"] = postprocessing_label(part.decision)
    return row


def _collect(run: Path, name: str, tolerances: dict[int, float], quiet: bool, missing: str) -> _RunParts:
    spec = _spec_of(run)
    part = _RunParts(run, name, spec)
    part.info, _ = _dataset_of(run, spec)
    part.trained = provenance.run_folds(run)
    part.folds = fold_rows(run)
    _fold_agreement(part)
    _search_part(part)
    if part.info is not None:
        classes = sorted(c for c in part.info.labels if c > 0)
        tol = _tolerances(run, spec, part.info, tolerances)
    else:
        classes, tol = list(range(1, spec.dataset.num_classes)), {}
    _cross_validation(part, classes, tol, quiet)
    _test_set(part, classes, tol, quiet, missing)
    part.arch_row = architecture_row(part)
    return part
