"""Bottleneck adapters: KTB's MAPA adaptation and MoBaNet's prompt-injected adapter.

KTB (Cai et al., CVPR 2025): a modality-specific bottleneck adapter in every frozen block that
reads the tokens after the attention residual; 0.5 x its output is added after the FFN
residual. MoBaNet (arXiv 2026, the SAM path of CPIA): the same adapter on each block's output,
with the block's per-modality cross-modal prompt projected into the bottleneck before the
nonlinearity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


class BottleneckAdapter(nn.Module):
    """Bottleneck adapter: KTB's MAPA adaptation, MoBaNet's CPIA prompt-injected adapter.

    ``out = scale * Up(Dropout(ReLU(Down(t) [+ Prompt(u)])))``, with ``Up`` zero-initialised so
    the adapter contributes exactly 0 at initialisation and the frozen backbone is unchanged.

    Args:
        dim: token channels C.
        reduction: bottleneck reduction; hidden size ``max(1, C // reduction)``.
        dropout: dropout after the nonlinearity.
        prompt_dim: channels of an injected prompt (MoBaNet "prompt-injected adapter"); ``None``
            for a plain adapter (KTB).
        scale: factor on the output (KTB uses 0.5).
        skip: return ``t + out`` instead of ``out`` (the adapter's own residual connection).

    Example:
        >>> import torch
        >>> adapter = BottleneckAdapter(64, scale=0.5)
        >>> bool((adapter(torch.randn(2, 9, 64)) == 0).all())
        True
    """

    def __init__(
        self,
        dim: int,
        reduction: int = 16,
        dropout: float = 0.1,
        prompt_dim: int | None = None,
        scale: float = 1.0,
        skip: bool = False,
    ) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.hidden_dim, self.scale, self.skip = hidden, scale, skip
        self.down = nn.Linear(dim, hidden)
        self.prompt_proj = nn.Linear(prompt_dim, hidden) if prompt_dim is not None else None
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, t: Tensor, prompt: Tensor | None = None) -> Tensor:
        """Adapt tokens ``t`` (..., C); ``prompt`` (..., prompt_dim) is required iff injected."""
        if (prompt is None) != (self.prompt_proj is None):
            raise ValueError(
                "this adapter was built with prompt_dim="
                f"{None if self.prompt_proj is None else self.prompt_proj.in_features} "
                f"and called {'without' if prompt is None else 'with'} a prompt"
            )
        h = self.down(t)
        if self.prompt_proj is not None and prompt is not None:
            h = h + self.prompt_proj(prompt)
        out = self.scale * self.up(self.drop(self.act(h)))
        return t + out if self.skip else out


def stream_adapters(
    widths: Sequence[Sequence[int]], make: Callable[[int], nn.Module]
) -> nn.ModuleDict:
    """One adapter per block and stream: ``adapters[stream][stage][block]``, built by
    ``make(channels)`` for every block's width (RGB's, then X's), as MoBaNet's prompt-injected
    adapters and KTB's MAPA adapters."""
    return nn.ModuleDict(
        {
            stream: nn.ModuleList(nn.ModuleList(make(c) for c in stage) for stage in widths)
            for stream in ("rgb", "x")
        }
    )
