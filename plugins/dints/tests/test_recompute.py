"""Selective recomputation: the search step's saved bytes for any recomputed set (against the saved-tensor
hook, to the byte), the knapsack (against enumeration), a lower target recomputes more, and results do not
change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nastk_dints import memory
from nastk_dints import recompute as rc
from nastk_dints.params import DiNTSParams
from nastk_dints.supernet import Supernet


def _net(ops, layers, depths, filters, patch):
    params = DiNTSParams(layers=layers, depths=depths).model_copy(update={"filters": filters})
    return Supernet(params, ops, 1, 3, patch).train()


def _measured(net, step: str, amp: str, batch: int = 1) -> int:
    """What one step's forward really saves for backward (weights or architecture trainable), counted
    by a saved-tensor hook: the storages still saved when the forward has returned."""
    for p in net.weight_parameters():
        p.requires_grad_(step == "weight")
    for p in net.arch_parameters():
        p.requires_grad_(step == "arch")
    try:
        shape = (batch, 1, *net.patch_size)
        return memory.live_saved_bytes(net, shape, amp, input_requires_grad=False)
    finally:
        for p in net.parameters():
            p.requires_grad_(True)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_model_equals_measured_saved_bytes_for_any_recomputed_set(paper_ops, amp):
    layers, depths, filters, patch, batch = 3, 3, 4, (16, 16, 16), 2 if amp == "bf16" else 1
    model = rc.measure(layers, depths, filters, paper_ops, 1, 3, patch, batch, amp)
    net = _net(paper_ops, layers, depths, filters, patch)
    n_edges = 3 * depths - 2
    rng = np.random.default_rng(1)
    masks = [np.zeros((layers, n_edges), bool), np.ones((layers, n_edges), bool)]
    masks += [rng.random((layers, n_edges)) < q for q in (0.2, 0.5, 0.8)]
    seen = set()
    for mask in masks:
        net.recompute = frozenset(rc.mask_to_names(mask, depths))
        for step in rc.STEPS:
            got = _measured(net, step, amp, batch)
            assert model.steps[step].saved(mask) == got, (step, mask.astype(int))
            seen.add(got)
    # recomputation really moves the bytes: none > random subsets > all
    assert len(seen) >= 2 * len(masks) - 1
    assert model.peak(masks[1]) < model.peak(masks[2]) or model.peak(masks[1]) < model.peak(masks[0])
    assert model.peak(masks[1]) < 0.5 * model.peak(masks[0])


def _toy_model(layers: int, depths: int, seed: int) -> rc.SearchStepMemory:
    """Random parts with the structure of a measured model (some cells keep their input, some do not)."""
    rng = np.random.default_rng(seed)
    n_edges = 3 * depths - 2
    steps = {}
    for step in rc.STEPS:
        steps[step] = rc.StepBytes(
            layers,
            depths,
            outside=float(rng.integers(1000, 2000)),
            alpha=64.0,
            node=rng.integers(50, 400, depths).astype(float),
            own=rng.integers(100, 1000, (2, n_edges)).astype(float),
            saves_input=rng.random((2, n_edges)) < 0.5,
            saves_alpha=np.ones((2, n_edges), bool),
        )
    return rc.SearchStepMemory(steps, rng.uniform(0.1, 1.0, n_edges))


@pytest.mark.parametrize("layers,depths,seed", [(2, 2, 0), (2, 2, 1), (2, 3, 2), (3, 2, 3)])
def test_knapsack_is_exact_against_enumeration(layers, depths, seed):
    model = _toy_model(layers, depths, seed)
    none = np.zeros((layers, 3 * depths - 2), bool)
    lo, hi = model.peak(~none), model.peak(none)
    masks, secs_all, peaks = rc.enumerate_subsets(model)
    for frac in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        target = lo + frac * (hi - lo)
        fast = rc.choose(model, target)
        feasible = peaks <= target
        assert (fast is None) == (not feasible.any())
        if fast is None:
            continue
        mask, secs, nbytes = fast
        assert secs == pytest.approx(secs_all[feasible].min(), abs=1e-12)
        assert nbytes <= target + 1e-6
        assert model.peak(mask) <= target + 1e-6  # the true bytes of both steps fit too
    assert rc.choose(model, lo - 1000) is None  # below even every cell recomputed
    full = rc.choose(model, hi + 1)
    assert full is not None and not full[0].any()  # a target that fits without recomputation: none


def test_lower_target_recomputes_more_and_the_measured_bytes_fall_below_it(paper_ops):
    layers, depths, filters, patch = 3, 3, 4, (16, 16, 16)
    net = _net(paper_ops, layers, depths, filters, patch)
    state = net.step_state_bytes()
    none_bytes = max(_measured(net, s, "off") for s in rc.STEPS)
    counts = []
    for frac in (0.8, 0.5, 0.3):
        target = frac * none_bytes
        choice = net.choose_recompute(target + state, 1, "off", "cpu")
        counts.append(len(choice["parts"]))
        assert choice["expected_bytes"] <= target + state
        measured = max(_measured(net, s, "off") for s in rc.STEPS)
        assert measured <= target
        assert measured == choice["expected_bytes"] - state
    assert counts[0] < counts[1] < counts[2], counts
    with pytest.raises(ValueError, match="every cell recomputed"):
        net.choose_recompute(state + 1000, 1, "off", "cpu")


def test_recomputation_changes_no_result(paper_ops):
    """A few weight + architecture steps: the same losses, weights and architecture parameters with
    none, all or a random half of the cells recomputed."""
    layers, depths, filters, patch = 2, 3, 4, (16, 16, 16)
    x = torch.randn(1, 1, *patch)
    y = torch.randint(0, 3, (1, *patch))
    rng = np.random.default_rng(0)
    results = []
    for mode in ("none", "all", "half"):
        torch.manual_seed(0)
        net = _net(paper_ops, layers, depths, filters, patch)
        if mode == "all":
            net.checkpoint_cells = True
        elif mode == "half":
            net.recompute = frozenset(rc.mask_to_names(rng.random((layers, 3 * depths - 2)) < 0.5, depths))
            assert 0 < len(net.recompute) < len(net.cells)
        opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
        opt_a = torch.optim.Adam(net.arch_parameters(), lr=0.05)
        losses = []
        for _ in range(3):
            for opt, frozen in ((opt_w, net.arch_parameters()), (opt_a, net.weight_parameters())):
                for p in frozen:
                    p.requires_grad_(False)
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                for p in frozen:
                    p.requires_grad_(True)
        results.append((losses, [p.detach().clone() for p in net.parameters()]))
    for losses, params in results[1:]:
        np.testing.assert_allclose(losses, results[0][0], rtol=1e-5)
        for a, b in zip(params, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def synth_task(tmp_path_factory):
    from nastk.data.synthetic import write_synthetic_task

    return write_synthetic_task(tmp_path_factory.mktemp("data") / "Synth", cases=6, size=24, test_cases=1)


def test_search_with_recompute_none_all_auto_gives_the_same_result(tmp_path, synth_task):
    """`nastk search` with search.recompute none, all and auto (a target between the two): the same
    losses at every logged iteration and the same architecture parameters; auto says what it chose."""
    import csv
    import json

    from nastk.engine.options import RunOptions
    from nastk.engine.search import run_search
    from nastk.network import build_supernet
    from nastk.spec import validate

    from tinydata import TINY_SPEC

    def spec_for(mode: str, target: float | None = None):
        data = json.loads(json.dumps(TINY_SPEC))
        data["dataset"].update(root=str(synth_task), cache_dir=str(tmp_path / "cache"))
        data["search"].update(recompute=mode, memory_target_gb=target)
        return validate(data, str(tmp_path / f"{mode}.yaml"))

    none_spec = spec_for("none")
    net = build_supernet(none_spec)
    p, batch = net.params, none_spec.search.batch_size
    model = rc.measure(p.layers, p.depths, p.filters, net._ops, 1, 3, net.patch_size, batch)
    empty = np.zeros((p.layers, len(net.edges)), bool)
    target = net.step_state_bytes() + 0.5 * (model.peak(empty) + model.peak(~empty))
    results = {}
    for mode, spec in (
        ("none", none_spec),
        ("all", spec_for("all")),
        ("auto", spec_for("auto", target / 2**30)),
    ):
        run = tmp_path / mode
        run_search(spec, RunOptions(out=run, quiet=True, device="cpu"))
        with open(run / "search" / "log.csv") as fh:
            rows = list(csv.DictReader(fh))
        losses = np.array([[float(r[k]) for k in r if k.startswith("L_") and r[k] != ""] for r in rows])
        params = dict(np.load(run / "search" / "arch_params.npz"))
        results[mode] = (losses, params, (run / "log.txt").read_text())
    for mode in ("all", "auto"):
        np.testing.assert_allclose(results[mode][0], results["none"][0], rtol=1e-5, atol=1e-7)
        for key, value in results["none"][1].items():
            np.testing.assert_allclose(results[mode][1][key], value, rtol=1e-5, atol=1e-6)
    log = results["auto"][2]
    assert "search.recompute: auto:" in log
    chosen = int(log.split("search.recompute: auto: ")[1].split(" cells")[0])
    assert 0 < chosen < p.layers * len(net.edges)
    assert "search.recompute: all" in results["all"][2]


def test_auto_without_a_target_is_a_spec_error_naming_the_field(tmp_path, capfd):
    from conftest import cli_in_process

    bad = tmp_path / "spec.yaml"
    bad.write_text("search:\n  recompute: auto\n")
    code, out, err = cli_in_process(capfd, "validate", str(bad))
    assert code == 2 and "Traceback" not in err
    assert "search.memory_target_gb" in err and "recompute: auto" in err and bad.name in err
    bad.write_text("search:\n  recompute: sometimes\n")
    code, out, err = cli_in_process(capfd, "validate", str(bad))
    assert code == 2 and "search.recompute" in err


def test_plan_sizing_with_every_cell_recomputed_equals_the_measurement(paper_ops):
    """What `nastk plan` assumes for search.recompute: auto at its least (every cell recomputed): the
    search step's saved bytes, measured, plus the parameter state; and it is well below no recomputation."""
    from nastk.plugin import TrainingSetting
    from nastk_dints import sizing

    layers, depths, filters, patch = 3, 3, 4, (32, 16, 16)
    params = DiNTSParams(layers=layers, depths=depths).model_copy(update={"filters": filters})
    setting = TrainingSetting(patch, 1, 1.0, "off", 1, 3)
    net = _net(paper_ops, layers, depths, filters, patch)
    state = net.step_state_bytes()
    net.checkpoint_cells = True
    measured = max(_measured(net, s, "off") for s in rc.STEPS)
    assert sizing.supernet_memory_recomputed(params, paper_ops, setting) == measured + state
    plain = sizing.supernet_memory(params, paper_ops, setting) - state
    assert measured < 0.5 * plain  # activations: recomputation halves them at least
    assert 1.0 < sizing.recompute_slowdown(params, paper_ops, setting) < 4 / 3 + 1e-9


def test_under_ddp_rank_0_chooses_and_every_rank_recomputes_the_same_cells(tmp_path, synth_task):
    """search.recompute: auto on two gloo ranks: rank 0 measures and chooses, rank 1 measures nothing and
    recomputes the same cells (each rank timing its own cells could pick different ones)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from nastk.network import build_supernet
    from nastk.spec import validate

    from tinydata import TINY_SPEC

    data = json.loads(json.dumps(TINY_SPEC))
    data["dataset"].update(root=str(synth_task), cache_dir=str(tmp_path / "cache"))
    data["search"].update(batch_size=2, joint_iters=2)
    net = build_supernet(validate(data))
    p = net.params
    model = rc.measure(p.layers, p.depths, p.filters, net._ops, 1, 3, net.patch_size, 1)  # 1 per rank
    empty = np.zeros((p.layers, len(net.edges)), bool)
    target = net.step_state_bytes() + 0.5 * (model.peak(empty) + model.peak(~empty))
    data["search"].update(recompute="auto", memory_target_gb=float(target) / 2**30)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    script = tmp_path / "ddp_recompute.py"
    script.write_text(
        "import json, os, sys\n"
        "from nastk.spec import load_spec\n"
        "from nastk.engine.options import RunOptions\n"
        "from nastk.engine import search\n"
        "from nastk_dints import recompute as rc\n"
        "calls, nets = [], []\n"
        "measure = rc.measure\n"
        "rc.measure = lambda *a, **k: calls.append(1) or measure(*a, **k)\n"
        "build = search.build_supernet\n"
        "search.build_supernet = lambda spec: nets.append(build(spec)) or nets[-1]\n"
        "search.run_search(load_spec(sys.argv[1]), RunOptions(out=sys.argv[2], quiet=True, device='cpu'))\n"
        "out = {'measured': len(calls), 'cells': sorted(nets[0].recompute)}\n"
        "open(sys.argv[2] + '/rank' + os.environ['RANK'] + '.json', 'w').write(json.dumps(out))\n"
    )
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(script), str(spec), str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rank0, rank1 = (json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["measured"] == 1 and rank1["measured"] == 0
    assert rank0["cells"] == rank1["cells"] and 0 < len(rank0["cells"]) < p.layers * len(net.edges)
