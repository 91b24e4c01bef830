"""``nastk report``: evaluate predictions (DSC, NSD), rank runs, write tables and figures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

from nastk import registry
from nastk.data.dataset import IMAGE_SUFFIXES, read_dataset, strip_suffix
from nastk.errors import DataError
from nastk.io import atomic_write_text
from nastk.metrics import evaluate_files, evaluate_missing
from nastk.progress import track
from nastk.report.figures import dice_distribution, search_curves
from nastk.report.leaderboard import cases_frame, write_report
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


def _files(folder: Path) -> dict[str, Path]:
    return {
        strip_suffix(p.name): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith("._")
    }


def references(ref: Path) -> tuple[dict[str, Path], dict[int, str], list[set[str]]]:
    """Reference label files by case id: a folder of labels, or a dataset.json (labelsTr, and labelsTs
    when present) with its declared labels; and the groups of cases that are scored together (a
    dataset.json's training cases, its test cases; a folder's files)."""
    if ref.name == "dataset.json" or (ref / "dataset.json").is_file():
        info = read_dataset(ref.parent if ref.name == "dataset.json" else ref)
        refs = {c.id: c.label for c in info.training}
        groups = [set(refs)]
        if (info.root / "labelsTs").is_dir():
            test = _files(info.root / "labelsTs")
            refs.update(test)
            groups.append(set(test))
        return refs, info.labels, groups
    if not ref.is_dir():
        raise DataError(f"{ref}: not a folder of labels or a dataset.json")
    refs = _files(ref)
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
    preds = _files(pred)
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


def architecture_row(run: Path, spec: Spec) -> dict:
    """Table 1 for a run: FLOPs, parameters, estimated and measured retraining memory, CV Dice."""
    from nastk.netstats import architecture_stats
    from nastk.setting import spec_budget

    row: dict = {"run": run.name}
    space = registry.load("spaces", spec.space.name)
    arch_file = run / "arch.json"
    if arch_file.is_file():
        arch = space.load_arch(arch_file)
        stats = architecture_stats(spec, arch, spec_budget(spec))
        stats.pop("path_cost", None)
        row.update(stats)
    peaks, dices = [], []
    for fold in sorted((run / "retrain").glob("fold_*")):
        log = fold / "log.csv"
        if log.is_file():
            with log.open() as fh:
                vals = [float(x["peak_mem_mb"]) for x in csv.DictReader(fh) if x.get("peak_mem_mb")]
            peaks += vals
        val = fold / "val_metrics.csv"
        if val.is_file():
            frame = pd.read_csv(val)
            if len(frame):
                dices.append(frame.groupby("iteration")["dice"].mean().max())
    row["measured_peak_MB"] = max(peaks) if peaks else np.nan
    row["cv_dice"] = float(np.mean(dices)) if dices else np.nan
    row["folds"] = len(dices)
    return row


def run_report(
    runs: list[Path],
    pred: Path | None,
    ref: Path | None,
    tolerances: dict[int, float],
    out: Path | None,
    reference: bool,
    task: str | None,
    quiet: bool = False,
    missing: str = "error",
) -> dict[str, Path]:
    if missing not in MISSING_POLICIES:
        raise DataError(f"--missing: {missing!r} is not one of {', '.join(MISSING_POLICIES)}")
    frames: dict[str, pd.DataFrame] = {}
    class_names: dict[int, str] = {}
    arch_rows = []
    if pred is not None:
        if runs or ref is None:
            raise DataError("give either RUN directories, or --pred DIR with --ref DIR|dataset.json")
        _, names, _ = references(ref)
        classes = sorted(c for c in names if c > 0) or _classes_in(pred)
        check_tolerance_classes(tolerances, classes, str(ref) if names else f"{pred} or {ref}", "--tolerance")
        class_names = names
        frames[pred.name] = evaluate_folder(pred, ref, classes, tolerances, quiet, missing)
        out = out or pred.parent / "report"
        task = task or (
            read_dataset(ref.parent if ref.name == "dataset.json" else ref).name if names else pred.name
        )
    else:
        if not runs:
            raise DataError("give RUN directories, or --pred DIR with --ref DIR|dataset.json")
        for run in runs:
            spec = _spec_of(run)
            if not spec.dataset.root:
                raise DataError(
                    f"{run / 'spec.yaml'}: dataset.root is not set, so there are no reference labels"
                )
            info = read_dataset(spec.dataset.root, spec.dataset.format)
            class_names = info.labels
            classes = sorted(c for c in info.labels if c > 0)
            source = str(info.root / "dataset.json")
            spec_tol = {int(k): v for k, v in spec.dataset.nsd_tolerance.items()}
            check_tolerance_classes(spec_tol, classes, source, f"{run / 'spec.yaml'}: dataset.nsd_tolerance")
            check_tolerance_classes(tolerances, classes, source, "--tolerance")
            tol = {**spec_tol, **tolerances}
            name = run.name if run.name not in frames else str(run)
            frames[name] = evaluate_folder(run / "predictions", info.root, classes, tol, quiet, missing)
            arch_rows.append(architecture_row(run, spec))
            task = task or info.name
        out = out or (runs[0] / "report" if len(runs) == 1 else Path("report"))
        _same_cases(frames, runs)
    paths = write_report(out, frames, task, class_names, reference=reference)
    all_cases = (
        pd.concat([f.assign(method=m) for m, f in frames.items()])
        if len(frames) > 1
        else next(iter(frames.values()))
    )
    paths["dice_png"] = dice_distribution(all_cases, out / "dice.png", class_names)
    if arch_rows:
        table = pd.DataFrame(arch_rows)
        atomic_write_text(out / "architectures.csv", table.to_csv(index=False, float_format="%.4g"))
        paths["architectures"] = out / "architectures.csv"
        for run in runs:
            arch_file = run / "arch.json"
            space = registry.load("spaces", _spec_of(run).space.name)
            if arch_file.is_file() and hasattr(space, "load_arch"):
                arch = space.load_arch(arch_file)
                if hasattr(arch, "draw"):
                    name = "arch.png" if len(runs) == 1 else f"arch_{run.name}.png"
                    paths[name] = arch.draw(out / name)
            log = run / "search" / "log.csv"
            if log.is_file() and log.stat().st_size:
                spec = _spec_of(run)
                sigma = next(
                    (loss.params.get("sigma") for loss in spec.losses if loss.name == "memory"), None
                )
                name = "search_curves.png" if len(runs) == 1 else f"search_curves_{run.name}.png"
                paths[name] = search_curves(log, out / name, sigma=sigma)
    return paths


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


def _classes_in(folder: Path) -> list[int]:
    import SimpleITK as sitk

    from nastk.metrics.evaluate import _read

    values: set[int] = set()
    for case_id, path in _files(folder).items():
        image = _read(path, "prediction", case_id)
        values |= {int(v) for v in np.unique(sitk.GetArrayViewFromImage(image))}
    return sorted(values - {0})
