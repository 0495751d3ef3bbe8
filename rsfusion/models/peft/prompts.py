"""Cross-modal prompting shared by MoBaNet's CPIA and KTB's MAPA.

Both methods, before each backbone stage, mix the RGB and X tokens into one shared prompt ``u``
(no nonlinearity anywhere) and add it to each stream together with a per-modality channel-wise
affine copy of it. The two papers differ only in the bottleneck ratio: 1/4 for MoBaNet
(arXiv 2026), 1/8 for KTB (Cai et al., CVPR 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rsfusion.models.backbones.base import StreamState, as_tokens, tokens_like


class CrossModalPrompt(nn.Module):
    """Shared cross-modal prompt: MoBaNet's CPIA (overview figure) and KTB's MAPA prompting.

    For tokens ``r`` and ``x`` of shape (B, N, C), with hidden size ``h = round(ratio * C)``::

        u   = Linear_h->C(Linear_2h->h(concat(Linear_C->h(r), Linear_C->h(x))))
        p_m = u * gamma_m + beta_m                  (gamma_m ~ N(1, .02), beta_m ~ N(0, .02))
        r'  = r + u + p_r,  x' = x + u + p_x

    MoBaNet's SAM path injects the per-modality prompts ``u + p_m`` into its bottleneck adapters
    instead (:meth:`stream_prompts`); :meth:`prompt` gives ``u`` alone.

    Args:
        dim: token channels C.
        ratio: bottleneck ratio r (MoBaNet 1/4, KTB 1/8).
        init_std: standard deviation of the channel prompts around their means (1 and 0).

    Example:
        >>> import torch
        >>> cpia = CrossModalPrompt(64, ratio=1 / 4)
        >>> r, x = torch.randn(2, 9, 64), torch.randn(2, 9, 64)
        >>> r2, x2 = cpia(r, x)
        >>> r2.shape, cpia.hidden_dim
        (torch.Size([2, 9, 64]), 16)
    """

    def __init__(self, dim: int, ratio: float = 0.25, init_std: float = 0.02) -> None:
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        hidden = max(1, round(dim * ratio))
        self.dim, self.hidden_dim = dim, hidden
        self.down_rgb = nn.Linear(dim, hidden)
        self.down_x = nn.Linear(dim, hidden)
        self.mix = nn.Linear(2 * hidden, hidden)
        self.up = nn.Linear(hidden, dim)
        self.gamma_rgb = nn.Parameter(1 + init_std * torch.randn(dim))
        self.beta_rgb = nn.Parameter(init_std * torch.randn(dim))
        self.gamma_x = nn.Parameter(1 + init_std * torch.randn(dim))
        self.beta_x = nn.Parameter(init_std * torch.randn(dim))

    def prompt(self, r: Tensor, x: Tensor) -> Tensor:
        """The shared prompt ``u`` (B, N, C) generated from both modalities' tokens."""
        both = torch.cat([self.down_rgb(r), self.down_x(x)], dim=-1)
        return self.up(self.mix(both))

    def stream_prompts(self, r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The per-modality prompts ``(u + p_rgb, u + p_x)`` generated from both modalities'
        tokens, as MoBaNet's SAM path feeds its prompt-injected adapters (the released code)."""
        u = self.prompt(r, x)
        return (
            torch.addcmul(self.beta_rgb, u, 1 + self.gamma_rgb),
            torch.addcmul(self.beta_x, u, 1 + self.gamma_x),
        )

    def inject(self, r: Tensor, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Add a given prompt ``u`` and its per-modality channel prompts to both streams."""
        # r + u + (u * gamma + beta) as r + beta + u * (1 + gamma): two passes over the tokens
        # instead of five (the full-resolution stages are memory-bound on CPUs)
        r_out = torch.addcmul(r + self.beta_rgb, u, 1 + self.gamma_rgb)
        x_out = torch.addcmul(x + self.beta_x, u, 1 + self.gamma_x)
        return r_out, x_out

    def forward(
        self, r: Tensor, x: Tensor, return_prompt: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Prompt both streams.

        Args:
            r: RGB tokens (B, N, C) (patch tokens only, no cls token).
            x: X tokens (B, N, C).
            return_prompt: also return the shared prompt ``u``.

        Returns:
            ``(r', x')``, or ``(r', x', u)`` when ``return_prompt`` is set.
        """
        if r.shape != x.shape or r.shape[-1] != self.dim:
            raise ValueError(
                f"expected two token tensors (..., {self.dim}) of one shape, got "
                f"{tuple(r.shape)} and {tuple(x.shape)}"
            )
        u = self.prompt(r, x)
        r_out, x_out = self.inject(r, x, u)
        return (r_out, x_out, u) if return_prompt else (r_out, x_out)


def prompt_streams(
    prompt: CrossModalPrompt, r: StreamState, x: StreamState
) -> tuple[StreamState, StreamState]:
    """Prompt both streams' patch tokens (maps are flattened to tokens and back; class and
    extra tokens are left alone): MoBaNet's CPIA and KTB's MAPA before a stage."""
    pr, px = prompt(as_tokens(r.patches()), as_tokens(x.patches()))
    return r.with_patches(tokens_like(pr, r.patches())), x.with_patches(
        tokens_like(px, x.patches())
    )
