"""Single-modality auxiliary head of MoBaNet (arXiv 2026): its RGB and X heads."""

from __future__ import annotations

from torch import Tensor, nn

from rsfusion.models.heads.upernet import ConvBNAct


class AuxHead(nn.Module):
    """Auxiliary head, MoBaNet Fig. 1 S1-S3 branches (authors' code): ConvBNReLU 3x3, drop, 1x1.

    Args:
        in_channels: input channels (MoBaNet: the 256-channel stage-1 projections).
        channels: hidden channels of the 3x3 block.
        num_classes: output classes.
        dropout: Dropout2d probability.
        act: activation of the 3x3 block.

    Example:
        >>> import torch
        >>> AuxHead(16, 8, 3)(torch.randn(2, 16, 19, 19)).shape
        torch.Size([2, 3, 19, 19])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.block = ConvBNAct(in_channels, channels, 3, act)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K, H, W) at the input's resolution."""
        return self.classifier(self.dropout(self.block(x)))
