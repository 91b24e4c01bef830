"""nastk export: each format runs in a process without nastk and matches nastk's own forward; a sliding
window written here from inference.json alone reproduces `nastk predict`; bad runs get one line."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from nastk.network import network_from_model
from nastk.spec import load_spec

from conftest import run_cli

# Any import of nastk or its plugin fails in the loading process: the exported file must stand alone.
NO_NASTK = "import sys; sys.modules['nastk'] = None; sys.modules['nastk_dints'] = None\n"

LOADERS = {
    "torchscript": "net = torch.jit.load(sys.argv[1])",
    "pt2": "net = torch.export.load(sys.argv[1]).module()",
}

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
        target = tmp_path_factory.mktemp(f"export_{fmt}")
        res = run_cli("export", run, "--format", fmt, "--out", target)
        assert res.returncode == 0, res.stderr
        out[fmt] = target
    return out


@pytest.mark.parametrize("fmt", list(LOADERS))
def test_exported_network_matches_nastk_forward_without_nastk(fmt, retrained, exported, tmp_path):
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
    unknown = run_cli("export", run, "--format", "tflite", "--out", tmp_path / "a")
    assert unknown.returncode == 2 and "--format" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "spec.yaml", bare / "spec.yaml")
    shutil.copy(run / "plan.json", bare / "plan.json")
    none = run_cli("export", bare, "--format", "torchscript", "--out", tmp_path / "b")
    assert none.returncode == 2 and "no retrained fold" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    missing = run_cli("export", run, "--format", "torchscript", "--fold", "7", "--out", tmp_path / "c")
    assert missing.returncode == 2 and "--fold" in missing.stderr
