"""Measured memory costs: per-op fit, and the whole-network estimate against the real saved bytes."""

import numpy as np
import pytest
import torch

from nastk_dints import ops as dints_ops
from nastk_dints.discretize import decode
from nastk_dints.memory import cost_per_sample, saved_bytes
from nastk_dints.space import SPACE, estimate_training_memory


def test_saved_bytes_of_conv_op_by_hand():
    # ReLU output (saved by the conv) + conv output (saved by the norm) + per-channel stats.
    c, side = 4, 8
    measured = saved_bytes(dints_ops.conv3x3x3(c), (1, c, side, side, side))
    feature_map = c * side**3 * 4
    assert 2 * feature_map <= measured <= 2 * feature_map + 64 * c
    assert saved_bytes(dints_ops.skip(c), (1, c, side, side, side)) == 0


@pytest.mark.parametrize("op", ["conv3x3x3", "p3d_3x3x1", "p3d_1x3x3"])
def test_cost_fit_extrapolates_exactly(op):
    build = getattr(dints_ops, op)
    fitted = cost_per_sample(("test", op, 6), lambda: build(6), 6, 16 * 12 * 20)
    assert fitted == saved_bytes(build(6), (1, 6, 16, 12, 20))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_network_estimate_equals_measured(paper_ops, seed):
    rng = np.random.default_rng(seed)
    arch = decode(rng.normal(size=(3, 10)) * 2, rng.normal(size=(3, 10, 5)))
    net = SPACE.build_network(arch, paper_ops, 1, 3, filters=4)
    est = estimate_training_memory(arch, paper_ops, (32, 32, 64), batch_size=2, filters=4, num_classes=3)
    measured = saved_bytes(net, (2, 1, 32, 32, 64), input_requires_grad=False)  # an image: no gradient
    assert est["activations"] == pytest.approx(measured, rel=1e-6)
    assert est["activations"] == pytest.approx(est["stem"] + est["cells"] + est["head"])
    # weights + gradients + SGD momentum, float32
    assert est["parameters"] == 12 * sum(p.numel() for p in net.parameters())
    assert est["total"] == est["activations"] + est["parameters"]


def test_supernet_memory_costs_scale_with_resolution(paper_ops):
    net = SPACE.build_supernet({"layers": 1, "depths": 3, "filters": 4}, paper_ops, 1, 2, (32, 32, 32))
    resample, op_cost = net.memory_costs()
    # edges 0->0 (depth 0) and 2->2 (depth 2): same op, 64x fewer voxels but 4x the channels
    assert op_cost[0, 1] == pytest.approx(16 * op_cost[6, 1], rel=0.05)
    assert resample[0] == 0 and resample[1] > 0 and resample[2] > 0
    assert (op_cost[:, 0] == 0).all()
    torch.testing.assert_close(torch.tensor(op_cost[:, 2]), torch.tensor(op_cost[:, 3]))


def test_costs_measured_under_no_grad_are_not_zero(paper_ops):
    with torch.no_grad():
        cost = cost_per_sample(("nograd", "conv3x3x3", 5), lambda: dints_ops.conv3x3x3(5), 5, 1000)
    assert cost > 0
    net = SPACE.build_supernet({"layers": 2, "depths": 2, "filters": 3}, paper_ops, 1, 2, (16, 16, 16))
    diag = net.diagnostics()
    assert 0 < diag["memory_ratio"] < 1 and diag["gap"] >= 0


def test_measuring_frees_the_graph():
    """saved_bytes keeps no reference to what it measured (a saved output packed as itself would form
    an output -> grad_fn -> output cycle that Python's collector cannot free)."""
    import gc
    import weakref

    class KeepsOutputWeakly(torch.nn.Module):
        def forward(self, x):
            y = torch.relu(x * 2)  # relu saves its output
            self.out = weakref.ref(y)
            return y

    module = KeepsOutputWeakly()
    assert saved_bytes(module, (1, 2, 4, 4, 4)) == 2 * 64 * 4
    gc.collect()
    assert module.out() is None
