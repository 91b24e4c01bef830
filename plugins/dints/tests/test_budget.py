"""Memory budgets (Sec. 3.5): sigma over its whole range, budgets in GB, decoding that guarantees them.

The behaviour is tested, not only the formulas: which way each knob moves the search and the
decoded network, and the constrained decoding against brute-force enumeration of every path.
"""

import json

import numpy as np
import pytest
import torch
import yaml

from nastk.errors import DataError
from nastk.setting import MemoryBudget, TrainingSetting, retrain_setting
from nastk.spec import validate
from nastk_dints import losses
from nastk_dints.architecture import Architecture
from nastk_dints.budget import memory_model
from nastk_dints.discretize import best_paths, decode, decode_best, shortest_feasible_path
from nastk_dints.memory import saved_bytes
from nastk_dints.space import SPACE
from nastk_dints.topology import topology

from conftest import run_cli
from tinydata import TINY_SPEC, merged

# The measurement setting: L=4, D=3, 8 filters, 32^3, the five paper ops.
SMALL = {"layers": 4, "depths": 3, "filters": 8}


@pytest.fixture
def supernet(paper_ops):
    return SPACE.build_supernet(SMALL, paper_ops, 1, 3, (32, 32, 32))


def densest_logits(net) -> tuple[torch.Tensor, torch.Tensor]:
    """Every edge on and the costliest op on each: the network M_a stands for."""
    _, op_cost = net.memory_costs()
    edges = torch.full_like(net.edge_logits, 40.0)
    ops = torch.full_like(net.op_logits, -40.0)
    ops[..., torch.as_tensor(op_cost).argmax(-1)] = 40.0
    return edges, ops


def sparsest_logits(net) -> tuple[torch.Tensor, torch.Tensor]:
    """One edge per layer (the coarsest same-depth edge) and skip, the op that saves nothing."""
    edges = torch.full_like(net.edge_logits, -40.0)
    edges[:, -1] = 40.0
    ops = torch.full_like(net.op_logits, -40.0)
    ops[..., 0] = 40.0
    return edges, ops


# ----------------------------------------------------------------------------------------- sigma


def test_densest_network_reaches_one_and_sparsest_stays_small(supernet):
    r, c = supernet.memory_costs()
    dense = float(losses.memory_ratio(*densest_logits(supernet), r, c))
    sparse = float(losses.memory_ratio(*sparsest_logits(supernet), r, c))
    assert dense == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= sparse < 0.05
    # The "every op active" reading normalised by L * sum_e (r_e + sum_n M_n): its cap was ~0.38.
    old_m_a = supernet.params.layers * (r.sum() + c.sum())
    old_dense = float(losses.expected_memory(*densest_logits(supernet), r, c)) / old_m_a
    assert old_dense < 0.4


def _arch_grad(net, sigma, normalizer="paper"):
    net.zero_grad()
    r, c = net.memory_costs()
    losses.memory_value(net.edge_logits, net.op_logits, r, c, sigma, normalizer).backward()
    return net.edge_logits.grad.clone(), net.op_logits.grad.clone()


def test_sigma_02_and_08_pull_opposite_ways_at_initialisation(supernet):
    r, c = supernet.memory_costs()
    start = float(losses.memory_ratio(supernet.edge_logits.detach(), supernet.op_logits.detach(), r, c))
    assert 0.2 < start < 0.8  # ~0.42: below the costliest network, above the sparsest
    low, high = _arch_grad(supernet, 0.2), _arch_grad(supernet, 0.8)
    assert torch.all(low[0] * high[0] < 0)  # every edge logit: opposite directions
    assert torch.equal(torch.sign(low[0]), torch.ones_like(low[0]))  # sigma 0.2: edges off

    def ratio_after_steps(sigma):
        net = SPACE.build_supernet(SMALL, supernet._ops, 1, 3, (32, 32, 32))
        net.load_state_dict(supernet.state_dict())
        opt = torch.optim.Adam(net.arch_parameters(), lr=0.05)
        for _ in range(20):
            opt.zero_grad()
            losses.memory_value(net.edge_logits, net.op_logits, r, c, sigma).backward()
            opt.step()
        return float(losses.memory_ratio(net.edge_logits.detach(), net.op_logits.detach(), r, c))

    assert ratio_after_steps(0.2) < start - 0.1
    assert ratio_after_steps(0.8) > start + 0.1


def test_sigma_05_and_08_give_different_gradients(supernet):
    """With the old normaliser both were above every reachable ratio and gave identical gradients."""
    g05, g08 = _arch_grad(supernet, 0.5), _arch_grad(supernet, 0.8)
    assert torch.equal(g05[0], g08[0])  # both above the initial ratio: the same push up, for now
    edges, ops = densest_logits(supernet)
    with torch.no_grad():  # half way to the densest network the ratio passes 0.5 but not 0.8
        supernet.edge_logits.copy_(edges * 0.02)
        supernet.op_logits.copy_(ops * 0.02)
    r, c = supernet.memory_costs()
    ratio = float(losses.memory_ratio(supernet.edge_logits.detach(), supernet.op_logits.detach(), r, c))
    assert 0.5 < ratio < 0.8
    g05, g08 = _arch_grad(supernet, 0.5), _arch_grad(supernet, 0.8)
    assert torch.all(g05[0] * g08[0] < 0)


def test_monai_normaliser_is_blind_to_the_op_choice(supernet):
    r, c = supernet.memory_costs()
    edges = torch.zeros_like(supernet.edge_logits)  # every edge equally likely
    cheap, costly = torch.zeros_like(supernet.op_logits), torch.zeros_like(supernet.op_logits)
    cheap[..., 0], costly[..., 2] = 5.0, 5.0  # skip vs a P3D op
    paper = [float(losses.memory_ratio(edges, o, r, c, "paper")) for o in (cheap, costly)]
    monai = [float(losses.memory_ratio(edges, o, r, c, "monai")) for o in (cheap, costly)]
    assert paper[1] > paper[0] + 0.3
    assert monai[0] == pytest.approx(monai[1], rel=1e-12)
    with pytest.raises(ValueError, match="normalizer"):
        losses.memory_ratio(edges, cheap, r, c, "other")


# ------------------------------------------------------------------------------------ budget_gb


def tiny_setting(**kw) -> TrainingSetting:
    base = dict(
        patch_size=(32, 32, 32), batch_size=2, filter_multiplier=2.0, amp="off", in_channels=1, num_classes=3
    )
    return TrainingSetting(**{**base, **kw})


def test_budget_gb_sets_sigma_from_the_retraining_setting(supernet):
    model = supernet.memory_model(tiny_setting())
    smallest, largest = model.smallest(4), model.largest(4)
    budget = MemoryBudget(0.0, tiny_setting(), reserve_gb=0.0)
    mid_gb = budget.required_gb((smallest + largest) / 2)
    sigmas = []
    for gb in (mid_gb * 0.9, mid_gb, mid_gb * 1.1):
        loss = losses.memory(budget_gb=gb, reserve_gb=0.0)
        loss.bind(supernet, tiny_setting())
        sigmas.append(loss.sigma)
        row = loss.diagnostics(supernet)
        assert row["sigma_eff"] == loss.sigma and row["expected_gb"] > 0
        assert row["budget_gb"] == gb  # the report reads the budget from search/log.csv
    assert 0 < sigmas[0] < sigmas[1] < sigmas[2] < 1  # a bigger budget, a bigger target
    tighter = losses.memory(budget_gb=mid_gb, reserve_gb=0.0, margin=0.3)
    tighter.bind(supernet, tiny_setting())
    assert tighter.sigma < sigmas[1]  # a bigger margin leaves the cells less
    # The budget is in the loss's units: the largest network at sigma 1, what fits exactly at its target.
    assert sigmas[1] == pytest.approx(
        ((smallest + largest) / 2 - model.total.stem.sum() - model.total.head.max())
        / losses.largest_memory(4, model.total.resample, model.total.op)
    )


def test_budget_loss_needs_binding(supernet):
    with pytest.raises(RuntimeError, match="bind"):
        losses.memory(budget_gb=8)(supernet)


def test_setting_knobs_move_the_estimate(paper_ops):
    arch = Architecture.load("specs/archs/dints-cvpr2021.json")

    def total(**kw):
        setting = tiny_setting(**kw)
        return memory_model(4, 8, {n: paper_ops[n] for n in arch.op_names}, setting).network(
            arch.edge_mask, arch.op_index
        )

    base = total()
    assert total(batch_size=4)["activations"] == pytest.approx(2 * base["activations"], rel=0.01)
    assert total(batch_size=4)["parameters"] == base["parameters"]
    assert total(patch_size=(64, 32, 32))["activations"] > 1.9 * base["activations"]
    assert total(filter_multiplier=1.0)["parameters"] < 0.3 * base["parameters"]
    # Under autocast feature maps are saved in half precision, but every conv also saves a half
    # copy of its weight: that pays at the paper's 96^3, not at a 32^3 patch with 32 filters.
    paper = total(patch_size=(96, 96, 96))["activations"]
    assert total(patch_size=(96, 96, 96), amp="bf16")["activations"] < 0.7 * paper
    assert total(amp="bf16")["activations"] > base["activations"]


def test_spec_turns_gpus_and_amp_into_the_per_gpu_setting():
    spec = validate({})
    assert retrain_setting(spec).batch_size == 2  # paper: 8 x 2 = 16 patches over 8 GPUs
    spec = validate({"retrain": {"gpus": 4, "amp": "bf16"}})
    assert retrain_setting(spec).batch_size == 4 and retrain_setting(spec).amp == "bf16"


# ------------------------------------------------------------------------------ validate errors

BUDGET_SPEC = merged(
    TINY_SPEC,
    {
        "space": {"params": SMALL},
        "search": {"patch_size": [32, 32, 32]},
        "retrain": {"patch_size": [32, 32, 32], "gpus": 1},
        "inference": {"patch_size": [32, 32, 32]},
    },
)


def with_memory(params: dict) -> dict:
    return merged(BUDGET_SPEC, {"losses": [{"name": "dice_ce"}, {"name": "memory", "params": params}]})


@pytest.mark.parametrize(
    "params,field,needle",
    [
        ({"budget_gb": -2}, "losses[1].params.budget_gb", "greater than 0"),
        ({"budget_gb": 0}, "losses[1].params.budget_gb", "greater than 0"),
        ({"budget_gb": "lots"}, "losses[1].params.budget_gb", "valid number"),
        ({"budget_gb": ".nan"}, "losses[1].params.budget_gb", "finite"),
        ({"budget_gb": True}, "losses[1].params.budget_gb", "boolean"),
        ({"budget_gb": 8, "sigma": 0.5}, "losses[1].params", "not both"),
        ({"budget_gb": 8, "normalizer": "monai"}, "losses[1].params", "goes with sigma"),
        ({"sigma": 1.5}, "losses[1].params.sigma", "less than or equal to 1"),
        ({"budget_gb": 0.5, "reserve_gb": 1.0}, "losses[1].params", "leaves nothing"),
    ],
)
def test_bad_budget_is_one_error_naming_the_field(tmp_path, params, field, needle):
    text = yaml.safe_dump(with_memory(params)).replace("'.nan'", ".nan")
    (tmp_path / "s.yaml").write_text(text)
    res = run_cli("validate", tmp_path / "s.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert field in res.stderr and needle in res.stderr, res.stderr


def test_validate_refuses_a_budget_below_the_smallest_network_and_warns_above_the_largest(tmp_path):
    # This space at this setting needs 0.019 GB (smallest) to 0.154 GB (largest) with the 10% margin.
    spec = validate(with_memory({"budget_gb": 0.08, "reserve_gb": 0}))  # binds: between the two
    assert spec.warnings == []
    (tmp_path / "low.yaml").write_text(yaml.safe_dump(with_memory({"budget_gb": 0.01, "reserve_gb": 0})))
    res = run_cli("validate", tmp_path / "low.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "budget_gb" in res.stderr and "smallest network" in res.stderr and " GB" in res.stderr
    (tmp_path / "high.yaml").write_text(yaml.safe_dump(with_memory({"budget_gb": 1.0, "reserve_gb": 0})))
    res = run_cli("validate", tmp_path / "high.yaml")
    assert res.returncode == 0, res.stderr
    assert "never binds" in res.stderr and "largest network" in res.stderr
    bad_gpus = merged(with_memory({"budget_gb": 0.08, "reserve_gb": 0}), {"retrain": {"gpus": 3}})
    with pytest.raises(Exception, match="retrain.gpus"):
        validate(bad_gpus)


# -------------------------------------------------------------------- constrained decoding, exact


def all_paths(depths: int, n_layers: int, cost: np.ndarray, mem: np.ndarray):
    """(patterns [P, L], cost [P], memory [P]) of every feasible path, enumerated from the definition."""
    topo = topology(depths)
    followers = [
        np.flatnonzero(topo.pattern_sources == topo.pattern_targets[j]) for j in range(topo.num_patterns)
    ]
    paths = np.arange(topo.num_patterns)[:, None]
    for _ in range(1, n_layers):
        last = paths[:, -1]
        counts = np.array([len(followers[j]) for j in last])
        nxt = np.concatenate([followers[j] for j in last])
        paths = np.hstack([np.repeat(paths, counts, axis=0), nxt[:, None]])
    layers = np.arange(n_layers)
    return paths, cost[layers, paths].sum(1), mem[layers, paths].sum(1)


@pytest.mark.parametrize(("depths", "n_layers"), [(2, 1), (2, 2), (2, 3), (2, 4), (3, 2), (3, 3), (3, 4)])
def test_budgeted_k_best_paths_equal_enumeration(depths, n_layers):
    rng = np.random.default_rng(depths * 10 + n_layers)
    m = topology(depths).num_patterns
    cost = rng.exponential(1.0, (n_layers, m))
    mem = rng.uniform(0.0, 10.0, (n_layers, m))
    paths, path_cost, path_mem = all_paths(depths, n_layers, cost, mem)
    budgets = [np.quantile(path_mem, q) for q in (0.0, 0.02, 0.5)] + [path_mem.min() * 0.999, np.inf]
    for budget in budgets:
        fits = path_mem <= budget
        for k in (1, 3):
            got = best_paths(cost, mem, budget, depths, k)
            expected = np.sort(path_cost[fits])[:k]
            np.testing.assert_allclose([c for _, c, _ in got], expected, rtol=1e-12)
            assert len({tuple(p) for p, _, _ in got}) == len(got)  # distinct
            for path, c, used in got:
                assert topology(depths).pattern_targets[path[:-1]].tolist() == (
                    topology(depths).pattern_sources[path[1:]].tolist()
                )
                assert used <= budget and used == pytest.approx(mem[np.arange(n_layers), path].sum())
                assert c == pytest.approx(cost[np.arange(n_layers), path].sum())
    unconstrained, total = shortest_feasible_path(cost, depths)
    assert best_paths(cost, mem, np.inf, depths)[0][1] == pytest.approx(total)


def test_decoding_under_a_budget_fits_it_and_says_what_does_not(paper_ops):
    rng = np.random.default_rng(5)
    edges, ops = rng.normal(size=(4, 7)) + 1.0, rng.normal(size=(4, 7, 5))
    setting = tiny_setting()
    free = decode(edges, ops, space_params={"filters": 8})
    model = memory_model(3, 8, paper_ops, setting)
    used = model.network(free.edge_mask, free.op_index)["total"]
    smallest_path, _ = shortest_feasible_path(model.pattern_bytes(ops.argmax(-1)), 3)
    smallest = model.pattern_bytes(ops.argmax(-1))[np.arange(4), smallest_path].sum()
    budget = MemoryBudget(0.0, setting).required_gb((used + smallest) / 2)
    [arch] = decode_best(edges, ops, space_params={"filters": 8}, budget=MemoryBudget(budget, setting))
    got = model.network(arch.edge_mask, arch.op_index)["total"]
    assert got <= (used + smallest) / 2 < used
    assert arch.is_feasible() and arch.path_cost >= free.path_cost
    assert arch.extra["memory"]["estimated_gb"] <= budget
    too_small = MemoryBudget(0.0, setting).required_gb(smallest) * 0.99
    with pytest.raises(DataError, match="smallest needs"):
        decode_best(edges, ops, space_params={"filters": 8}, budget=MemoryBudget(too_small, setting))


def test_estimate_equals_what_the_network_saves_plus_its_parameters(paper_ops):
    rng = np.random.default_rng(9)
    arch = decode(rng.normal(size=(3, 10)) * 2, rng.normal(size=(3, 10, 5)), space_params={"filters": 4})
    net = SPACE.build_network(arch, paper_ops, 1, 3, filters=8)
    n_params = sum(p.numel() for p in net.parameters())
    for amp, batch in (("off", 1), ("off", 3), ("bf16", 2)):
        setting = tiny_setting(patch_size=(32, 32, 64), batch_size=batch, amp=amp)
        est = memory_model(4, 4, paper_ops, setting).network(arch.edge_mask, arch.op_index)
        image = (batch, 1, 32, 32, 64)  # an image: it needs no gradient
        measured = saved_bytes(net, image, amp=amp, input_requires_grad=False)
        assert est["activations"] == pytest.approx(measured, rel=1e-9)
        assert est["parameters"] == 12 * n_params


# --------------------------------------------------------------------------------- decode CLI


def _searched_run(tmp_path, memory_params=None) -> object:
    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    spec = BUDGET_SPEC if memory_params is None else with_memory(memory_params)
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    rng = np.random.default_rng(3)
    np.savez(
        run / "search" / "arch_params.npz",
        edge_logits=rng.normal(size=(4, 7)),
        op_logits=rng.normal(size=(4, 7, 5)),
    )
    return run


def test_decode_top_k_writes_distinct_architectures_and_a_table(tmp_path):
    run = _searched_run(tmp_path, {"sigma": 0.5, "reserve_gb": 0})
    res = run_cli("decode", run, "--top-k", "3", "--budget-gb", "0.06", "--no-picture")
    assert res.returncode == 0, res.stderr
    table = (run / "arch_top" / "architectures.csv").read_text().splitlines()
    assert table[0].split(",") == [
        "rank",
        "arch",
        "path_cost",
        "est_train_MB",
        "needs_GB",
        "GMACs",
        "params_M",
    ]
    rows = [dict(zip(table[0].split(","), line.split(","))) for line in table[1:]]
    assert [r["arch"] for r in rows] == ["arch_1.json", "arch_2.json", "arch_3.json"]
    costs = [float(r["path_cost"]) for r in rows]
    assert costs == sorted(costs)
    archs = [Architecture.load(run / "arch_top" / r["arch"]) for r in rows]
    assert len({a.edge_mask.tobytes() for a in archs}) == 3 and all(a.is_feasible() for a in archs)
    assert all(float(r["needs_GB"]) <= 0.06 for r in rows)
    assert json.loads((run / "arch.json").read_text())["memory"]["budget_gb"] == 0.06
    assert Architecture.load(run / "arch.json").to_dict()["cells"] == archs[0].to_dict()["cells"]


def test_decode_uses_the_spec_budget_and_refuses_an_impossible_one(tmp_path):
    run = _searched_run(tmp_path, {"budget_gb": 0.06, "reserve_gb": 0})
    res = run_cli("decode", run, "--no-picture", "--memory")
    assert res.returncode == 0, res.stderr
    assert "budget 0.06 GB" in res.stdout and "fits the budget" in res.stdout
    before = (run / "arch.json").read_bytes()
    res = run_cli("decode", run, "--no-picture", "--budget-gb", "0.015")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "smallest needs" in res.stderr and "GB" in res.stderr
    assert (run / "arch.json").read_bytes() == before  # nothing written
    for bad in ("-1", "nan"):
        res = run_cli("decode", run, "--no-picture", "--budget-gb", bad)
        assert res.returncode == 2 and "--budget-gb" in res.stderr and "Traceback" not in res.stderr
