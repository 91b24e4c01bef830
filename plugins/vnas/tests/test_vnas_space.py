"""The vnas space at tiny sizes: the knapsack decode and top-k against enumeration, the memory model
against the network's real bytes, the architecture file, and each knob of the space."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nastk import registry
from nastk.errors import DataError
from nastk.plugin import MemoryBudget, TrainingSetting, saved_bytes
from nastk_vnas.architecture import Architecture
from nastk_vnas.discretize import DISCRETIZER, best_k, log_softmax
from nastk_vnas.layout import layers
from nastk_vnas.memory import memory_table
from nastk_vnas.space import SPACE

OPS = ["skip", "conv3x3x3", "vnas.conv3x3x1"]
REPO = Path(__file__).resolve().parents[3]


def ops():
    return registry.load_ops(OPS)


def enumerate_all(cost, memory, capacity):
    """Every choice, by (cost, choice), that fits: the brute force the knapsack must equal."""
    rows = range(len(cost))
    out = []
    for choice in itertools.product(range(cost.shape[1]), repeat=len(cost)):
        c = sum(cost[r, n] for r, n in zip(rows, choice))
        m = sum(memory[r, n] for r, n in zip(rows, choice))
        if m <= capacity:
            out.append((c, m, choice))
    return sorted(out, key=lambda t: (t[0], t[2]))


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_top_k_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    layers_, n = int(rng.integers(2, 6)), int(rng.integers(2, 4))
    cost = rng.exponential(size=(layers_, n))
    memory = rng.integers(1, 20, size=(layers_, n)).astype(float)  # integer bytes: ties in memory occur
    lo, hi = memory.min(1).sum(), memory.max(1).sum()
    for capacity in (lo - 1, lo, (lo + hi) / 2, hi, np.inf):
        want = enumerate_all(cost, memory, capacity)
        for k in (1, 3, 7):
            got = best_k(cost, memory, capacity, k)
            assert [g[2] for g in got] == [w[2] for w in want[:k]], (capacity, k)
            assert np.allclose([g[0] for g in got], [w[0] for w in want[:k]])
    assert best_k(cost, memory, lo - 1, 3) == []


def _setting(batch=1, fm=1.0):
    return TrainingSetting((16, 16, 16), batch, fm, "off", 1, 2)


def test_budget_decode_and_top_k_equal_enumeration_over_every_network():
    """Through the registered discretizer: the k most likely networks whose estimated bytes fit, with
    each network's bytes from the memory model (itself checked against the network below)."""
    rng = np.random.default_rng(3)
    params = {"depths": 2, "convs": 1, "filters": 2}
    logits = rng.normal(size=(3, len(OPS)))
    logits[:, 1] += 1.0  # the costliest op most likely: a budget then binds
    setting = _setting(batch=2)
    table = memory_table(2, 1, 2, ops(), setting)
    cost = -log_softmax(logits)
    totals = {
        c: table.fixed + sum(table.layer[i, n] for i, n in enumerate(c))
        for c in itertools.product(range(3), repeat=3)
    }
    ranked = sorted(totals, key=lambda c: (sum(cost[i, n] for i, n in enumerate(c)), c))
    middle = (min(totals.values()) + totals[ranked[0]]) / 2  # below the most likely network
    gb = MemoryBudget(1.0, setting).required_gb(middle)
    budget = MemoryBudget(gb, setting)
    feasible = [c for c in ranked if totals[c] <= budget.usable_bytes]
    assert 0 < len(feasible) < len(ranked) and feasible[0] != ranked[0]  # the budget binds
    archs = DISCRETIZER.top_k({"op_logits": logits}, params, OPS, 5, budget=budget)
    assert [a.choices for a in archs] == [[OPS[n] for n in c] for c in feasible[:5]]
    assert archs[0].extra["memory"]["estimated_bytes"] == pytest.approx(totals[feasible[0]])
    unbounded = DISCRETIZER.top_k({"op_logits": logits}, params, OPS, 4)
    assert [a.choices for a in unbounded] == [[OPS[n] for n in c] for c in ranked[:4]]
    assert DISCRETIZER({"op_logits": logits}, params, OPS).choices == [OPS[n] for n in logits.argmax(1)]


def test_an_infeasible_budget_names_what_the_smallest_network_needs():
    setting = _setting()
    table = memory_table(2, 1, 2, ops(), setting)
    smallest = table.fixed + table.layer.min(1).sum()
    need = MemoryBudget(1.0, setting).required_gb(smallest)
    logits = np.zeros((3, len(OPS)))
    with pytest.raises(DataError) as exc:
        DISCRETIZER.top_k(
            {"op_logits": logits},
            {"depths": 2, "convs": 1, "filters": 2},
            OPS,
            1,
            budget=MemoryBudget(need - 0.001, setting),
        )
    message = str(exc.value)
    assert "\n" not in message and f"the smallest needs {need:.2f} GB" in message
    ok = DISCRETIZER.top_k(
        {"op_logits": logits},
        {"depths": 2, "convs": 1, "filters": 2},
        OPS,
        1,
        budget=MemoryBudget(need + 0.001, setting),
    )
    assert ok[0].choices == ["skip"] * 3  # only the smallest network fits


@pytest.mark.parametrize(
    "choices,batch,fm",
    [
        (["conv3x3x3", "vnas.conv3x3x1", "skip", "conv3x3x3", "skip"], 2, 1.5),
        (["skip"] * 5, 1, 1.0),
        (["vnas.conv3x3x1"] * 5, 3, 2.0),
    ],
)
def test_the_memory_estimate_is_the_networks_real_bytes(choices, batch, fm):
    arch = Architecture(3, 1, 4, OPS, choices)
    net = SPACE.build_network(arch, ops(), 1, 2, filter_multiplier=fm)
    real_activations = saved_bytes(net, (batch, 1, 16, 16, 16), input_requires_grad=False)
    real_parameters = 12 * sum(p.numel() for p in net.parameters())
    est = SPACE.estimate_memory(
        arch,
        ops(),
        patch_size=(16, 16, 16),
        batch_size=batch,
        filter_multiplier=fm,
        in_channels=1,
        num_classes=2,
    )
    assert est["activations"] == real_activations
    assert est["parameters"] == real_parameters
    assert est["total"] == est["fixed"] + est["layers"] == real_activations + real_parameters


def test_the_supernet_mixes_every_op_and_learns_its_logits():
    params = SPACE.Params.model_validate({"depths": 2, "convs": 1, "filters": 2})
    net = SPACE.build_supernet(params, ops(), 1, 2, (16, 16, 16))
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 2, 16, 16, 16)
    out.square().mean().backward()
    grad = net.op_logits.grad
    assert grad.shape == (3, len(OPS)) and (grad.abs() > 0).all()
    arch_ids = {id(p) for p in net.arch_parameters()}
    weights = net.weight_parameters()
    assert not arch_ids & {id(p) for p in weights}
    assert len(weights) + 1 == len(list(net.parameters()))
    assert net.arch_parameters_numpy()["op_logits"].shape == (3, len(OPS))
    # with the logits of one op far above the others, the supernet computes that op's network
    with torch.no_grad():
        net.op_logits.fill_(-1e4)
        net.op_logits[:, 1] = 1e4
    arch = Architecture(2, 1, 2, OPS, ["conv3x3x3"] * 3)
    discrete = SPACE.build_network(arch, ops(), 1, 2)
    mapping = {}
    for name in discrete.state_dict():
        parts = name.split(".")
        source = name
        if parts[1] == "layers":  # net.layers.I.<op params> is net.layers.I.mixed.candidates.1.<...>
            source = ".".join(parts[:3] + ["mixed", "candidates", "1"] + parts[3:])
        mapping[name] = net.state_dict()[source]
    discrete.load_state_dict(mapping)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(net(x), discrete(x), atol=1e-5)


def test_the_architecture_file_round_trips_and_bad_files_name_the_field(tmp_path):
    arch = Architecture(3, 1, 4, OPS, ["conv3x3x3", "skip", "skip", "vnas.conv3x3x1", "conv3x3x3"], 1.5)
    path = arch.save(tmp_path / "arch.json")
    back = SPACE.load_arch(path)
    assert back.choices == arch.choices and back.op_names == ["skip", "conv3x3x3", "vnas.conv3x3x1"]
    assert SPACE.load_arch_from_text(arch.to_json()).to_dict() == arch.to_dict()
    data = json.loads(path.read_text())
    cases = {
        "layers[1]": lambda d: d["layers"][1].update(op="nope"),
        "'layers' has 4": lambda d: d["layers"].pop(),
        "'depths'": lambda d: d.update(depths="3"),
        "layers[0].name": lambda d: d["layers"][0].update(name="dec0.1"),
        "not a vnas architecture": lambda d: d.update(space={"name": "dints"}),
    }
    for needle, change in cases.items():
        bad = json.loads(json.dumps(data))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DataError) as exc:
            SPACE.load_arch(tmp_path / "bad.json")
        assert str(exc.value).startswith(str(tmp_path / "bad.json")) and "\n" not in str(exc.value)
        assert needle in str(exc.value) or "nope" in str(exc.value), (needle, str(exc.value))
    assert arch.spec_mismatch({"depths": 4}) and arch.spec_mismatch({"convs": 2})
    assert arch.spec_mismatch({"depths": 3, "convs": 1, "filters": 8}) is None


def test_a_bad_arch_params_file_is_named_in_one_line():
    with pytest.raises(DataError, match="no 'op_logits'"):
        DISCRETIZER.check_arrays({"edge_logits": np.zeros((2, 3))}, OPS)
    with pytest.raises(DataError, match=r"expected \[layers, 3\]"):
        DISCRETIZER.check_arrays({"op_logits": np.zeros((2, 4))}, OPS)
    with pytest.raises(ValueError, match="depths 3 and convs 1"):
        DISCRETIZER({"op_logits": np.zeros((3, 3))}, {"depths": 3, "convs": 1}, OPS)


# ---------------------------------------------------------------------------------- each knob changes it


def _net_stats(**params):
    p = SPACE.Params.model_validate({"depths": 2, "convs": 1, "filters": 2, **params})
    with torch.device("meta"):
        net = SPACE.build_supernet(p, ops(), 1, 2, (16, 16, 16))
    return p, net


def test_depths_adds_levels_and_changes_the_patch_divisor():
    p2, n2 = _net_stats(depths=2)
    p3, n3 = _net_stats(depths=3)
    assert (n2.op_logits.shape[0], n3.op_logits.shape[0]) == (3, 5)
    assert (SPACE.patch_divisor(p2), SPACE.patch_divisor(p3)) == (2, 4)


def test_convs_adds_searched_layers_per_level():
    assert _net_stats(convs=1)[1].op_logits.shape[0] == 3
    assert _net_stats(convs=2)[1].op_logits.shape[0] == 6
    assert [la.name for la in layers(2, 2)] == ["enc0.1", "enc0.2", "enc1.1", "enc1.2", "dec0.1", "dec0.2"]


def test_filters_widens_every_layer():
    count = [sum(p.numel() for p in _net_stats(filters=f)[1].weight_parameters()) for f in (2, 4)]
    assert count[1] > 3 * count[0]  # convs dominate: about 4x


def test_init_std_spreads_the_initial_logits():
    p0 = SPACE.Params.model_validate({"depths": 2, "convs": 1, "filters": 2, "init_std": 0.0})
    p1 = p0.model_copy(update={"init_std": 0.5})
    flat = SPACE.build_supernet(p0, ops(), 1, 2).op_logits
    spread = SPACE.build_supernet(p1, ops(), 1, 2).op_logits
    assert torch.equal(flat, torch.ones_like(flat)) and spread.std() > 0.2


def test_the_ops_list_is_what_each_layer_chooses_among():
    p = SPACE.Params.model_validate({"depths": 2, "convs": 1, "filters": 2})
    two = SPACE.build_supernet(p, registry.load_ops(["skip", "conv3x3x3"]), 1, 2)
    four = SPACE.build_supernet(p, registry.load_ops([*OPS, "p3d_1x3x3"]), 1, 2)
    assert two.op_logits.shape[1] == 2 and four.op_logits.shape[1] == 4


def test_the_shipped_unet_baseline_is_a_plain_3d_unet():
    arch = SPACE.load_arch(REPO / "specs" / "archs" / "unet3d.json")
    assert set(arch.choices) == {"conv3x3x3"} and arch.op_names == ["conv3x3x3"]
    assert (arch.depths, arch.convs, arch.filters) == (4, 2, 16)
    with torch.device("meta"):
        net = SPACE.build_network(arch, registry.load_ops(arch.op_names), 1, 3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    three = [m for m in convs if m.kernel_size == (3, 3, 3) and m.stride == (1, 1, 1)]
    assert len(three) == 14 + 1  # 7 levels-sides x 2 searched layers, plus the stem
    # the widest level: 16 * 2^3 channels
    assert max(m.out_channels for m in convs) == 128


def test_a_spec_of_this_space_with_dints_regularisers_is_refused_naming_the_loss():
    from nastk.errors import SpecError
    from nastk.spec import validate

    with pytest.raises(SpecError) as exc:
        validate(
            {
                "space": {"name": "vnas", "params": {"depths": 2}},
                "search": {"patch_size": [16, 16, 16]},
                "losses": [{"name": "dice_ce"}, {"name": "entropy_alpha"}],
            }
        )
    assert "losses[1].name" in str(
        exc.value
    ) and "'entropy_alpha' regularises the supernet of space 'dints'" in str(exc.value)
    spec = validate({"space": {"name": "vnas"}})
    assert spec.discretizer.name == "vnas"  # a space's own discretizer by default
    assert [x.name for x in spec.losses] == ["dice_ce"]  # and its own losses: it declares none
