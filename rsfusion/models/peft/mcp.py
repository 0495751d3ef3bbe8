"""CPAL's multi-modal cross prompter (MCP), Liu et al., IEEE TCSVT 2025, eq. (7)-(12), Fig. 3.

Every layer of the frozen dual-stream encoder gets one :class:`MCP`: two
sub-blocks ``P1`` (beside the DCNv3 mixer) and ``P2`` (beside the FFN), each shared by both
directions. A sub-block (:class:`MCPBlock`) maps one stream's tokens to a residual prompt for
the other stream through three 1x1 grouped convolutions (down, mid, up), with no nonlinearity.

Parameter count against the paper's Table IX (InternImage-H, FMB). With C channels, hidden
width h and g groups a sub-block has ``2hC/g + C + h^2/g + 2h`` parameters: ``5C + 32`` for
h = 8, g = 4. Reading "each layer of a stage holds one P1 and one P2 of that stage's width"
(10C + 64 per layer) gives, for channels 320/640/1280/2560 and depths 6/6/32/6:

    stages   this code   Table IX
    4          153,984   0.15M
    3-4        565,632   0.56M  (0.5656M: the table truncates; rounded it would read 0.57M)
    2-4        604,416   0.60M
    1-4        624,000   0.62M

All four rows match when the table truncates to two decimals (so do GPM's rows, see
``rsfusion.models.fusion.gpm``). The authors' code does not build that: every
``InternImageLayer`` instantiates the pairs of *all four* stage widths (``adap_t_0..3``,
``adap2_t_0..3``) and uses only its own stage's pair, so the model registers 50 x 2 x
(5 x 4800 + 4 x 32) = 2,412,800 MCP parameters, of which the 624,000 of Table IX ever run.
Table IX counts the used pair per layer, as this module does.

Two further details of the authors' code (``mmseg_custom/models/backbones/adapter.py``,
``Bi_direct_adapter*``), both reproduced by ``faithful=True``:

* every weight and bias is zero-initialised, so ``down`` and ``mid`` output 0 forever, their
  weights never get a gradient and only ``up.bias`` ever learns: the prompt is a learnt
  constant. Default here: ``down`` and ``mid`` Kaiming-uniform (as ``nn.Conv2d``'s default),
  their biases and all of ``up`` zero, so the prompt is 0 at initialisation and gradients reach
  ``down``/``mid`` from the second step on.
* the channels-last tokens (B, H, W, C) are permuted to (B, C, H, W) for the convolutions and
  the result is ``.view``-ed, not permuted, back to (B, H, W, C): channel c of token n of the
  prompt is element ``n * C + c`` of the (C, H*W) block, a scrambled layout (``faithful_layout``;
  it follows ``faithful`` unless given). With the all-zero init that makes the learnt prompt a
  constant per memory position rather than per channel.

The authors also put the prompt through the layer's DropPath (``x + drop_path(branch) +
drop_path(adap_t(xi))``); :meth:`MCP.forward` takes that as ``prompt_drop_path``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rsfusion.models.backbones.base import stream_scope


def _check_divisible(channels: int, hidden: int, groups: int) -> None:
    if groups < 1 or hidden < 1 or channels < 1:
        raise ValueError(
            f"MCP needs positive channels, hidden width and groups, got C={channels}, "
            f"hidden={hidden}, groups={groups}"
        )
    if channels % groups or hidden % groups:
        raise ValueError(
            f"MCP's grouped 1x1 convolutions need the channels C={channels} and the hidden "
            f"width {hidden} to be divisible by groups={groups}"
        )


class MCPBlock(nn.Module):
    """One MCP sub-block, CPAL (TCSVT 2025) eq. (9)/(12), Fig. 3.

    ``prompt = Up(Dropout(Mid(Down(t))))`` with ``Down``: 1x1 grouped conv C->h, ``Mid``:
    h->h, ``Up``: h->C (``groups`` groups each, biases on, no nonlinearity). The convolutions
    are 1x1, so they act per token: tokens (B, N, C) need no grid, maps (B, C, H, W) are
    convolved directly, and the prompt comes back in the input's layout.

    Args:
        dim: channels C of the stream.
        hidden: bottleneck width h (CPAL: 8).
        groups: groups of every convolution (CPAL: 4); C and h must be divisible by it.
        dropout: dropout after ``Mid`` (CPAL: 0.1).
        faithful: the authors' all-zero initialisation (only ``up.bias`` ever learns).
        faithful_layout: the authors' ``.view`` (not permute) back to channels-last, which
            scrambles the prompt's layout; ``None`` follows ``faithful``.

    Example:
        >>> import torch
        >>> block = MCPBlock(64)
        >>> p = block(torch.randn(2, 9, 64))
        >>> p.shape, bool((p == 0).all()), MCPBlock.num_parameters(64)
        (torch.Size([2, 9, 64]), True, 352)
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 8,
        groups: int = 4,
        dropout: float = 0.1,
        *,
        faithful: bool = False,
        faithful_layout: bool | None = None,
    ) -> None:
        super().__init__()
        _check_divisible(dim, hidden, groups)
        self.dim, self.hidden_dim, self.groups = dim, hidden, groups
        self.faithful = faithful
        self.faithful_layout = faithful if faithful_layout is None else faithful_layout
        self.down = nn.Conv2d(dim, hidden, 1, groups=groups)
        self.mid = nn.Conv2d(hidden, hidden, 1, groups=groups)
        self.drop = nn.Dropout(dropout)
        self.up = nn.Conv2d(hidden, dim, 1, groups=groups)
        self.reset_parameters()

    @staticmethod
    def num_parameters(dim: int, hidden: int = 8, groups: int = 4) -> int:
        """``2hC/g + C + h^2/g + 2h`` (= 5C + 32 for CPAL's h = 8, g = 4)."""
        _check_divisible(dim, hidden, groups)
        return 2 * hidden * dim // groups + dim + hidden * hidden // groups + 2 * hidden

    def reset_parameters(self) -> None:
        """Up zero (prompt 0 at init); down/mid Kaiming-uniform, or all zero when faithful."""
        for conv in (self.down, self.mid):
            if self.faithful:
                nn.init.zeros_(conv.weight)
            else:
                nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))  # nn.Conv2d's default
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def _grouped(self, t: Tensor, conv: nn.Conv2d) -> Tensor:
        """A 1x1 grouped conv on channels-last tokens (..., C_in) -> (..., C_out)."""
        g = self.groups
        w = conv.weight.view(g, conv.out_channels // g, conv.in_channels // g)
        out = torch.einsum("...gi,goi->...go", t.unflatten(-1, (g, -1)), w).flatten(-2)
        return out + conv.bias

    def forward(self, t: Tensor) -> Tensor:
        """The prompt for the other stream from tokens (B, N, C) or a map (B, C, H, W)."""
        if t.ndim == 3 and t.shape[-1] == self.dim:
            p = self._grouped(
                self.drop(self._grouped(self._grouped(t, self.down), self.mid)), self.up
            )
            if self.faithful_layout:  # (B, C, N) memory read as (B, N, C)
                p = p.transpose(1, 2).reshape(p.shape)
            return p
        if t.ndim == 4 and t.shape[1] == self.dim:
            p = self.up(self.drop(self.mid(self.down(t))))
            if self.faithful_layout:  # (B, C, H, W) memory read as channels-last (B, H, W, C)
                b, c, h, w = p.shape
                p = p.reshape(b, h, w, c).permute(0, 3, 1, 2)
            return p
        raise ValueError(
            f"MCPBlock({self.dim}) expects tokens (B, N, {self.dim}) or a map "
            f"(B, {self.dim}, H, W), got {tuple(t.shape)}"
        )


class MCP(nn.Module):
    """The MCP of one encoder layer: sub-blocks ``p1`` and ``p2``, CPAL eq. (7)-(12).

    With ``mixer(t) = DropPath(PostNorm1(DCNv3(LN1 t)))`` and ``ffn(t) =
    DropPath(PostNorm2(MLP(LN2 t)))`` the frozen layer's residual branches, the two streams
    are updated in four interleaved steps, each prompt read from the *latest* other stream
    (the authors' block with MCP)::

        1. x_r <- x_r + mixer(x_r) + P1(x_x)
        2. x_x <- x_x + mixer(x_x) + P1(x_r)      (x_r from step 1)
        3. x_r <- x_r + ffn(x_r)   + P2(x_x)      (x_x from step 2)
        4. x_x <- x_x + ffn(x_x)   + P2(x_r)      (x_r from step 3)

    Each ``Pi`` serves both directions (one set of weights). :meth:`forward` performs these
    updates for given branch callables, running them inside ``stream_scope('rgb' / 'x')`` so
    modality-specific LoRA in the frozen layer sees the right stream.

    Args:
        dim: channels C of the layer.
        hidden, groups, dropout, faithful, faithful_layout: as :class:`MCPBlock`.

    Example:
        >>> import torch
        >>> mcp = MCP(32)
        >>> r, x = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
        >>> r2, x2 = mcp(r, x, mixer=torch.zeros_like, ffn=torch.zeros_like)
        >>> bool(torch.equal(r2, r)), sum(p.numel() for p in mcp.parameters())  # 10C + 64
        (True, 384)
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 8,
        groups: int = 4,
        dropout: float = 0.1,
        *,
        faithful: bool = False,
        faithful_layout: bool | None = None,
    ) -> None:
        super().__init__()
        kw = {"faithful": faithful, "faithful_layout": faithful_layout}
        self.p1 = MCPBlock(dim, hidden, groups, dropout, **kw)
        self.p2 = MCPBlock(dim, hidden, groups, dropout, **kw)

    def forward(
        self,
        r: Tensor,
        x: Tensor,
        mixer: Callable[[Tensor], Tensor],
        ffn: Callable[[Tensor], Tensor],
        prompt_drop_path: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One prompted layer on both streams (the four updates above).

        Args:
            r: RGB tokens (B, N, C) or map (B, C, H, W).
            x: X tokens or map, same shape.
            mixer: the frozen layer's first residual branch (DCNv3 with its norms, DropPath).
            ffn: its second residual branch (MLP with its norms, DropPath).
            prompt_drop_path: applied to every prompt (the authors use the layer's DropPath
                there too); ``None`` adds the prompts as they are.

        Returns:
            The updated ``(r, x)``.
        """
        if r.shape != x.shape:
            raise ValueError(f"RGB and X shapes differ: {tuple(r.shape)} vs {tuple(x.shape)}")

        def drop(t: Tensor) -> Tensor:
            return t if prompt_drop_path is None else prompt_drop_path(t)

        with stream_scope("rgb"):
            r = r + mixer(r) + drop(self.p1(x))
        with stream_scope("x"):
            x = x + mixer(x) + drop(self.p1(r))
        with stream_scope("rgb"):
            r = r + ffn(r) + drop(self.p2(x))
        with stream_scope("x"):
            x = x + ffn(x) + drop(self.p2(r))
        return r, x
