"""MoBaNet's difference-guided gated fusion (DGFM), arXiv 2026, Fig. 1."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DGFM(nn.Module):
    """Difference-guided gated fusion, MoBaNet (arXiv 2026) Fig. 1 DGFM (per stage).

    On stage maps (B, C, H, W)::

        r', s' = Conv1x1_C->h(rgb), Conv1x1_C->h(x)      (separate reducers, no bias)
        d      = |r' - s'|
        g      = sigmoid(Conv1x1_h->C(GELU(GroupNorm(1, h)(Conv1x1_3h->h([r', s', d])))))
        out    = LayerNorm_C(g * rgb + (1 - g) * x)      (LayerNorm over channels)

    The last convolution is zero-initialised, so ``g = 0.5`` everywhere at initialisation and
    the module starts as the normalised mean of the two modalities.

    Args:
        dim: stage channels C.
        hidden: reduced channels h (default ``C // 8``: 128 for C = 1024).
        eps: LayerNorm epsilon.

    Example:
        >>> import torch
        >>> dgfm = DGFM(64)
        >>> dgfm(torch.randn(2, 64, 5, 5), torch.randn(2, 64, 5, 5)).shape
        torch.Size([2, 64, 5, 5])
    """

    def __init__(self, dim: int, hidden: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else max(1, dim // 8)
        self.dim, self.hidden_dim = dim, hidden
        self.reduce_rgb = nn.Conv2d(dim, hidden, 1, bias=False)
        self.reduce_x = nn.Conv2d(dim, hidden, 1, bias=False)
        self.gate_net = nn.Sequential(
            nn.Conv2d(3 * hidden, hidden, 1),
            nn.GroupNorm(1, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        last = self.gate_net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def gate(self, rgb: Tensor, x: Tensor) -> Tensor:
        """The RGB weight ``g`` (B, C, H, W) in (0, 1); X gets ``1 - g``."""
        r, s = self.reduce_rgb(rgb), self.reduce_x(x)
        return torch.sigmoid(self.gate_net(torch.cat([r, s, (r - s).abs()], dim=1)))

    def forward(self, rgb: Tensor, x: Tensor) -> Tensor:
        """Fuse an RGB and an X stage map (B, C, H, W) into one map of the same shape."""
        if rgb.shape != x.shape or rgb.ndim != 4 or rgb.shape[1] != self.dim:
            raise ValueError(
                f"expected two maps (B, {self.dim}, H, W) of one shape, got "
                f"{tuple(rgb.shape)} and {tuple(x.shape)}"
            )
        g = self.gate(rgb, x)
        fused = g * rgb + (1 - g) * x
        return self.norm(fused.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
