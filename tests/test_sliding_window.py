import itertools
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nastk.inference import gaussian_weights, predict_labels, sliding_window_predict, window_starts
from nastk.inference import sliding_window as sw

# ---------------------------------------------------------------------------------------------- helpers


def _pointwise_logits(x: torch.Tensor) -> torch.Tensor:
    """3-class logits that depend only on each voxel's own value (channel 0): a window-independent net."""
    v = x[:, :1]
    cls = (v > -0.3).long() + (v > 0.4).long()  # [B, 1, ...] in {0, 1, 2}
    onehot = F.one_hot(cls[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    return 5.0 * onehot + 0.5 * v  # not exactly one-hot, still pointwise


def _conv_net(in_ch=2, classes=3):
    return nn.Sequential(
        nn.Conv3d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, classes, 3, padding=1)
    ).eval()


# ---------------------------------------------------------------------------------------------- windows


def test_window_starts_cover_every_index_and_end_flush():
    for size in range(1, 41):
        for patch in range(1, 13):
            for stride in range(1, patch + 1):
                starts = window_starts(size, patch, stride)
                assert starts[0] == 0
                if size <= patch:
                    assert starts == [0]
                    continue
                assert all(0 <= s <= size - patch for s in starts)
                assert starts[-1] == size - patch  # flush with the end
                assert all(b > a for a, b in zip(starts, starts[1:]))
                assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
                covered = torch.zeros(size, dtype=torch.bool)
                for s in starts:
                    covered[s : s + patch] = True
                assert bool(covered.all()), (size, patch, stride)


@pytest.mark.parametrize("stride", [0, -1, 9])
def test_invalid_stride_raises(stride):
    with pytest.raises(ValueError, match="stride"):
        window_starts(20, 8, stride)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_predict(torch.zeros(1, 10, 10, 10), _pointwise_logits, (8, 8, 8), (4, stride, 4), 3)


def test_other_bad_arguments_raise():
    vol = torch.zeros(1, 10, 10, 10)
    with pytest.raises(ValueError, match="blend"):
        sliding_window_predict(vol, _pointwise_logits, (8, 8, 8), (4, 4, 4), 3, blend="linear")
    with pytest.raises(ValueError, match="volume"):
        sliding_window_predict(vol[0], _pointwise_logits, (8, 8, 8), (4, 4, 4), 3)
    with pytest.raises(ValueError, match="predictor returned"):
        sliding_window_predict(vol, _pointwise_logits, (8, 8, 8), (4, 4, 4), 4)  # predictor gives 3


def test_gaussian_weights_shape_range_and_symmetry():
    w = gaussian_weights((8, 9, 16))
    assert w.shape == (8, 9, 16) and w.dtype == torch.float32
    # odd sizes peak at exactly 1 (the centre voxel), even ones just below (the centre is between voxels)
    assert w.max().item() == pytest.approx(math.exp(-0.5 * sum((0.5 / (0.125 * p)) ** 2 for p in (8, 16))))
    assert w.min().item() >= 1e-3 - 1e-9
    for d in range(3):
        torch.testing.assert_close(w, w.flip(d))
    assert w[4, 4, 8] > w[0, 4, 8]


# ---------------------------------------------------------------------------------------------- blending


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(
    "shape,patch,stride",
    [
        ((20, 17, 9), (8, 8, 8), (4, 4, 4)),
        ((20, 17, 9), (8, 6, 5), (8, 1, 3)),
        ((11, 13, 7), (4, 4, 4), (3, 2, 4)),
        ((5, 24, 3), (8, 8, 8), (5, 7, 8)),  # smaller than the patch on two axes
    ],
)
def test_pointwise_predictor_is_reproduced_exactly(blend, shape, patch, stride):
    vol = torch.randn(2, *shape)
    out = sliding_window_predict(vol, _pointwise_logits, patch, stride, 3, batch_size=3, blend=blend)
    expected = torch.softmax(_pointwise_logits(vol[None]), 1)[0]
    assert out.shape == (3, *shape) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


def test_constant_blend_without_overlap_equals_tiles():
    net = _conv_net()
    vol = torch.randn(2, 16, 24, 8)
    patch = (8, 8, 4)
    out = sliding_window_predict(vol, net, patch, patch, 3, batch_size=5, blend="constant")
    expected = torch.empty_like(out)
    for i, j, k in itertools.product(range(0, 16, 8), range(0, 24, 8), range(0, 8, 4)):
        tile = vol[None, :, i : i + 8, j : j + 8, k : k + 4]
        expected[:, i : i + 8, j : j + 8, k : k + 4] = torch.softmax(net(tile), 1)[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_volume_smaller_than_patch_is_zero_padded_and_cropped():
    net = _conv_net()
    vol = torch.randn(2, 5, 8, 3)
    out = sliding_window_predict(vol, net, (8, 8, 8), (4, 4, 4), 3, blend="gaussian")
    assert out.shape == (3, 5, 8, 3)
    # Padding split like MONAI: floor(diff / 2) before, the rest after.
    padded = F.pad(vol, (2, 3, 0, 0, 1, 2))[None]
    expected = torch.softmax(net(padded), 1)[0, :, 1:6, :, 2:5]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_batch_size_does_not_change_the_result():
    net = _conv_net()
    vol = torch.randn(2, 19, 14, 10)
    kw = dict(patch=(8, 8, 8), stride=(3, 5, 4), num_classes=3, blend="gaussian")
    a = sliding_window_predict(vol, net, batch_size=1, **kw)
    b = sliding_window_predict(vol, net, batch_size=3, **kw)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_flip_tta_with_flip_equivariant_predictor_is_a_no_op():
    vol = torch.randn(1, 14, 12, 10)
    kw = dict(patch=(8, 8, 8), stride=(3, 4, 2), num_classes=3, batch_size=2)
    a = sliding_window_predict(vol, _pointwise_logits, flip_tta=False, **kw)
    b = sliding_window_predict(vol, _pointwise_logits, flip_tta=True, **kw)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_flip_tta_flips_predictions_back():
    # With a flip-symmetric window grid (24 = 8 + 4 * 4) and a symmetric weight map, per-window flip TTA
    # equals averaging whole-volume predictions of the 8 flipped volumes, flipped back.
    net = _conv_net(in_ch=1)
    vol = torch.randn(1, 24, 16, 12)
    kw = dict(patch=(8, 8, 8), stride=(4, 4, 4), num_classes=3, blend="gaussian")
    tta = sliding_window_predict(vol, net, flip_tta=True, **kw)
    ref = torch.zeros_like(tta)
    for r in range(4):
        for dims in itertools.combinations((1, 2, 3), r):
            flipped = vol.flip(dims) if dims else vol
            pred = sliding_window_predict(flipped, net, **kw)
            ref += pred.flip(dims) if dims else pred
    torch.testing.assert_close(tta, ref / 8, atol=1e-5, rtol=0)
    plain = sliding_window_predict(vol, net, **kw)
    assert (tta - plain).abs().max() > 1e-4  # the net is not flip-equivariant: TTA did something


def test_outputs_sum_to_one_progress_labels_and_amp_ignored_on_cpu():
    net = _conv_net()
    vol = torch.randn(2, 13, 9, 11)
    calls = []
    kw = dict(patch=(6, 6, 6), stride=(3, 3, 3), num_classes=3, batch_size=4)
    out = sliding_window_predict(vol, net, progress=lambda d, t: calls.append((d, t)), **kw)
    torch.testing.assert_close(out.sum(0), torch.ones(13, 9, 11), atol=1e-5, rtol=0)
    assert out.min() >= 0
    total = len(window_starts(13, 6, 3)) * len(window_starts(9, 6, 3)) * len(window_starts(11, 6, 3))
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and all(t == total for _, t in calls)
    assert len(calls) == -(-total // 4)
    torch.testing.assert_close(sliding_window_predict(vol, net, amp=True, **kw), out)
    labels = predict_labels(vol, net, **kw)
    assert labels.dtype == torch.uint8 and labels.shape == (13, 9, 11)
    assert torch.equal(labels, out.argmax(0).to(torch.uint8))


def test_accumulators_fall_back_to_cpu_on_out_of_memory(monkeypatch):
    # The predictor "runs" on the meta device; allocating the accumulators there pretends to OOM.
    real_zeros = torch.zeros

    def zeros(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "meta":
            raise sw._OOM_ERRORS[0]("fake OOM")
        return real_zeros(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    vol = torch.randn(1, 10, 10, 10)

    def predictor(x):
        assert x.device.type == "meta"
        return torch.full((x.shape[0], 2, 8, 8, 8), 0.5)  # probabilities, on CPU

    with pytest.warns(RuntimeWarning, match="accumulating on CPU"):
        out = sliding_window_predict(
            vol, predictor, (8, 8, 8), (4, 4, 4), 2, device="meta", predictor_outputs="probabilities"
        )
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, torch.full((2, 10, 10, 10), 0.5))
    with pytest.raises(sw._OOM_ERRORS):  # an explicit accumulate_on does not fall back
        sliding_window_predict(vol, predictor, (8, 8, 8), (4, 4, 4), 2, device="meta", accumulate_on="meta")


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("flip_tta", [False, True])
def test_logits_path_normalises_like_an_explicit_weight_sum(blend, flip_tta):
    # With logits the weight sum is taken from the softmax accumulator; with probabilities it is
    # accumulated window by window. Both must give the same blend.
    net = _conv_net()
    vol = torch.randn(2, 19, 13, 10)
    kw = dict(batch_size=3, blend=blend, flip_tta=flip_tta)
    from_logits = sliding_window_predict(vol, net, (8, 8, 8), (3, 5, 4), 3, **kw)
    from_probs = sliding_window_predict(
        vol,
        lambda x: torch.softmax(net(x), 1),
        (8, 8, 8),
        (3, 5, 4),
        3,
        predictor_outputs="probabilities",
        **kw,
    )
    torch.testing.assert_close(from_logits, from_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_logits.sum(0), torch.ones(19, 13, 10), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- MONAI


@pytest.mark.parametrize("shape", [(24, 24, 24), (24, 20, 6), (5, 24, 13)])
def test_matches_monai_sliding_window_inference(shape):
    monai_inferers = pytest.importorskip("monai.inferers")
    net = _conv_net()

    def probs(x):
        return torch.softmax(net(x), 1)

    vol = torch.randn(2, *shape)

    def ours(mode, patch=(8, 8, 8), stride=(4, 4, 4)):
        return sliding_window_predict(
            vol, probs, patch, stride, 3, batch_size=3, blend=mode, predictor_outputs="probabilities"
        )

    def theirs(mode, patch=(8, 8, 8), **kw):
        # overlap 0.5 -> MONAI scan interval int(p * 0.5) = 4 for p in {8, 9}: the same windows as ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return monai_inferers.sliding_window_inference(
                vol[None], patch, 3, probs, overlap=0.5, mode=mode, **kw
            )[0]

    # Constant blending: identical windows, identical averaging.
    torch.testing.assert_close(ours("constant"), theirs("constant"), atol=1e-6, rtol=0)
    # Gaussian blending: the same importance map as MONAI's, even and odd patches.
    torch.testing.assert_close(ours("gaussian"), theirs("gaussian"), atol=1e-6, rtol=0)
    odd = (9, 9, 9)
    torch.testing.assert_close(ours("gaussian", odd, (4, 4, 4)), theirs("gaussian", odd), atol=1e-6, rtol=0)
    monai_map = pytest.importorskip("monai.data.utils").compute_importance_map((8, 9, 16), "gaussian")
    torch.testing.assert_close(gaussian_weights((8, 9, 16)), monai_map, atol=1e-7, rtol=0)
