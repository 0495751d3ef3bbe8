"""Decoder heads: UPerNet (MoBaNet), SegFormer MLP (KTB), auxiliary head (MoBaNet)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsfusion.models.heads import AuxHead, SegFormerHead, UPerNetHead

CHANNELS = [4, 6, 8, 10]
EQUAL = [(16, 16)] * 4  # ViT taps: every level at one resolution (MoBaNet, 1/14)
PYRAMID = [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 4..32 (KTB's Swin, CPAL)


def _features(sizes, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, sizes)]


def _make(kind: str, width: int = 8, dropout: float = 0.1) -> nn.Module:
    if kind == "upernet":
        return UPerNetHead(CHANNELS, channels=width, num_classes=3, dropout=dropout)
    if kind == "segformer":
        return SegFormerHead(CHANNELS, embed_dim=width, num_classes=3, dropout=dropout)
    return AuxHead(CHANNELS[0], width, num_classes=3, dropout=dropout)


@pytest.mark.parametrize("kind", ["upernet", "segformer"])
@pytest.mark.parametrize("sizes", [EQUAL, PYRAMID, [(14, 10), (7, 5), (4, 3), (2, 2)]])
def test_output_at_finest_level_and_depends_on_every_level(kind, sizes):
    torch.manual_seed(0)
    head = _make(kind).eval()
    feats = _features(sizes)
    with torch.no_grad():
        out = head(feats)
        assert out.shape == (2, 3, *sizes[0])
        for i in range(len(feats)):
            changed = list(feats)
            changed[i] = feats[i] + 1.0
            assert not torch.allclose(head(changed), out), f"level {i} ignored"
    with pytest.raises(ValueError, match="expected 4 levels"):
        head(feats[:3])


def test_upernet_ppm_gives_a_global_view_segformer_stays_local():
    torch.manual_seed(0)
    feats = _features(PYRAMID)
    poked = list(feats)
    poked[-1] = feats[-1].clone()
    poked[-1][:, :, 0, 0] += 5.0  # one corner pixel of the coarsest level
    with torch.no_grad():
        uper = _make("upernet").eval()
        diff = (uper(poked) - uper(feats)).abs().amax(dim=(0, 1))
        assert (diff > 0).all()  # the 1x1 pooled branch reaches every output pixel
        seg = _make("segformer").eval()
        diff = (seg(poked) - seg(feats)).abs().amax(dim=(0, 1))
        assert diff[0, 0] > 0 and (diff[12:, 12:] == 0).all()  # only the corner's footprint


def _train(head: nn.Module, inputs, target: torch.Tensor, steps: int = 30) -> tuple[float, float]:
    opt = torch.optim.Adam(head.parameters(), lr=2e-2)

    def loss() -> torch.Tensor:
        return F.cross_entropy(head(inputs), target)

    head.train()
    start = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    return start, loss().item()


@pytest.mark.parametrize("kind", ["upernet", "segformer", "aux"])
def test_head_learns_a_fixed_batch(kind):
    torch.manual_seed(0)
    feats = _features(PYRAMID, batch=4)
    # Labels are a fixed function of the finest level: 3 classes from thresholds on 2 channels.
    target = (feats[0][:, 0] > 0).long() + (feats[0][:, 1] > 0.5).long()
    # Dropout off: a 16-channel Dropout2d makes a 30-step curve needlessly noisy.
    head = _make(kind, width=16, dropout=0.0)
    inputs = feats[0] if kind == "aux" else feats
    start, end = _train(head, inputs, target)
    assert end < 0.5 * start, (start, end)


def test_aux_head_keeps_resolution_and_uses_a_3x3_neighbourhood():
    torch.manual_seed(0)
    head = AuxHead(4, 8, 5).eval()
    x = torch.randn(1, 4, 19, 19)
    poked = x.clone()
    poked[..., 9, 9] += 3.0
    with torch.no_grad():
        out = head(x)
        assert out.shape == (1, 5, 19, 19)
        diff = (head(poked) - out).abs().amax(dim=(0, 1))
    changed = diff > 0
    assert changed[8:11, 8:11].all() and changed.sum() == 9
