"""``nastk export``: the retrained network of each fold in a format that runs without nastk, and
``inference.json`` with everything a user needs around it (preprocessing, windows, classes, post-processing).

The exported network maps a batch of windows ``[B, C, X, Y, Z]`` (the patch of ``inference.json``, axes in
array order x, y, z of the canonical orientation) to logits ``[B, K, X, Y, Z]``; softmax, blending and
argmax are the caller's, as ``inference.json`` describes them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from nastk.data.cache import Plan, load_backgrounds, load_plan, plan_notes
from nastk.data.geometry import CANONICAL
from nastk.errors import DataError, NastkError, OutputError, one_line
from nastk.io import atomic_path, atomic_write_text, make_dir
from nastk.network import network_from_model
from nastk.provenance import check_folds_agree
from nastk.spec import Spec

FORMATS = ("torchscript", "pt2", "onnx")
MODEL_FILES = {"torchscript": "model.ts", "pt2": "model.pt2", "onnx": "model.onnx"}
INFERENCE_FILE = "inference.json"


def retrained_folds(run: Path, which: str = "final") -> list[int]:
    """The folds of ``run`` with a ``model_{which}.pt``, in order (:func:`nastk.provenance.run_folds`)."""
    from nastk.provenance import run_folds

    return run_folds(Path(run), which)  # the folds the run recorded, not every folder named fold_*


def folds_to_export(run: Path, fold: str, which: str = "final") -> list[int]:
    """``--fold``: one fold index or ``all``, checked against the retrained folds of ``run``."""
    available = retrained_folds(run, which)
    if not available:
        raise DataError(
            f"{Path(run) / 'retrain'}: no retrained fold with model_{which}.pt (run `nastk retrain`)"
        )
    if fold == "all":
        return available
    if not fold.isdigit():
        raise DataError(f"--fold: {fold!r} is not a fold index or 'all'")
    if int(fold) not in available:
        raise DataError(
            f"--fold: fold {fold} has no model_{which}.pt in {run}/retrain (available: {available})"
        )
    return [int(fold)]


def example_windows(spec: Spec, batch: int = 2) -> torch.Tensor:
    """A batch of windows of the inference patch: what tracing and export run the network on."""
    generator = torch.Generator().manual_seed(0)  # the caller's random state stays as it was
    return torch.randn(batch, spec.dataset.in_channels, *spec.inference.patch_size, generator=generator)


def save_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Scripted where the network allows it (any shape), else traced on ``example`` (the patch)."""
    with warnings.catch_warnings():
        # TorchScript's deprecation notice, and the tracer's note on Python branches: those branches pick
        # a kernel by shape and device (a space plugin's own kernels), and the batch of 2 traced takes the
        # plain conv3d, which runs anywhere.
        warnings.simplefilter("ignore")
        try:
            module = torch.jit.script(net)
        except Exception:  # scripting rejects much ordinary Python; tracing records what one forward does
            module = torch.jit.trace(net, example, check_trace=False)
        buffer = io.BytesIO()  # serialised here, written by Python: a full disk is an OSError, not an abort
        torch.jit.save(module, buffer)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_pt2(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.export`` with a free batch size (windows per call), the patch fixed."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write_bytes(path, buffer.getvalue())


def save_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX (opset of the installed exporter) with a free batch axis; needs the ``export`` extra."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)  # its notes on torchvision ops a segmentation network never uses
        try:
            _onnx_export(net, example, path, batch)
        finally:
            exporter_log.setLevel(level)


def _onnx_export(net: torch.nn.Module, example: torch.Tensor, path: Path, batch) -> None:
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["windows"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        external_data=False,  # one file per fold: weights inside the model
        verbose=False,
    )


def check_format(fmt: str) -> None:
    """A known format whose exporter is installed (ONNX is the optional ``export`` extra)."""
    if fmt not in FORMATS:
        raise DataError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        import importlib.util

        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise DataError(f"--format onnx needs {', '.join(missing)}: pip install 'nastk[export]'")


SAVERS = {"torchscript": save_torchscript, "pt2": save_pt2, "onnx": save_onnx}


def normalization_entries(
    plan: Plan,
    stats: dict[int, dict[str, float]],
    why: list[str] | tuple[str, ...] = (),
    backgrounds: list | tuple = (),
) -> list[dict]:
    """Per channel: the scheme, why it was chosen, for CT the dataset statistics it clips and scales
    with, and the training cases' background (a case unlike all of them is normalised unlike training)."""
    entries = []
    for c, scheme in enumerate(plan.normalization):
        entry: dict = {"channel": c, "scheme": scheme}
        if c < len(why):
            entry["chosen"] = why[c]
        if scheme == "ct":
            entry.update(stats[c])
            entry["formula"] = "(clip(x, lo, hi) - mean) / max(std, 1e-8)"
        elif scheme == "zscore":
            entry["formula"] = "(x - mean(x)) / max(std(x), 1e-8) over the whole cropped image"
        else:
            entry["formula"] = "(x - mean) / max(std, 1e-8), mean and std over the nonzero voxels"
            entry["outside_nonzero"] = "0" if scheme == "zscore_nonzero" else "normalised like the rest"
        # What a window gets where it leaves the image: what the outside of the crop box would have.
        entry["pad"] = "0" if scheme in ("ct", "zscore_nonzero") else "-mean / std"
        for bg in backgrounds:
            if bg.channel == c:
                entry["training_background"] = {
                    **bg.to_dict(),
                    "check": "warn when a case is exactly 0 over >= stripped_share of its voxels and "
                    "stripped_cases is 0, or below it and stripped_cases equals cases",
                }
        entries.append(entry)
    return entries


def class_names(spec: Spec, plan: Plan) -> dict[str, str]:
    """Class value -> name from the dataset's dataset.json where it is reachable, else the value itself."""
    try:
        from nastk.data.dataset import read_dataset

        labels = read_dataset(spec.dataset.root, spec.dataset.format).labels
    except (DataError, OSError, TypeError, ValueError):  # exporting needs no training data, as predict
        labels = {}
    return {str(k): str(labels.get(k, k)) for k in plan.labels}


def inference_description(spec: Spec, run: Path, folds: list[int], fmt: str, which: str) -> dict:
    """Everything around the network that turns an image into labels, as nastk predict does it."""
    from nastk.inference.predict import postprocessing_classes

    plan, stats = load_plan(Path(run) / "plan.json")
    why = plan_notes(Path(run) / "plan.json")
    backgrounds = load_backgrounds(Path(run) / "plan.json")
    inf = spec.inference
    classes, source = postprocessing_classes(spec, Path(run))
    return {
        "format": fmt,
        "models": [
            {"fold": k, "file": f"fold_{k}/{MODEL_FILES[fmt]}", "from": f"model_{which}.pt"} for k in folds
        ],
        "input": {
            "channels": spec.dataset.in_channels,
            "layout": "[B, C, X, Y, Z] windows of patch_size, axes x, y, z of the canonical orientation",
            "output": "[B, K, X, Y, Z] logits (softmax over K)",
        },
        "preprocessing": {
            "orientation": CANONICAL,
            "orientation_convention": "ITK/DICOM: the identity direction (nibabel's axis codes L, P, S)",
            "spacing": list(plan.spacing),
            "resampling": {"image": "cubic B-spline", "label": "nearest"},
            "crop_nonzero": plan.crop_nonzero,
            "normalization": normalization_entries(plan, stats, why, backgrounds),
        },
        "sliding_window": {
            "patch_size": list(inf.patch_size),
            "stride": list(inf.stride),
            "blend": inf.blend,
            "gaussian_sigma_scale": 0.125,
            "gaussian_min_weight": 1e-3,
            "batch_size": inf.batch_size,
            "flip_tta": inf.flip_tta,
            "pad": "axes shorter than the patch: floor(half) before, the rest after, with each channel's pad",
        },
        "ensemble": {
            "method": inf.ensemble,
            "rule": "vote: per voxel the label most folds chose, ties to the lower label"
            if inf.ensemble == "vote"
            else "mean: argmax of the folds' mean blended probabilities",
        },
        "classes": class_names(spec, plan),
        "postprocessing": {"largest_component": classes, "connectivity": 26, "source": source},
        "output_geometry": "labels pasted into the crop box (0 outside), resampled to the original grid with "
        "nearest neighbour, in the original orientation",
    }


def export_run(
    spec: Spec, run: Path, out: Path, fmt: str, fold: str = "all", which: str = "final"
) -> list[Path]:
    """Each chosen fold's network into ``out/fold_K/`` in ``fmt``, and ``out/inference.json``; the
    files written. Every check happens before anything is written."""
    check_format(fmt)
    run = Path(run)
    folds = folds_to_export(run, fold, which)
    check_folds_agree(run, folds)
    description = inference_description(spec, run, folds, fmt, which)
    spec_io = (spec.dataset.in_channels, spec.dataset.num_classes)
    nets = {
        k: network_from_model(
            run / "retrain" / f"fold_{k}" / f"model_{which}.pt", spec_io, torch.device("cpu")
        )
        for k in folds
    }
    example = example_windows(spec)
    written = []
    for k, net in nets.items():
        target = Path(out) / f"fold_{k}" / MODEL_FILES[fmt]
        make_dir(target.parent)
        try:  # atomically: a failure (a full disk) leaves the previous file or none, never half of one
            with atomic_path(target, ext=target.suffix) as tmp, torch.no_grad():
                SAVERS[fmt](net, example, tmp)
        except NastkError:  # OutputError: "no space left writing ..."
            raise
        except Exception as exc:  # an exporter's failure on an op is the user's to report, in one line
            if "no space left" in str(exc).lower():  # a C++ writer's message
                raise OutputError(f"no space left writing {target}; the file was left as it was") from None
            raise DataError(f"{run}/retrain/fold_{k}: cannot export as {fmt} ({one_line(exc)})") from None
        written.append(target)
    info = Path(out) / INFERENCE_FILE
    atomic_write_text(info, json.dumps(description, indent=1))
    return [*written, info]
