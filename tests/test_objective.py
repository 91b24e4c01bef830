"""Eq. 11: the ramp multiplies every architecture regulariser and never L_seg."""

import pytest
import torch

from nastk.objective import arch_objective, build_losses, ramp
from nastk.spec import Spec
from nastk_dints.space import SPACE


def test_ramp_only_scales_regularisers():
    seg = torch.tensor(2.0)
    terms = [(1.0, torch.tensor(3.0)), (0.001, torch.tensor(100.0))]
    assert arch_objective(seg, terms, 0, 10).item() == pytest.approx(2.0)
    assert arch_objective(seg, terms, 5, 10).item() == pytest.approx(2.0 + 0.5 * 3.1)
    assert arch_objective(seg, terms, 10, 10).item() == pytest.approx(2.0 + 3.1)
    assert ramp(20, 10) == 1.0 and ramp(-1, 10) == 0.0


def test_paper_losses_on_a_supernet(paper_ops):
    seg, arch = build_losses(Spec().losses)
    assert seg.name == "dice_ce" and [a.name for a in arch] == [
        "entropy_alpha",
        "entropy_eta",
        "topology",
        "memory",
    ]
    assert {a.name: a.weight for a in arch}["topology"] == 0.001
    net = SPACE.build_supernet({"layers": 2, "depths": 2, "filters": 4}, paper_ops, 1, 2, (16, 16, 16))
    x, y = torch.randn(1, 1, 16, 16, 16), torch.randint(0, 2, (1, 16, 16, 16))
    terms = [(a.weight, a.fn(net)) for a in arch]
    for (_, v), a in zip(terms, arch):
        assert v.ndim == 0 and torch.isfinite(v), a.name
    total = arch_objective(seg.fn(net(x), y), terms, 3, 10)
    total.backward()
    assert net.edge_logits.grad.abs().sum() > 0 and net.op_logits.grad.abs().sum() > 0


def test_dice_ce_perfect_prediction_is_near_zero():
    seg, _ = build_losses(Spec().losses)
    y = torch.randint(0, 3, (2, 8, 8, 8))
    logits = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float() * 50
    assert seg.fn(logits, y).item() < 1e-3
    assert seg.fn(-logits, y).item() > 1.0
