"""search and retrain: schedule, phases, learning, exact resume after SIGKILL, DDP, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nastk.data.synthetic import write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.retrain import run_retrain
from nastk.engine.schedule import lr_at
from nastk.engine.search import build_supernet, run_search
from nastk.spec import validate

from conftest import run_cli
from tinydata import TINY_SPEC

TINY_ROOT: list = []


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = write_synthetic_task(tmp_path_factory.mktemp("data") / "Synth", cases=6, size=24, test_cases=1)
    TINY_ROOT[:] = [root]
    return root


def tiny_spec(tmp_path, root, **override):
    data = json.loads(json.dumps(TINY_SPEC))
    data["dataset"]["root"] = str(root)
    data["dataset"]["cache_dir"] = str(tmp_path / "cache")
    for dotted, value in override.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, validate(data, str(path))


def read_log(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    "it,expected",
    [
        (0, 0.025),
        (500, 0.1125),
        (999, 0.2 - 0.175 / 1000),
        (1000, 0.2),
        (8999, 0.2),
        (9000, 0.1),
        (16999, 0.1),
        (17000, 0.05),
        (20999, 0.05),
    ],
)
def test_search_lr_follows_the_paper(it, expected):
    assert lr_at(it, 1000, 0.025, 0.2, [8000, 16000], 0.5) == pytest.approx(expected)


@pytest.mark.parametrize(
    "it,expected", [(1000, 0.2), (9000, 0.1), (17000, 0.05), (25000, 0.025), (33000, 0.0125), (40999, 0.0125)]
)
def test_retrain_lr_follows_the_paper(it, expected):
    assert lr_at(it, 1000, 0.025, 0.2, [8000, 16000, 24000, 32000], 0.5) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ search


def test_arch_parameters_frozen_before_joint_phase(tmp_path, synth_root):
    path, spec = tiny_spec(tmp_path, synth_root, **{"search.joint_iters": 0})
    torch.manual_seed(spec.seed)
    init = build_supernet(spec).arch_parameters_numpy()
    run_search(spec, RunOptions(out=tmp_path / "run", quiet=True, deterministic=True))
    with np.load(tmp_path / "run" / "search" / "arch_params.npz") as got:
        np.testing.assert_array_equal(got["edge_logits"], init["edge_logits"])
        np.testing.assert_array_equal(got["op_logits"], init["op_logits"])
    rows = read_log(tmp_path / "run" / "search" / "log.csv")
    assert [r["phase"] for r in rows] == ["warm-up", "warm-up", "weights", "weights"]


def test_search_learns_logs_and_decodes(tmp_path, synth_root):
    path, spec = tiny_spec(tmp_path, synth_root, **{"search.weight_iters": 4, "search.joint_iters": 12})
    torch.manual_seed(spec.seed)
    init = build_supernet(spec).arch_parameters_numpy()
    run = run_search(spec, RunOptions(out=tmp_path / "run", quiet=True))
    with np.load(run / "search" / "arch_params.npz") as got:
        assert not np.array_equal(got["edge_logits"], init["edge_logits"])  # joint phase moved them
        assert not np.array_equal(got["op_logits"], init["op_logits"])
    rows = read_log(run / "search" / "log.csv")
    assert len(rows) == 18 and rows[-1]["phase"] == "joint"
    for key in (
        "lr",
        "L_seg",
        "L_entropy_alpha",
        "L_entropy_eta",
        "L_topology",
        "L_memory",
        "memory_ratio",
        "gap",
        "train_dice",
    ):
        assert key in rows[0], key
    first = np.mean([float(r["L_seg"]) for r in rows[:4]])
    last = np.mean([float(r["L_seg"]) for r in rows[-4:]])
    assert last < first, (first, last)
    arch = json.loads((run / "arch.json").read_text())
    from nastk_dints.architecture import Architecture

    assert Architecture.from_dict(arch).is_feasible()
    assert (run / "arch.png").exists() and (run / "spec.yaml").exists()


def test_search_under_a_gb_budget_logs_sigma_and_decodes_within_it(tmp_path, synth_root):
    """A budget in GB: the log carries the sigma it stands for and the expected GB, the decoded network
    fits it, and the second-best architecture of `decode --top-k` retrains with --arch."""
    # At this tiny setting the networks of the space need 0.7-2.2 MB (with the 10% margin).
    memory = {"name": "memory", "params": {"budget_gb": 0.0015, "reserve_gb": 0.0}}
    losses = [{"name": "dice_ce"}, {"name": "entropy_alpha"}, {"name": "topology", "weight": 0.001}, memory]
    path, spec = tiny_spec(
        tmp_path,
        synth_root,
        **{"losses": losses, "retrain.gpus": 1, "search.joint_iters": 2, "retrain.iters": 2},
    )
    run = run_search(spec, RunOptions(out=tmp_path / "run", quiet=True))
    rows = read_log(run / "search" / "log.csv")
    sigmas = {float(r["sigma_eff"]) for r in rows}
    assert len(sigmas) == 1 and 0 < sigmas.pop() < 1
    assert all(0 < float(r["expected_gb"]) < 0.0025 for r in rows)
    arch = json.loads((run / "arch.json").read_text())
    assert arch["memory"]["budget_gb"] == 0.0015 and arch["memory"]["estimated_gb"] <= 0.0015
    res = run_cli("decode", run, "--top-k", "2", "--no-picture")
    assert res.returncode == 0, res.stderr
    second = run / "arch_top" / "arch_2.json"
    assert json.loads(second.read_text())["memory"]["estimated_gb"] <= 0.0015
    [fold] = run_retrain(spec, second, "0", RunOptions(out=tmp_path / "second", quiet=True))
    assert (fold / "model_final.pt").is_file()


def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def _kill_midway(cmd, marker: Path, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_for(marker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def test_freezing_per_step_changes_no_update(tmp_path, synth_root, monkeypatch):
    """Each step differentiates only what it updates; the updates equal differentiating everything."""
    from nastk.engine import search as search_module

    path, spec = tiny_spec(tmp_path, synth_root, **{"search.joint_iters": 6})
    run_search(spec, RunOptions(out=tmp_path / "frozen", quiet=True, deterministic=True))
    calls = []
    monkeypatch.setattr(search_module, "set_requires_grad", lambda params, flag: calls.append(flag))
    run_search(spec, RunOptions(out=tmp_path / "everything", quiet=True, deterministic=True))
    assert calls and not all(calls)  # the patched run really skipped freezing
    torch.manual_seed(spec.seed)
    init = build_supernet(spec).arch_parameters_numpy()
    for name in ("edge_logits", "op_logits"):
        with np.load(tmp_path / "frozen/search/arch_params.npz") as a:
            with np.load(tmp_path / "everything/search/arch_params.npz") as b:
                np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
                assert np.abs(a[name] - init[name]).max() > 1e-4  # the joint phase moved them
    frozen = torch.load(tmp_path / "frozen/search/checkpoint.pt", weights_only=True)["model"]
    everything = torch.load(tmp_path / "everything/search/checkpoint.pt", weights_only=True)["model"]
    for key, value in frozen.items():
        torch.testing.assert_close(value, everything[key], rtol=1e-4, atol=1e-5)


def test_search_killed_and_resumed_is_exact(tmp_path, synth_root):
    path, _ = tiny_spec(tmp_path, synth_root, **{"search.joint_iters": 8, "search.checkpoint_every": 4})
    base = [sys.executable, "-m", "nastk", "search", str(path), "--quiet", "--deterministic"]
    full = run_cli("search", path, "--out", tmp_path / "full", "--quiet", "--deterministic")
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    ckpt = run / "search" / "checkpoint.pt"
    rc = _kill_midway(base + ["--out", str(run)], ckpt)
    assert rc == -signal.SIGKILL
    state = torch.load(ckpt, weights_only=True)
    assert 0 < state["iteration"] < 12  # really killed mid-run
    again = run_cli("search", path, "--out", run, "--quiet", "--deterministic", "--resume")
    assert again.returncode == 0, again.stderr
    with (
        np.load(tmp_path / "full" / "search" / "arch_params.npz") as a,
        np.load(run / "search" / "arch_params.npz") as b,
    ):
        np.testing.assert_allclose(a["edge_logits"], b["edge_logits"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a["op_logits"], b["op_logits"], rtol=1e-6, atol=1e-7)
    rows = read_log(run / "search" / "log.csv")
    assert len(rows) == 12  # no duplicated rows after resume
    times = [float(r["time"]) for r in rows]  # wall clock: never compared with the uninterrupted run's
    assert times == sorted(times)  # continued across the resume


def test_resume_refuses_changed_spec(tmp_path, synth_root):
    path, spec = tiny_spec(tmp_path, synth_root)
    run_search(spec, RunOptions(out=tmp_path / "run", quiet=True))
    before = (tmp_path / "run" / "search" / "checkpoint.pt").read_bytes()
    changed, _ = tiny_spec(tmp_path, synth_root, **{"search.arch.lr": 0.01})
    res = run_cli("search", changed, "--out", tmp_path / "run", "--resume", "--quiet")
    assert res.returncode == 2 and "spec changed" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "run" / "search" / "checkpoint.pt").read_bytes() == before
    fresh = run_cli("search", path, "--out", tmp_path / "run", "--quiet")  # no --resume over an existing run
    assert fresh.returncode == 2 and "--resume" in fresh.stderr


def test_non_finite_loss_stops_with_message(tmp_path, synth_root):
    path, _ = tiny_spec(tmp_path, synth_root, **{"search.weights.lr": 1e12, "search.weights.lr_start": 1e12})
    res = run_cli("search", path, "--out", tmp_path / "run", "--quiet")
    assert res.returncode != 0 and "not finite" in res.stderr and "iteration" in res.stderr
    assert "L_seg" in res.stderr and "Traceback" not in res.stderr


def test_two_process_gloo_search_keeps_arch_identical(tmp_path, synth_root):
    path, spec = tiny_spec(tmp_path, synth_root, **{"search.joint_iters": 4})
    script = tmp_path / "ddp_check.py"
    script.write_text(
        "import os, sys, numpy as np\n"
        "from nastk.spec import load_spec\n"
        "from nastk.engine.options import RunOptions\n"
        "from nastk.engine import search\n"
        "nets = []\n"
        "build = search.build_supernet\n"
        "search.build_supernet = lambda spec: nets.append(build(spec)) or nets[-1]\n"
        "search.run_search(load_spec(sys.argv[1]), RunOptions(out=sys.argv[2], quiet=True))\n"
        "params = nets[0].arch_parameters_numpy()\n"
        "np.savez(sys.argv[2] + '/rank' + os.environ['RANK'] + '.npz', **params)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(script),
            str(path),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(tmp_path / "run" / "rank0.npz") as r0, np.load(tmp_path / "run" / "rank1.npz") as r1:
        for key in ("edge_logits", "op_logits"):
            np.testing.assert_array_equal(r0[key], r1[key])
        with np.load(tmp_path / "run" / "search" / "arch_params.npz") as saved:
            np.testing.assert_array_equal(saved["edge_logits"], r0["edge_logits"])
        r0_edges = r0["edge_logits"]
    torch.manual_seed(spec.seed)
    init = build_supernet(spec).arch_parameters_numpy()
    assert np.abs(r0_edges - init["edge_logits"]).max() > 1e-3  # the joint phase moved them
    assert (tmp_path / "run" / "arch.json").exists()


# ------------------------------------------------------------------------------------------ retrain


@pytest.fixture(scope="module")
def searched(tmp_path_factory, synth_root):
    tmp = tmp_path_factory.mktemp("searched")
    path, spec = tiny_spec(tmp, synth_root)
    run_search(spec, RunOptions(out=tmp / "run", quiet=True))
    return tmp, path, spec


def test_retrain_bad_input_writes_nothing(searched, tmp_path):
    _, path, _ = searched
    missing = run_cli("retrain", path, "--arch", tmp_path / "nope" / "arch.json", "--out", tmp_path / "out")
    assert missing.returncode == 2 and "arch.json" in missing.stderr and "not found" in missing.stderr
    bad_fold = run_cli(
        "retrain", path, "--arch", searched[0] / "run" / "arch.json", "--fold", "7", "--out", tmp_path / "o2"
    )
    assert bad_fold.returncode == 2 and "--fold" in bad_fold.stderr and "out of range" in bad_fold.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_retrain_learns(searched, tmp_path):
    """Train Dice (mean over foreground classes, hard labels) on the training patches rises.

    The first iterations (an untrained net) score under 0.15 on foreground; a mean of 0.25 over the
    last 20 iterations of this 2-layer, 8-filter net can only come from segmenting the organ (the
    larger class) well above chance, since predicting all-background scores 0.
    """
    tmp, _, _ = searched
    path, spec = tiny_spec(
        tmp_path,
        Path(TINY_ROOT[0]),
        **{
            "retrain.iters": 160,
            "retrain.milestones": [1000],
            "retrain.filter_multiplier": 4.0,
            "retrain.val_every": 1000,
            "search.log_every": 1,
        },
    )
    run_retrain(spec, tmp / "run" / "arch.json", "0", RunOptions(out=tmp_path / "rt", quiet=True))
    rows = read_log(tmp_path / "rt" / "retrain" / "fold_0" / "log.csv")
    dice = [float(r["train_dice"]) for r in rows]
    assert np.mean(dice[:3]) < 0.15 and np.mean(dice[-20:]) > 0.25, (dice[:3], dice[-20:])
    fold = tmp_path / "rt" / "retrain" / "fold_0"
    for name in ("model_best.pt", "model_final.pt", "val_metrics.csv"):
        assert (fold / name).exists(), name
    final = torch.load(fold / "model_final.pt", weights_only=True)
    assert final["fold"] == 0 and final["iteration"] == 162 and "arch" in final
    vals = read_log(fold / "val_metrics.csv")
    assert {r["case"] for r in vals} == set(
        json.loads(
            (Path(spec.dataset.cache_dir))
            .joinpath(
                next(p.name for p in Path(spec.dataset.cache_dir).iterdir() if p.is_dir()), "splits.json"
            )
            .read_text()
        )[0]["val"]
    )


def test_retrain_killed_and_resumed_is_exact(searched, tmp_path):
    tmp, _, _ = searched
    path, _ = tiny_spec(
        tmp_path,
        Path(TINY_ROOT[0]),
        **{"retrain.iters": 38, "retrain.checkpoint_every": 8, "retrain.val_every": 20},
    )
    arch = tmp / "run" / "arch.json"
    full = run_cli("retrain", path, "--arch", arch, "--out", tmp_path / "full", "--quiet", "--deterministic")
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "nastk",
        "retrain",
        str(path),
        "--arch",
        str(arch),
        "--out",
        str(run),
        "--quiet",
        "--deterministic",
    ]
    assert _kill_midway(cmd, run / "retrain" / "fold_0" / "checkpoint.pt") == -signal.SIGKILL
    assert not (run / "retrain" / "fold_0" / "model_final.pt").exists()
    again = run_cli("retrain", path, "--arch", arch, "--out", run, "--quiet", "--deterministic", "--resume")
    assert again.returncode == 0, again.stderr
    a = torch.load(tmp_path / "full" / "retrain" / "fold_0" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(run / "retrain" / "fold_0" / "model_final.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_gpu_options_run_on_cpu(tmp_path, synth_root):
    """--amp bf16, channels_last_3d and cell checkpointing all complete a tiny search."""
    path, _ = tiny_spec(tmp_path, synth_root, **{"search.joint_iters": 2})
    res = run_cli(
        "search",
        path,
        "--out",
        tmp_path / "run",
        "--quiet",
        "--amp",
        "bf16",
        "--channels-last",
        "--checkpoint-cells",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "run" / "arch.json").exists()
    bad = run_cli("search", path, "--out", tmp_path / "run2", "--amp", "fp8")
    assert bad.returncode == 2 and "--amp" in bad.stderr


def test_cell_checkpointing_gives_the_same_gradients(paper_ops):
    from nastk_dints.space import SPACE

    net = SPACE.build_supernet({"layers": 2, "depths": 2, "filters": 2}, paper_ops, 1, 2, (16, 16, 16))
    x = torch.randn(1, 1, 16, 16, 16)
    grads = []
    for flag in (False, True):
        net.zero_grad()
        net.checkpoint_cells = flag
        net(x).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor
def test_compiled_retrain_matches_eager(searched, tmp_path, monkeypatch):
    """--compile trains the same network: the same losses step by step, the same checkpoint keys (no
    torch.compile prefix) and the same weights, to float tolerance."""
    tmp, _, _ = searched
    path, spec = tiny_spec(
        tmp_path,
        Path(TINY_ROOT[0]),
        **{
            "retrain.iters": 3,
            "retrain.val_every": 1000,
            "retrain.milestones": [1000],
            "search.log_every": 1,
        },
    )
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or real_compile(model))
    finals, losses = [], []
    for name, flag in (("eager", False), ("compiled", True)):
        opts = RunOptions(out=tmp_path / name, quiet=True, deterministic=True, compile=flag)
        run_retrain(spec, tmp / "run" / "arch.json", "0", opts)
        fold = tmp_path / name / "retrain" / "fold_0"
        finals.append(torch.load(fold / "model_final.pt", weights_only=True)["model"])
        losses.append([float(r["L_seg"]) for r in read_log(fold / "log.csv")])
    assert len(compiled) == 1  # only the --compile run compiled, once
    assert len(losses[0]) >= 3 and len(set(losses[0])) > 1  # it trained: the loss changed
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-3, atol=1e-4)


def test_retrain_log_every_sets_the_retraining_log_rows(searched, tmp_path):
    """retrain.log_every thins the retraining log; unset, retraining logs as often as search.log_every."""
    tmp, _, _ = searched
    rows = {}
    for name, every in (("unset", None), ("every3", 3)):
        overrides = {"retrain.iters": 6, "retrain.val_every": 1000, "retrain.milestones": [1000]}
        overrides["search.log_every"] = 1
        if every is not None:
            overrides["retrain.log_every"] = every
        (tmp_path / name).mkdir()
        _, spec = tiny_spec(tmp_path / name, Path(TINY_ROOT[0]), **overrides)
        run_retrain(spec, tmp / "run" / "arch.json", "0", RunOptions(out=tmp_path / name / "run", quiet=True))
        rows[name] = [
            int(r["iteration"]) for r in read_log(tmp_path / name / "run" / "retrain" / "fold_0" / "log.csv")
        ]
    assert len(rows["every3"]) < len(rows["unset"])
    assert set(rows["every3"]) < set(rows["unset"])


def test_search_amp_comes_from_the_spec_unless_the_option_is_given(tmp_path, synth_root, monkeypatch, capfd):
    """search.amp (written by nastk plan) is what `nastk search` runs with; --amp overrides it."""
    import nastk.engine.search as engine_search

    from conftest import cli_in_process

    seen = []
    monkeypatch.setattr(engine_search, "run_search", lambda spec, opts: seen.append(opts.amp))
    path, _ = tiny_spec(tmp_path, synth_root, **{"search.amp": "bf16"})
    for extra in ([], ["--amp", "off"]):
        code, _, err = cli_in_process(capfd, "search", path, "--out", tmp_path / "run", *extra)
        assert code == 0, err
    plain, _ = tiny_spec(tmp_path, synth_root)
    assert cli_in_process(capfd, "search", plain, "--out", tmp_path / "run")[0] == 0
    assert seen == ["bf16", "off", "off"]
