"""UPerNet decoder (pyramid pooling + FPN) as MoBaNet uses it (its decoder).

Xiao et al., "Unified Perceptual Parsing" (ECCV 2018) structure with MoBaNet's (arXiv 2026)
settings: 64 channels, Conv-BN-ReLU6 blocks, pool scales (1, 2, 3, 6), Dropout2d 0.1. It takes
an ordinary pyramid (strides 4..32) as well as equal-resolution levels (ViT taps, all at 1/14).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    """Conv-BN-activation block (ConvBNReLU6 of MoBaNet's decoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        act: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            act(),
        )


def resize_to(t: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False); a no-op when ``t`` already has ``size``."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def finest_size(features: Sequence[Tensor]) -> tuple[int, int]:
    """Spatial size (H, W) of the level with the most pixels."""
    h, w = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
    return int(h), int(w)


class PPM(nn.Module):
    """Pyramid pooling module, PSPNet (Zhao et al., CVPR 2017) Fig. 3, UPerNet's top level."""

    def __init__(
        self, in_channels: int, channels: int, pool_scales: Sequence[int], act: type[nn.Module]
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNAct(in_channels, channels, 1, act))
            for s in pool_scales
        )
        self.bottleneck = ConvBNAct(in_channels + len(pool_scales) * channels, channels, 3, act)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate ``x`` with its pooled, projected, re-upsampled context and fuse (3x3)."""
        size = x.shape[-2:]
        pooled = [resize_to(branch(x), size) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetHead(nn.Module):
    """UPerNet head, Xiao et al. ECCV 2018 Fig. 4, MoBaNet's decoder.

    PPM on the last (coarsest) level, 1x1 laterals on the others, top-down addition, 3x3 FPN
    convs, all levels upsampled to the finest, concatenated, fused by a 3x3 conv, Dropout2d and
    a 1x1 classifier. The logits come out at the finest input level's resolution: the recipe
    upsamples them to the image (x14 for MoBaNet's ViT taps).

    Args:
        in_channels: channels of each input level, finest first.
        channels: decoder width (MoBaNet 64).
        num_classes: output classes.
        pool_scales: PPM output sizes.
        dropout: Dropout2d probability before the classifier.
        act: activation of the Conv-BN blocks (ReLU6 in MoBaNet).

    Example:
        >>> import torch
        >>> head = UPerNetHead([8, 8], channels=16, num_classes=3)
        >>> head([torch.randn(2, 8, 19, 19), torch.randn(2, 8, 19, 19)]).shape
        torch.Size([2, 3, 19, 19])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 64,
        *,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        act: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("UPerNetHead needs at least one input level")
        self.in_channels = in_channels
        self.ppm = PPM(in_channels[-1], channels, pool_scales, act)
        self.laterals = nn.ModuleList(ConvBNAct(c, channels, 1, act) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvBNAct(channels, channels, 3, act) for _ in in_channels[:-1]
        )
        self.fuse = ConvBNAct(len(in_channels) * channels, channels, 3, act)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits (B, K, H, W) at the finest level's size from levels (B, C_i, H_i, W_i)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} levels, got {len(features)}")
        inner = [lat(f) for lat, f in zip(self.laterals, features[:-1])]
        inner.append(self.ppm(features[-1]))
        for i in range(len(inner) - 1, 0, -1):  # top-down pathway
            inner[i - 1] = inner[i - 1] + resize_to(inner[i], inner[i - 1].shape[-2:])
        outs = [conv(t) for conv, t in zip(self.fpn_convs, inner[:-1])] + [inner[-1]]
        size = finest_size(outs)
        fused = self.fuse(torch.cat([resize_to(t, size) for t in outs], dim=1))
        return self.classifier(self.dropout(fused))
