"""nastk export: each format runs in a process without nastk and matches nastk's own forward; a sliding
window written here from inference.json alone reproduces `nastk predict`; bad runs get one line."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from nastk.network import network_from_model
from nastk.spec import load_spec

from conftest import run_cli

# Any import of nastk or its plugin fails in the loading process: the exported file must stand alone.
NO_NASTK = "import sys; sys.modules['nastk'] = None; sys.modules['nastk_dints'] = None\n"

LOADERS = {
    "torchscript": "net = torch.jit.load(sys.argv[1])",
    "pt2": "net = torch.export.load(sys.argv[1]).module()",
    "onnx": "import onnxruntime\n"
    "session = onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
    "net = lambda x: torch.from_numpy(session.run(None, {'windows': x.numpy()})[0])",
}


def onnx_installed() -> bool:
    """The optional `export` extra: onnx, onnxscript (torch's exporter) and onnxruntime."""
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


RUN_ONE = """
import torch
{load}
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(net(x), sys.argv[3])
assert not any(m.startswith('nastk') and sys.modules[m] is not None for m in sys.modules)
"""


def run_without_nastk(code: str, *args, cwd=None):
    res = subprocess.run(
        [sys.executable, "-c", NO_NASTK + code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def exported(retrained, tmp_path_factory):
    """Format -> export folder of the shared retrained run, written by the command."""
    _, _, run = retrained
    out = {}
    for fmt in LOADERS:
        if fmt == "onnx" and not onnx_installed():
            continue
        target = tmp_path_factory.mktemp(f"export_{fmt}")
        res = run_cli("export", run, "--format", fmt, "--out", target)
        assert res.returncode == 0, res.stderr
        out[fmt] = target
    return out


@pytest.mark.parametrize("fmt", list(LOADERS))
def test_exported_network_matches_nastk_forward_without_nastk(fmt, retrained, exported, tmp_path):
    if fmt == "onnx":  # the only optional format
        for name in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(name)
    _, _, run = retrained
    spec = load_spec(run / "spec.yaml")
    info = json.loads((exported[fmt] / "inference.json").read_text())
    assert [m["fold"] for m in info["models"]] == [0, 1]
    x = torch.randn(3, info["input"]["channels"], *info["sliding_window"]["patch_size"])
    torch.save(x, tmp_path / "x.pt")
    for entry in info["models"]:
        model_file = exported[fmt] / entry["file"]
        run_without_nastk(
            RUN_ONE.format(load=LOADERS[fmt]), model_file, tmp_path / "x.pt", tmp_path / "y.pt", cwd=tmp_path
        )
        theirs = torch.load(tmp_path / "y.pt")
        io = (spec.dataset.in_channels, spec.dataset.num_classes)
        net = network_from_model(run / "retrain" / f"fold_{entry['fold']}" / "model_final.pt", io, "cpu")
        with torch.no_grad():
            ours = net(x)
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_inference_json_describes_preprocessing_windows_classes_and_postprocessing(retrained, exported):
    _, _, run = retrained
    spec = load_spec(run / "spec.yaml")
    info = json.loads((exported["torchscript"] / "inference.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    pre = info["preprocessing"]
    assert pre["orientation"] == "LPS" and pre["spacing"] == plan["plan"]["spacing"]
    for entry in pre["normalization"]:
        assert entry["scheme"] == plan["plan"]["normalization"][entry["channel"]]
        if entry["scheme"] == "ct":
            stats = plan["ct_statistics"][str(entry["channel"])]
            assert {k: entry[k] for k in stats} == stats
    window = info["sliding_window"]
    assert window["patch_size"] == list(spec.inference.patch_size)
    assert window["stride"] == list(spec.inference.stride) and window["blend"] == spec.inference.blend
    assert sorted(info["classes"]) == ["0", "1", "2"] and info["classes"]["0"] == "background"
    assert isinstance(info["postprocessing"]["largest_component"], list)


def test_bad_runs_get_one_line_and_exit_2(retrained, tmp_path):
    _, _, run = retrained
    unknown = run_cli("export", run, "--format", "tflite", "--out", tmp_path / "a")  # typer's usage error
    assert unknown.returncode == 2 and "--format" in unknown.stderr and "tflite" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not (tmp_path / "a").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "spec.yaml", bare / "spec.yaml")
    shutil.copy(run / "plan.json", bare / "plan.json")
    none = run_cli("export", bare, "--format", "torchscript", "--out", tmp_path / "b")
    assert none.returncode == 2 and "no retrained fold" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    missing = run_cli("export", run, "--format", "torchscript", "--fold", "7", "--out", tmp_path / "c")
    assert missing.returncode == 2 and "--fold" in missing.stderr
    not_a_run = run_cli("export", tmp_path / "nowhere", "--format", "pt2", "--out", tmp_path / "d")
    assert not_a_run.returncode == 2 and "spec.yaml" in not_a_run.stderr
    assert len(not_a_run.stderr.strip().splitlines()) == 1


# ------------------------------------------- a sliding window from inference.json alone, against predict


def normalise(image: np.ndarray, nonzero: np.ndarray, entry: dict) -> np.ndarray:
    """One channel as inference.json's normalisation entry says."""
    image = image.astype(np.float64)
    if entry["scheme"] == "ct":
        return ((np.clip(image, entry["lo"], entry["hi"]) - entry["mean"]) / max(entry["std"], 1e-8)).astype(
            np.float32
        )
    values = image[nonzero] if entry["scheme"] != "zscore" else image
    out = (image - values.mean()) / max(values.std(), 1e-8)
    if entry["scheme"] == "zscore_nonzero":
        out[~nonzero] = 0
    return out.astype(np.float32)


def starts(size: int, patch: int, stride: int) -> list[int]:
    if size <= patch:
        return [0]
    last = size - patch
    return sorted({min(i * stride, last) for i in range(-(-last // stride) + 1)})


def window_weights(patch, blend: str, sigma_scale: float, floor: float) -> np.ndarray:
    if blend == "constant":
        return np.ones(patch, np.float32)
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (sigma_scale * p)) ** 2) for p in patch]
    return np.maximum(np.einsum("i,j,k->ijk", *axes), floor).astype(np.float32)


def windowed_labels(model, volume: np.ndarray, window: dict, num_classes: int) -> np.ndarray:
    """Softmax of every window, blended with the window weights; argmax per voxel."""
    patch, stride = window["patch_size"], window["stride"]
    assert all(n >= p for n, p in zip(volume.shape[1:], patch))  # no padding needed for this case
    weight = window_weights(
        patch, window["blend"], window["gaussian_sigma_scale"], window["gaussian_min_weight"]
    )
    acc = np.zeros((num_classes, *volume.shape[1:]), np.float32)
    grid = [starts(n, p, s) for n, p, s in zip(volume.shape[1:], patch, stride)]
    for i in grid[0]:
        for j in grid[1]:
            for k in grid[2]:
                box = (slice(i, i + patch[0]), slice(j, j + patch[1]), slice(k, k + patch[2]))
                with torch.no_grad():
                    logits = model(torch.from_numpy(np.ascontiguousarray(volume[(slice(None), *box)]))[None])
                acc[(slice(None), *box)] += torch.softmax(logits[0], 0).numpy() * weight
    return acc.argmax(0)


def keep_largest(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    out = labels.copy()
    for c in classes:
        parts, n = ndimage.label(labels == c, structure=np.ones((3, 3, 3)))
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            out[(parts > 0) & (parts != 1 + int(np.argmax(sizes)))] = 0
    return out


def scrambled_run(run, target):
    """A copy of ``run`` whose classifiers have random weights: a few retraining steps predict only
    background, and labels that vary in space make the comparison with predict mean something."""
    from nastk.checkpoint import load, save

    shutil.copytree(run, target, ignore=shutil.ignore_patterns("predictions", "validation", "report"))
    generator = torch.Generator().manual_seed(0)
    for path in target.glob("retrain/fold_*/model_final.pt"):
        state = load(path)
        for key, value in state["model"].items():
            if "classifier" in key and key.endswith("weight"):
                state["model"][key] = torch.randn(value.shape, generator=generator)
        save(path, state)
    return target


def test_sliding_window_from_inference_json_matches_nastk_predict(retrained, tmp_path):
    from nastk.export import export_run

    tmp, root, shared = retrained
    run = scrambled_run(shared, tmp_path / "run")
    export_dir = tmp_path / "export"
    export_run(load_spec(run / "spec.yaml"), run, export_dir, "torchscript")
    info = json.loads((export_dir / "inference.json").read_text())
    pre, window = info["preprocessing"], info["sliding_window"]
    assert not window["flip_tta"] and info["ensemble"]["method"] == "vote"
    # A case already in the canonical orientation (LPS) at the plan's spacing, so no resampling is needed;
    # a zero margin exercises the crop to the nonzero region.
    source = np.asarray(nib.load(root / "imagesTs" / "synth_100.nii.gz").dataobj, dtype=np.float32)
    body = np.concatenate([source, source[..., ::-1]], axis=2) + 10.0  # at least a patch, nonzero
    image = np.pad(body, 3)
    affine = np.diag([-pre["spacing"][0], -pre["spacing"][1], pre["spacing"][2], 1.0])
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "in" / "case.nii.gz")
    assert nib.aff2axcodes(affine) == tuple(pre["orientation"])

    res = run_cli("predict", run, "--input", tmp_path / "in", "--output", tmp_path / "out", "--quiet")
    assert res.returncode == 0, res.stderr
    expected = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj)

    nonzero = image != 0
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(nonzero)) if pre["crop_nonzero"] else ...
    channel = normalise(image[box], nonzero[box], pre["normalization"][0])
    num_classes = len(info["classes"])
    votes = np.zeros((num_classes, *channel.shape), np.int64)
    for entry in info["models"]:
        model = torch.jit.load(str(export_dir / entry["file"]))
        labels = windowed_labels(model, channel[None], window, num_classes)
        votes += np.stack([labels == c for c in range(num_classes)])
    labels = keep_largest(votes.argmax(0), info["postprocessing"]["largest_component"])
    ours = np.zeros(image.shape, np.uint8)
    ours[box] = labels
    assert set(np.unique(expected)) == {0, 1, 2}  # the comparison is not trivially all background
    np.testing.assert_array_equal(ours, expected)


def test_one_fold_and_its_best_model(retrained, tmp_path):
    from nastk.export import export_run

    _, _, run = retrained
    written = export_run(load_spec(run / "spec.yaml"), run, tmp_path, "torchscript", fold="1", which="best")
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["fold_1/model.ts", "inference.json"]
    info = json.loads((tmp_path / "inference.json").read_text())
    assert info["models"] == [{"fold": 1, "file": "fold_1/model.ts", "from": "model_best.pt"}]
    assert not (tmp_path / "fold_0").exists()
