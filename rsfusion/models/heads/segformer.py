"""SegFormer all-MLP decoder (Xie et al., NeurIPS 2021): KTB's three heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rsfusion.models.heads.upernet import finest_size, resize_to


class SegFormerHead(nn.Module):
    """SegFormer all-MLP decoder, Xie et al. NeurIPS 2021 eq. (4) (KTB's heads).

    Per level a Linear C_i->E on the tokens, each upsampled to the finest level, concatenated,
    fused by a 1x1 conv E*L->E + BN + ReLU, dropout and a 1x1 classifier. KTB uses E = 512 for
    the fused head and E = 256 for the RGB-only and X-only heads.

    Args:
        in_channels: channels of each input level.
        embed_dim: unified MLP width E.
        num_classes: output classes.
        dropout: Dropout2d probability before the classifier.

    Example:
        >>> import torch
        >>> head = SegFormerHead([8, 16], embed_dim=32, num_classes=3)
        >>> head([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        embed_dim: int,
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError("SegFormerHead needs at least one input level")
        self.in_channels = in_channels
        self.mlps = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_channels) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits (B, K, H, W) at the finest level's size from levels (B, C_i, H_i, W_i)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} levels, got {len(features)}")
        size = finest_size(features)
        levels = []
        for mlp, f in zip(self.mlps, features):
            b, _, h, w = f.shape
            tokens = mlp(f.flatten(2).transpose(1, 2))  # (B, H*W, E)
            levels.append(resize_to(tokens.transpose(1, 2).reshape(b, -1, h, w), size))
        fused = self.fuse(torch.cat(levels, dim=1))
        return self.classifier(self.dropout(fused))
