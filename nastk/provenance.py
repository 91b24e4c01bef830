"""What each artefact of a run was made from, and whether artefacts that are combined were made together.

A run's folds are combined by `predict` (the ensemble), `export` and `report` (the cross-validation table);
they must share one preprocessing plan (``RUN/plan.json``), one set of folds (``RUN/splits.json``), one
architecture and the settings that decide a model. Each retrained fold records, when it starts,
``RUN/retrain/fold_K/provenance.json`` (and its model files the same under ``provenance``):

* ``spec``: a hash of the spec's settings that decide the fold's model (:func:`model_settings`; not the
  logging intervals, the inference settings or the worker count), with the settings themselves, so that
  a refusal can say which differ;
* ``arch``: a hash of the architecture it was built from (the file's canonical JSON) and the file's path;
* ``plan`` and ``splits``: hashes of the preprocessing plan and the folds (the cache's plan.json and
  splits.json, which the run keeps copies of), and ``dataset``: the dataset's content key.

Pure functions here compute, record and compare those records; the commands call them and turn a mix
into one line and exit code 2.

Folds are found by what the run recorded: ``RUN/splits.json`` says how many there are, and fold K is
trained when ``retrain/fold_K/model_{final,best}.pt`` exists; a folder such as ``fold_0_bak`` or
``fold_x`` is not a fold, and is named in one warning line.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from nastk.errors import DataError

PROVENANCE_FILE = "provenance.json"
MADE_FROM = "made_from"  # the key of a decoded architecture's record
VERSION = 1
# Spec fields that do not change what a fold's model is (how often it logs, where its cache is, how
# predict runs it); every other field of the resolved spec is compared.
IGNORED = (
    "name",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.num_workers",
    "inference",
    "memory",
    "discretizer",
    "search.log_every",
    "search.checkpoint_every",
    "retrain.log_every",
    "retrain.checkpoint_every",
)
_FOLD = re.compile(r"^fold_(\d+)$")


def text_hash(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def file_hash(path: Path) -> str | None:
    """The hash of a file's bytes, None where it does not exist."""
    try:
        return text_hash(Path(path).read_bytes())
    except FileNotFoundError:
        return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _ignored(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in IGNORED)


def model_settings(spec) -> dict[str, Any]:
    """The spec's fields that decide a retrained model, flat (``retrain.iters``: 40000, ...)."""
    flat = _flatten(json.loads(spec.model_dump_json()))
    return {k: v for k, v in sorted(flat.items()) if not _ignored(k)}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """``key old -> new`` for the first ``limit`` keys that differ (``(+N more)`` after)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k} {json.dumps(old.get(k))} vs {json.dumps(new.get(k))}" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more


def arch_hash(arch) -> str:
    """The architecture's hash, from its canonical JSON without its ``made_from`` record (the same network
    from any file, however it was decoded)."""
    data = json.loads(arch.to_json())
    data.pop(MADE_FROM, None)
    return text_hash(json.dumps(data, sort_keys=True))


def stamp_architecture(arch, params: Path, spec_file: Path | None, budget_gb: float | None) -> None:
    """Record in a decoded architecture (its ``extra``, saved with it) what it was decoded from: the hashes
    of the searched parameters and of the search's spec, and the GB budget."""
    extra = getattr(arch, "extra", None)
    if isinstance(extra, dict):
        extra[MADE_FROM] = {
            "arch_params": file_hash(Path(params)),
            "spec": file_hash(Path(spec_file)) if spec_file is not None else None,
            "budget_gb": budget_gb,
        }


def plan_summary(plan_text: str | None) -> dict[str, Any]:
    """The settings a plan.json holds, for saying what differs between two plans."""
    if plan_text is None:
        return {}
    try:
        data = json.loads(plan_text)
        plan = dict(data["plan"])
    except (ValueError, KeyError, TypeError):
        return {}
    plan.pop("version", None)
    plan["content"] = data.get("content")
    return {f"plan.{k}": v for k, v in plan.items()}


def _plan_settings(summary: dict[str, Any]) -> dict[str, Any]:
    """A plan's preprocessing settings, without what names its dataset (whose key changed in issue 23)."""
    return {k: v for k, v in summary.items() if k not in ("plan.dataset", "plan.content")}


def _shown_path(path: Path, run: Path | None) -> str:
    """``path`` relative to the run folder when it is inside it, so that a run copied or moved elsewhere
    (or made twice in two folders) records the same thing."""
    if run is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(run).resolve()))
        except ValueError:
            pass
    return str(path)


def fold_record(
    fold: int, spec, arch, arch_path: Path, plan_text: str, splits_text: str, run: Path | None = None
) -> dict[str, Any]:
    """What fold ``fold`` is made from (see the module docstring)."""
    settings = model_settings(spec)
    try:
        content = json.loads(plan_text).get("content")
    except (ValueError, AttributeError):
        content = None
    return {
        "version": VERSION,
        "fold": fold,
        "spec": text_hash(json.dumps(settings, sort_keys=True)),
        "arch": arch_hash(arch),
        "arch_file": _shown_path(arch_path, run),
        "plan": text_hash(plan_text),
        "splits": text_hash(splits_text),
        "dataset": content,
        "settings": settings,
        "plan_settings": plan_summary(plan_text),
    }


def record_path(run: Path, fold: int) -> Path:
    return Path(run) / "retrain" / f"fold_{fold}" / PROVENANCE_FILE


def read_record(run: Path, fold: int) -> dict[str, Any] | None:
    """Fold ``fold``'s record, None for a fold trained before records were kept."""
    path = record_path(run, fold)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable provenance record ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("spec", "arch", "plan", "splits")):
        raise DataError(f"{path}: not a provenance record (no spec, arch, plan and splits hashes)")
    return data


def write_record(run: Path, record: dict[str, Any]) -> Path:
    """Fold ``record["fold"]``'s record, written only where it changed (a finished fold started again
    writes nothing)."""
    from nastk.io import atomic_write_text

    path, text = record_path(run, record["fold"]), json.dumps(record, indent=1)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    return atomic_write_text(path, text)


def mismatch(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str] | None:
    """What differs between two fold records, as (what, detail): settings, architecture, plan, folds; None
    when they were made alike."""
    if a["spec"] != b["spec"]:
        return "other settings", differences(a.get("settings", {}), b.get("settings", {}))
    if a["arch"] != b["arch"]:
        return "another architecture", f"{a.get('arch_file')} {a['arch']} vs {b.get('arch_file')} {b['arch']}"
    if a["plan"] != b["plan"]:
        detail = differences(a.get("plan_settings", {}), b.get("plan_settings", {}))
        return "another preprocessing plan", detail or f"plan {a['plan']} vs {b['plan']}"
    if a["splits"] != b["splits"]:
        return "other folds", f"splits {a['splits']} vs {b['splits']}"
    return None


def started_folds(run: Path) -> list[int]:
    """The folds of ``run`` that began retraining: a checkpoint or a model (a record alone is a start that
    was killed before its first checkpoint, which a fresh start replaces)."""
    root = Path(run) / "retrain"
    if not root.is_dir():
        return []
    names = ("checkpoint.pt", "model_final.pt", "model_best.pt")
    return sorted(
        int(m[1])
        for p in root.iterdir()
        if (m := _FOLD.match(p.name)) and any((p / n).is_file() for n in names)
    )


def check_fold_joins(run: Path, record: dict[str, Any]) -> None:
    """Refuse (DataError, one line naming both files and what differs) retraining fold ``record["fold"]``
    into ``run`` when another fold began with other settings, architecture, plan or folds: the run would
    then ensemble and score folds that were not made together. Folds from before records were kept are
    compared through the run's plan.json (by its settings) and splits.json."""
    run, fold = Path(run), record["fold"]
    own = read_record(run, fold)
    trained = [record_path(run, fold).parent / n for n in ("checkpoint.pt", "model_final.pt")]
    if own is not None and any(p.is_file() for p in trained):  # a resume continues what it began
        problem = mismatch(own, record)
        if problem and problem[0] != "other settings":  # settings: the checkpoint's spec check says it
            raise DataError(
                f"{record_path(run, fold)}: fold {fold} began with {problem[0]} than this resume would use: "
                f"{problem[1]}; resume with what it began with"
            )
    for k in started_folds(run):
        if k == fold:
            continue
        other = read_record(run, k)
        if other is not None:
            problem = mismatch(other, record)
            if problem:
                what, detail = problem
                raise DataError(
                    f"{record_path(run, k)}: fold {k} was trained with {what} than "
                    f"{record_path(run, fold).parent} would be: {detail}; retrain fold {fold} with "
                    f"fold {k}'s settings (its spec.yaml), or into another --out"
                )
            continue
        for name, key in (("plan.json", "plan"), ("splits.json", "splits")):
            kept = file_hash(run / name)
            if key == "plan" and kept is not None:  # by its settings: older plans name the dataset otherwise
                kept_text = (run / name).read_text()
                same = _plan_settings(plan_summary(kept_text)) == _plan_settings(record["plan_settings"])
                kept = record[key] if same else kept
            if kept is not None and kept != record[key]:
                raise DataError(
                    f"{run / name}: fold {k} was trained with another {name} than "
                    f"{record_path(run, fold).parent} would be; retrain fold {fold} with fold {k}'s settings "
                    f"({run / 'retrain' / f'fold_{k}' / 'spec.yaml'}), or into another --out"
                )


# ------------------------------------------------------------------------------------ folds of a run


def warn(message: str) -> None:
    """One warning line on stderr (library code: no logging set-up needed)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def num_folds(run: Path) -> int | None:
    """How many folds ``RUN/splits.json`` records, None without one."""
    from nastk.crossval import read_splits

    splits = read_splits(Path(run))
    return None if splits is None else len(splits)


def run_folds(run: Path, which: str = "final", quiet: bool = False) -> list[int]:
    """The folds of ``run`` whose ``model_{which}.pt`` exists, found by what the run recorded: fold K for
    each fold of ``RUN/splits.json`` (every ``fold_K`` in a run without one). Any other folder in
    ``RUN/retrain`` (``fold_0_bak``, ``fold_x``, ``fold_7`` of a 5-fold run) is named in one warning line."""
    root = Path(run) / "retrain"
    if not root.is_dir():
        return []
    count = num_folds(run)
    expected = {f"fold_{k}" for k in range(count)} if count is not None else None
    folds, strays = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        match = _FOLD.match(entry.name)
        if match and (expected is None or entry.name in expected) and str(int(match[1])) == match[1]:
            if (entry / f"model_{which}.pt").is_file():
                folds.append(int(match[1]))
        else:
            strays.append(entry.name)
    if strays and not quiet:
        shown = ", ".join(strays[:5]) + (" ..." if len(strays) > 5 else "")
        recorded = (
            f"{Path(run) / 'splits.json'} records {count} folds" if count is not None else "fold_K only"
        )
        warn(f"{root}: ignoring {shown}: not a fold of this run ({recorded})")
    return sorted(folds)


def check_folds_agree(run: Path, folds: list[int]) -> None:
    """Refuse (DataError naming both files and what differs) folds whose records disagree with each other
    or whose plan is not ``RUN/plan.json``; folds without a record (older runs) are not checked."""
    run = Path(run)
    records = [(k, read_record(run, k)) for k in folds]
    records = [(k, r) for k, r in records if r is not None]
    for k, record in records[1:]:
        first_k, first = records[0]
        problem = mismatch(first, record)
        if problem:
            what, detail = problem
            raise DataError(
                f"{record_path(run, k)}: fold {k} was trained with {what} than fold {first_k} "
                f"({record_path(run, first_k)}): {detail}; these folds cannot be combined"
            )
    plan = file_hash(run / "plan.json")
    for k, record in records:
        if plan is not None and record["plan"] != plan:
            raise DataError(
                f"{run / 'plan.json'}: is not the preprocessing plan fold {k} was trained with "
                f"({record_path(run, k)}: plan {record['plan']}, this file {plan})"
            )
