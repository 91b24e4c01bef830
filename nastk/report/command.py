"""``nastk report``: what a run has, at every stage, as tables and figures; and any predictions scored.

For each run directory it writes what the run holds and says what it skipped and why:

* after search: ``architectures.csv`` (Table 1's columns: GMACs, parameters, estimated training memory at
  the retraining setting), ``arch.png``, ``search_curves.png``;
* after retraining: the cross-validation table from the out-of-fold predictions against the original
  labels (:mod:`nastk.report.cv`), whose chosen-post-processing DSC also fills ``architectures.csv``;
* after predict, with labels: the test leaderboard (Table 2's layout, :mod:`nastk.report.leaderboard`);
  without labels: the list of predicted cases;
* with several runs: every run's gap G in one figure (Fig. 8), the runs ranked side by side, and with
  cross-validation, the runs compared at equal compute (:mod:`nastk.report.compare`: one table of DSC/NSD,
  GMACs, parameters, memory and wall times that flags runs not trained alike, and DSC against GMACs with
  the Pareto front).

Everything is computed before anything is written, so a bad input leaves no half-written report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nastk.data.dataset import read_dataset
from nastk.errors import DataError
from nastk.io import atomic_write_text, make_dir
from nastk.protocols import Drawable
from nastk.report.cv import cv_leaderboard, write_cv
from nastk.report.figures import dice_distribution, gap_curves, search_curves
from nastk.report.leaderboard import leaderboard, markdown_table, metric_columns, write_report
from nastk.report.runs import _collect, _run_names, _RunParts
from nastk.report.runs import gap_runs as gap_runs
from nastk.report.scoring import MISSING_POLICIES as MISSING_POLICIES
from nastk.report.scoring import _classes_in, check_tolerance_classes, evaluate_folder, references
from nastk.report.scoring import parse_tolerances as parse_tolerances


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
    """The reference's cross-validation rows (Table 1 for ``paper``: Pancreas only), or None and why not."""
    from nastk.report.paper import DEFAULT, UnknownTaskError, resolve_task, table1_rows, tables

    ref = tables(DEFAULT)
    try:
        known = resolve_task(task)
    except UnknownTaskError:
        known = None
    why = f"{DEFAULT} rows for cross-validation: {ref.cv_title}"
    if known != ref.cv_task:
        return None, f"{why} reports {ref.cv_task} only, not {task!r}"
    n_classes = sum(c.startswith("DSC") and c[3:].isdigit() for c in ref.cv_columns)
    if len(labels) != n_classes:
        return None, f"{why} has {n_classes} classes, this run {len(labels)}"
    cols = ["method", "source", *[c for c in metric_columns(n_classes) if c.startswith("DSC")]]
    return table1_rows(with_dice_only=True)[cols], f"Rows with source '{ref.cv_label}': {ref.cv_source}"


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
    fold_rows = [{"run": p.name, **row} for p in parts for row in p.folds]
    if fold_rows:
        sections.append(
            "## Folds: what each was trained with\n\n"
            "Hashes of the settings, architecture, preprocessing plan, folds and data each fold's model was "
            "made from (`retrain/fold_K/provenance.json`).\n\n"
            + markdown_table(pd.DataFrame(fold_rows).fillna(""))
        )
    for p in parts:
        if isinstance(p.arch, Drawable):
            name = f"arch_{p.name}.png" if several else "arch.png"
            paths[name] = p.arch.draw(out / name)
        log = p.run / "search" / "log.csv"
        if log.is_file() and log.stat().st_size:
            name = f"search_curves_{p.name}.png" if several else "search_curves.png"
            paths[name] = search_curves(log, out / name)  # the budget line is the logged sigma_eff
    if gaps:
        paths["gap_png"] = gap_curves(gaps, out / "gap.png")
    if cv:
        cv_paths, md = write_cv(out, cv, decisions, class_names, task, cv_ref, cv_note, board=cv_board)
        paths.update(cv_paths)
        if len(cv) > 1:  # runs of different spaces and baselines side by side, at equal compute
            from nastk.report.compare import compare_figure, compare_markdown, compare_table

            table = compare_table([p for p in parts if p.cv is not None], cv_board, labels, class_names)
            paths["compare_csv"] = atomic_write_text(
                out / "compare.csv", table.to_csv(index=False, float_format="%.6g")
            )
            paths["compare_png"] = compare_figure(table, out / "compare.png")
            sections.append(compare_markdown(table, table["run"].iloc[0]))
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
