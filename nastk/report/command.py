"""``nastk report``: what a run has, at every stage, as tables and figures; and any predictions scored.

For each run directory it writes what the run holds and says what it skipped and why:

* after search: ``architectures.csv`` (Table 1's columns: GMACs, parameters, estimated training memory at
  the retraining setting), ``arch.png``, ``search_curves.png``;
* after retraining: the cross-validation table from the out-of-fold predictions against the original
  labels (:mod:`nastk.report.cv`), whose chosen-post-processing DSC also fills ``architectures.csv``;
* after predict, with labels: the test leaderboard (Table 2's layout, :mod:`nastk.report.leaderboard`);
  without labels: the list of predicted cases;
* with several runs: every run's gap G in one figure (Fig. 8), the runs ranked side by side.

Everything is computed before anything is written, so a bad input leaves no half-written report.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nastk import checkpoint as ckpt
from nastk import registry
from nastk.crossval import choose, chosen_scores, fold_status, read_splits, score_folds
from nastk.data.dataset import DatasetInfo, images_by_name, read_dataset
from nastk.errors import DataError, one_line
from nastk.io import atomic_write_text, make_dir
from nastk.metrics import evaluate_files, evaluate_missing
from nastk.metrics.evaluate import label_values
from nastk.progress import track
from nastk.report.cv import cv_leaderboard, postprocessing_label, write_cv
from nastk.report.figures import GapRun, dice_distribution, gap_curves, search_curves
from nastk.report.leaderboard import cases_frame, leaderboard, markdown_table, metric_columns, write_report
from nastk.spec import Spec, load_spec

DEFAULT_TOLERANCE_MM = 1.0


MISSING_POLICIES = ("error", "empty")
SCORED_EMPTY = "missing, scored as empty"


def parse_tolerances(items: list[str]) -> dict[int, float]:
    out = {}
    for item in items:
        try:
            cls, mm = item.split("=")
            label, value = int(cls), float(mm)
        except ValueError:
            raise DataError(f"--tolerance: {item!r} is not CLASS=MM, e.g. 1=2.0") from None
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"--tolerance: {item!r}: the tolerance must be a finite number of mm >= 0")
        out[label] = value
    return out


def check_tolerance_classes(
    tolerances: dict[int, float], classes: list[int], source: str, where: str
) -> None:
    """Every class given a tolerance is a foreground class of the task (``where`` names the option or
    field, ``source`` the file the classes come from)."""
    unknown = sorted(set(tolerances) - set(classes))
    if unknown:
        raise DataError(
            f"{where}: class(es) {unknown} are not foreground classes of {source} "
            f"(classes: {', '.join(map(str, classes)) or 'none'})"
        )


def references(ref: Path) -> tuple[dict[str, Path], dict[int, str], list[set[str]]]:
    """Reference label files by case id: a folder of labels, or a dataset.json (labelsTr, and labelsTs
    when present) with its declared labels; and the groups of cases that are scored together (a
    dataset.json's training cases, its test cases; a folder's files)."""
    if ref.name == "dataset.json" or (ref / "dataset.json").is_file():
        info = read_dataset(ref.parent if ref.name == "dataset.json" else ref)
        refs = {c.id: c.label for c in info.training}
        groups = [set(refs)]
        if (info.root / "labelsTs").is_dir():
            test = images_by_name(info.root / "labelsTs")
            refs.update(test)
            groups.append(set(test))
        return refs, info.labels, groups
    if not ref.is_dir():
        raise DataError(f"{ref}: not a folder of labels or a dataset.json")
    refs = images_by_name(ref)
    return refs, {}, [set(refs)]


def evaluate_folder(
    pred: Path,
    ref: Path,
    classes: list[int],
    tolerances: dict[int, float],
    quiet: bool,
    missing: str = "error",
) -> pd.DataFrame:
    """Scores of every prediction in ``pred``; a ``prediction`` column says which cases had none.

    The cases expected are every reference case of the groups the predictions fall in. Cases without
    a prediction are an error, or with ``missing="empty"`` scored as empty predictions: silently
    ranking over fewer cases would compare methods on different data.
    """
    if not pred.is_dir():
        raise DataError(f"{pred}: predictions folder not found")
    preds = images_by_name(pred)
    if not preds:
        raise DataError(f"{pred}: no predictions")
    refs, _, groups = references(ref)
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise DataError(f"case {extra[0]!r}: no reference label in {ref} ({len(extra)} case(s) missing)")
    expected = set().union(*(g for g in groups if g & set(preds)))
    absent = sorted(expected - set(preds))
    if absent and missing != "empty":
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise DataError(
            f"{pred}: no prediction for {len(absent)} of the {len(expected)} reference cases ({shown}); "
            "predict them, or pass --missing empty to score them as empty predictions"
        )
    rows = []
    tol = {c: tolerances.get(c, DEFAULT_TOLERANCE_MM) for c in classes}
    for case_id in track(sorted(preds), len(preds), "evaluate", quiet):
        scores = evaluate_files(preds[case_id], refs[case_id], classes, tol, case_id)
        rows += [{**r, "prediction": "file"} for r in scores]
    for case_id in absent:
        scores = evaluate_missing(refs[case_id], classes, tol, case_id)
        rows += [{**r, "prediction": SCORED_EMPTY} for r in scores]
    return cases_frame(rows)


def _spec_of(run: Path) -> Spec:
    path = run / "spec.yaml"
    if not path.is_file():
        raise DataError(f"{run}: not a run directory (no spec.yaml)")
    return load_spec(path)


@dataclass
class Report:
    """What ``run_report`` wrote (``paths``), the Markdown it printed (``text``, also ``report.md``) and
    the parts it skipped, each with its reason."""

    out: Path
    paths: dict[str, Path]
    text: str
    skipped: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


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
    if not any((run / "retrain").glob("fold_*/model_final.pt")):
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
    trained = sorted((run / "retrain").glob("fold_*/model_final.pt"))
    if arch_file.is_file():
        part.arch = space.load_arch(arch_file)
    elif trained and hasattr(space, "load_arch_from_text"):  # retrained from an arch.json kept elsewhere
        text = ckpt.load(trained[0], required=("arch",))["arch"]
        try:
            part.arch = space.load_arch_from_text(text)
        except (DataError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{trained[0]}: 'arch' is not a valid architecture ({one_line(exc)})") from None
    else:
        part.skipped.append(f"architecture: no {arch_file} (run `nastk search` or `nastk decode`)")
    log = run / "search" / "log.csv"
    if not (log.is_file() and log.stat().st_size):
        part.skipped.append(f"search curves: no {log} (this run was not searched here)")
    elif _has_gap(log):
        part.gap = _gap_run(part.name, log, spec)


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
    return [_gap_run(name, log, _spec_of(log.parent.parent)) for log, name in logs if _has_gap(log)]


def _gap_run(name: str, log: Path, spec: Spec) -> GapRun:
    memory = next((loss for loss in spec.losses if loss.name == "memory"), None)
    topology = any(loss.name == "topology" and loss.weight > 0 for loss in spec.losses)
    sigma = budget = None
    if memory is not None:
        budget = memory.params.get("budget_gb")
        sigma = memory.params.get("sigma", 0.8 if budget is None else None)
        if budget is not None:  # a GB budget stands for the sigma the search logged
            logged = pd.to_numeric(pd.read_csv(log).get("sigma_eff", pd.Series(dtype=float)), errors="coerce")
            sigma = float(logged.dropna().iloc[-1]) if logged.notna().any() else None
    return GapRun(name, log, None if sigma is None else float(sigma), topology, budget)


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


@dataclass(frozen=True)
class ReportOptions:
    """How `report` runs: NSD tolerances, where it writes, the paper's rows, missing cases."""

    tolerances: dict[int, float] = field(default_factory=dict)  # NSD tolerance in mm by class
    out: Path | None = None  # default: RUN/report for one run, ./report for several, next to --pred
    reference: bool = False  # the paper's rows next to ours
    task: str | None = None  # MSD task name for the paper's rows (default: the dataset's name)
    quiet: bool = False
    missing: str = "error"  # reference cases without a prediction: "error" or "empty"


def run_report(runs: list[Path], pred: Path | None, ref: Path | None, opts: ReportOptions) -> Report:
    tolerances, out, reference, task = opts.tolerances, opts.out, opts.reference, opts.task
    quiet, missing = opts.quiet, opts.missing
    if missing not in MISSING_POLICIES:
        raise DataError(f"--missing: {missing!r} is not one of {', '.join(MISSING_POLICIES)}")
    if pred is not None:
        if runs or ref is None:
            raise DataError("give either RUN directories, or --pred DIR with --ref DIR|dataset.json")
        return _report_folder(pred, ref, tolerances, out, reference, task, quiet, missing)
    if not runs:
        raise DataError("give RUN directories, or --pred DIR with --ref DIR|dataset.json")
    parts = [_collect(run, name, tolerances, quiet, missing) for run, name in zip(runs, _run_names(runs))]
    out = out or (runs[0] / "report" if len(runs) == 1 else Path("report"))
    return _write_runs(parts, out, reference, task)


def _report_folder(pred, ref, tolerances, out, reference, task, quiet, missing) -> Report:
    refs, names, _ = references(ref)
    classes = sorted(c for c in names if c > 0) or _classes_in(pred, refs)
    check_tolerance_classes(tolerances, classes, str(ref) if names else f"{pred} or {ref}", "--tolerance")
    frame = evaluate_folder(pred, ref, classes, tolerances, quiet, missing)
    out = out or pred.parent / "report"
    task = task or (
        read_dataset(ref.parent if ref.name == "dataset.json" else ref).name if names else pred.name
    )
    paths = write_report(out, {pred.name: frame}, task, names, reference=reference)
    paths["dice_png"] = dice_distribution(frame, out / "dice.png", names)
    text = paths["leaderboard_md"].read_text()
    paths["report_md"] = atomic_write_text(out / "report.md", text)
    return Report(out, paths, text)


def _task_of(parts: list[_RunParts], task: str | None) -> str:
    if task:
        return task
    return next((p.info.name for p in parts if p.info is not None), parts[0].name)


def _cv_reference(task: str, labels: list[int]) -> tuple[pd.DataFrame | None, str | None]:
    """Table 1's rows for the cross-validation table (Pancreas only), or None and why not."""
    from nastk.report.paper import TABLE1_SOURCE, TABLE1_TASK, UnknownTaskError, resolve_task, table1_rows

    try:
        known = resolve_task(task)
    except UnknownTaskError:
        known = None
    if known != TABLE1_TASK:
        return None, f"paper rows for cross-validation: Table 1 reports Pancreas only, not {task!r}"
    if len(labels) != 2:
        return None, f"paper rows for cross-validation: Table 1 has 2 classes, this run {len(labels)}"
    cols = ["method", "source", *[c for c in metric_columns(2) if c.startswith("DSC")]]
    return table1_rows(with_dice_only=True)[cols], f"Rows with source 'paper Table 1': {TABLE1_SOURCE}"


def _write_runs(parts: list[_RunParts], out: Path, reference: bool, task: str | None) -> Report:
    task = _task_of(parts, task)
    skipped = [f"{p.name}: {line}" if len(parts) > 1 else line for p in parts for line in p.skipped]
    class_names = next((p.info.labels for p in parts if p.info is not None), {})
    tested = {p.name: p.test for p in parts if p.test is not None}
    cv = {p.name: p.cv for p in parts if p.cv is not None}
    decisions = {p.name: p.decision for p in parts if p.cv is not None}
    if tested:
        _same_cases(tested, [p.run for p in parts if p.test is not None])
    # everything that can fail on bad input fails here, before the first file is written
    cv_board = cv_ref = cv_note = None
    if cv:
        labels = sorted(int(c) for c in next(iter(cv.values()))["class"].unique())
        if reference:
            cv_ref, cv_note = _cv_reference(task, labels)
            if cv_ref is None:
                skipped.append(cv_note)
        cv_board = cv_leaderboard(cv, decisions, labels, cv_ref)
    if tested:
        leaderboard(tested, task, reference=reference)
    gaps = [p.gap for p in parts if p.gap is not None]
    several = len(parts) > 1

    make_dir(out)
    paths: dict[str, Path] = {}
    sections = [f"# nastk report: {', '.join(p.name for p in parts)} (task {task})\n"]
    rows = pd.DataFrame([p.arch_row for p in parts])
    if reference:
        from nastk.report.paper import table1_rows

        rows.insert(1, "source", "this run")
        paper = table1_rows().rename(columns={"method": "run"})
        paper = paper.rename(columns={c: f"cv_{c}" for c in ("DSC1", "DSC2", "DSC avg")})
        rows = pd.concat([rows, paper], ignore_index=True)
    paths["architectures"] = atomic_write_text(
        out / "architectures.csv", rows.to_csv(index=False, float_format="%.4g")
    )
    shown = rows.round(3).astype({"cv_folds": object} if "cv_folds" in rows else {})
    if "cv_folds" in shown:
        shown["cv_folds"] = ["" if pd.isna(v) else str(int(v)) for v in shown["cv_folds"]]
    sections.append("## Architectures\n\n" + markdown_table(shown))
    for p in parts:
        if p.arch is not None and hasattr(p.arch, "draw"):
            name = f"arch_{p.name}.png" if several else "arch.png"
            paths[name] = p.arch.draw(out / name)
        log = p.run / "search" / "log.csv"
        if log.is_file() and log.stat().st_size:
            name = f"search_curves_{p.name}.png" if several else "search_curves.png"
            sigma = next((x.params.get("sigma") for x in p.spec.losses if x.name == "memory"), None)
            paths[name] = search_curves(log, out / name, sigma=sigma)
    if gaps:
        paths["gap_png"] = gap_curves(gaps, out / "gap.png")
    if cv:
        cv_paths, md = write_cv(out, cv, decisions, class_names, task, cv_ref, cv_note, board=cv_board)
        paths.update(cv_paths)
        sections.append(md.replace("# Cross-validation", "## Cross-validation", 1))
    if tested:
        test_paths = write_report(out, tested, task, class_names, reference=reference)
        paths.update(test_paths)
        all_cases = (
            pd.concat([f.assign(method=m) for m, f in tested.items()])
            if len(tested) > 1
            else next(iter(tested.values()))
        )
        paths["dice_png"] = dice_distribution(all_cases, out / "dice.png", class_names)
        sections.append(test_paths["leaderboard_md"].read_text().replace("# Leaderboard", "## Test set", 1))
    for p in parts:
        if p.unlabelled:
            sections.append(_unlabelled_section(p))
    if skipped:
        sections.append("## Skipped\n\n" + "\n".join(f"- {line}" for line in skipped) + "\n")
    text = "\n".join(sections)
    paths["report_md"] = atomic_write_text(out / "report.md", text)
    return Report(out, paths, text, skipped)


def _unlabelled_section(part: _RunParts) -> str:
    folder = part.run / "predictions"
    shown = ", ".join(part.unlabelled[:20]) + (", ..." if len(part.unlabelled) > 20 else "")
    where = part.info.root if part.info is not None else "the dataset"
    return (
        f"## {part.name}: predictions without labels\n\n"
        f"{len(part.unlabelled)} case(s) predicted in {folder}: {shown}.\n\n"
        f"No scores: {where} has no reference labels for these cases. Scores need the labels (put them in "
        "labelsTs/, or pass --pred/--ref) or the MSD leaderboard (for the Decathlon's test cases).\n"
    )


def _same_cases(frames: dict[str, pd.DataFrame], runs: list[Path]) -> None:
    """Methods ranked together must be scored on the same cases."""
    cases = [set(frame["case"]) for frame in frames.values()]
    first = next(iter(frames))
    for got, run in zip(cases, runs):
        if got != cases[0]:
            raise DataError(
                f"{run / 'predictions'}: scored on {len(got)} cases, {first} on {len(cases[0])}; "
                "methods ranked together must predict the same cases"
            )


def _classes_in(pred: Path, refs: dict[str, Path]) -> list[int]:
    """Without a dataset.json: the union of the label values in the predictions and the references."""
    values: set[int] = set()
    for case_id, path in images_by_name(pred).items():
        values |= label_values(path, "prediction", case_id)
    for case_id, path in refs.items():
        values |= label_values(path, "reference", case_id)
    return sorted(values - {0})
