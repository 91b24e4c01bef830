"""nastk_dints.kernels against PyTorch's own conv3d and InstanceNorm3d, values and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nastk_dints import kernels
from nastk_dints.kernels import InstanceNorm, KernelConv

KERNELS = [(3, 3, 3), (3, 3, 1), (3, 1, 3), (1, 3, 3)]


def _reference(x, kernels):
    """conv3d with each kernel at its own 'same' padding, outputs stacked on the channels."""
    return torch.cat([F.conv3d(x, w, padding=[k // 2 for k in w.shape[2:]]) for w in kernels], dim=1)


@pytest.fixture(params=["onednn", "pytorch"])
def conv_path(request, monkeypatch):
    """Batch-1 float32 CPU convs through oneDNN's formulas or PyTorch's kernels, whatever their size."""
    monkeypatch.setattr(kernels, "ONEDNN_MIN_UNFOLDED", 0 if request.param == "onednn" else 2**62)
    calls = []
    original = kernels._mkldnn_conv
    monkeypatch.setattr(kernels, "_mkldnn_conv", lambda *a: calls.append(1) or original(*a))
    return request.param, calls


def test_onednn_only_for_batch_1_float32_with_a_large_unfolded_input():
    big, small = torch.empty(1, 16, 16, 16, 16), torch.empty(1, 32, 8, 8, 8)
    assert kernels._use_mkldnn(big, torch.empty(16, 16, 1, 1, 3))  # 3 x 16 x 16^3 = 196,608 >= 160,000
    assert not kernels._use_mkldnn(small, torch.empty(32, 32, 1, 1, 3))  # 3 x 32 x 8^3 = 49,152
    assert kernels._use_mkldnn(small, torch.empty(32, 32, 3, 3, 3))  # 27 x 32 x 8^3 = 442,368
    assert not kernels._use_mkldnn(big.expand(2, -1, -1, -1, -1), torch.empty(16, 16, 3, 3, 3))
    assert not kernels._use_mkldnn(big.bfloat16(), torch.empty(16, 16, 3, 3, 3))
    assert not kernels._use_mkldnn(torch.empty(1, 16, 32, 32, 32), torch.empty(8, 16, 1, 1, 1))  # a GEMM


@pytest.mark.parametrize("shape", [(1, 4, 8, 6, 5), (2, 4, 8, 6, 5), (1, 8, 3, 3, 2)])
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_kernel_conv_matches_conv3d(shape, stacked, frozen, conv_path):
    torch.manual_seed(0)
    c = shape[1]
    kernels = [torch.randn(c, c, *k, requires_grad=not frozen) for k in (KERNELS if stacked else [(1, 3, 3)])]
    x = torch.randn(shape, requires_grad=True)
    out = KernelConv.apply(x, *kernels)
    ref = _reference(x, kernels)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    wrt = [x] + ([] if frozen else kernels)
    g = torch.randn_like(ref)
    ours, theirs = torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    path, calls = conv_path
    assert bool(calls) == (path == "onednn" and shape[0] == 1)  # the formulas meant were the ones tested


def test_kernel_conv_on_meta_and_under_cpu_autocast():
    with torch.device("meta"):
        out = KernelConv.apply(torch.empty(1, 4, 8, 8, 8), torch.empty(4, 4, 3, 3, 3))
    assert out.shape == (1, 4, 8, 8, 8) and out.device.type == "meta"
    x, w = torch.randn(1, 4, 8, 8, 8, requires_grad=True), torch.randn(4, 4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = KernelConv.apply(x, w)
        ref = F.conv3d(x, w, padding=1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    gx, gw = torch.autograd.grad(out.float().sum(), [x, w])
    assert gx.dtype == x.dtype and gw.dtype == w.dtype and torch.isfinite(gw).all()


def test_instance_norm_is_pytorchs():
    torch.manual_seed(0)
    ours, theirs = InstanceNorm(6), nn.InstanceNorm3d(6, affine=True)
    for p in ours.parameters():
        nn.init.normal_(p)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 5, 4, 3, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(ours(x).sin().sum(), [x, *ours.parameters()])
    g_theirs = torch.autograd.grad(theirs(x).sin().sum(), [x, *theirs.parameters()])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_kernel_conv_channels_last(batch, conv_path):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 8, 6, 5).to(memory_format=torch.channels_last_3d).requires_grad_()
    kernels = [torch.randn(4, 4, *k, requires_grad=True) for k in KERNELS]
    out, ref = KernelConv.apply(x, *kernels), _reference(x, kernels)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [x, *kernels], g), torch.autograd.grad(ref, [x, *kernels], g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
