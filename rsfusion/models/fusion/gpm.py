"""CPAL's gated perception module (GPM), Liu et al., IEEE TCSVT 2025, eq. (13)-(18), Fig. 4.

One GPM per stage fuses the prompted RGB and X stage maps into the map
that replaces the RGB feature sent to the decoder head.

Width at run time. The paper's ``Linear`` layers (eq. 13, 14, 16) act on the width axis of
the reduced maps: the authors build them as ``nn.Linear(640 / stride, 640 / stride)`` (160, 80,
40, 20) and feed every image at 640 wide (``configs/CPAL_config.py``: test-time ``Resize``
to ``img_scale (480, 640)`` keeping the ratio, then ``Pad`` to 480 x 640, so FMB's 600 x 800
and PST900's 720 x 1280 images both arrive 640 wide); any other width fails or scrambles rows
in their ``.view(-1, linear_dim)``. Here each GPM is built for a fixed ``width`` (see
:func:`gpm_width`) and a map of another width W is resized (bilinear, align_corners=False,
along the width only) to ``width`` for the attention branch; the gated result is resized back
to W before it is added to the un-resized residual, so the module runs at any (H, W), the
residual path never loses resolution, and at W == ``width`` the computation is exactly the
authors'. This keeps their parameters (and checkpoints' shapes) and mirrors their own
pipeline, which resizes the image rather than the layers.

Parameter count against Table IX (InternImage-H, FMB): with ``h = C // 5`` and width w a GPM
has ``2Ch + h + C + 4w(w + 1)``. For C = 320/640/1280/2560 and w = 160/80/40/20 (640 wide)::

    stages   this code   Table IX
    4        2,626,192   2.62M
    3-4      3,289,648   3.28M
    2-4      3,480,176   3.48M
    1-4      3,624,560   3.62M

matching every row when the table truncates to two decimals (as the MCP rows do). The 800-wide
reading (w = 200/100/50/25, FMB's native width) gives 3.29M / 3.50M / 3.70M for rows 2-4 and
does not match. The authors' class also builds an unused ``Conv1d(h, h, 1)``
(``conv_forget_attended``, 262,656 parameters at stage 4) that Table IX leaves out; it is not
built here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gpm_width(input_width: int, stride: int) -> int:
    """Width of a stride-``stride`` map for a ``input_width``-wide image (ceil, as InternImage's
    stride-2 convolutions): ``gpm_width(640, 4) == 160``, the authors' stage-1 ``linear_dim``."""
    return -(-input_width // stride)


class GPM(nn.Module):
    """Gated perception module, CPAL (TCSVT 2025) eq. (13)-(18), Fig. 4.

    On stage maps ``rgb`` and ``x`` (B, C, H, W), with ``Lin`` Linear layers over the width
    axis (each of the h channels is H tokens of W features)::

        R', X' = Conv1x1_C->h(rgb), Conv1x1_C->h(x)        (one shared conv; eq. 13-14)
        Q, K, V = Lin_q(X'), Lin_k(R'), Lin_v(R')
        A   = softmax(Q K^T / sqrt(W))        (B, h, H, H): attention over rows  (eq. 15)
        O   = A V                                             (remember vector V_r)
        g   = sigmoid(Lin_g(O))                               (forget vector V_f, eq. 16)
        out = Conv1x1_h->C(O * g + R')                        (eq. 17-18)

    Eq. 13 writes ``V_RGB = Linear(conv(T_RGB))`` and eq. 17 adds ``V_RGB``; the authors' code
    (``CrossAttentionWithForgetGate_*``) adds ``conv(rgb)`` before any Linear, as here
    (the code's choice; the paper calls it "the raw feature"). Queries come from X, keys,
    values and the residual from RGB (their call ``Gated_attention_i(seq_out_i[i], seq_out[i])``).

    Args:
        dim: stage channels C.
        width: the width the width-axis Linears are built for (:func:`gpm_width`); maps of
            another width are resized to it for the attention branch (module docstring).
        reduction: channel reduction, ``h = C // reduction`` (CPAL: 5).
        hidden: h directly, overriding ``reduction``.

    Example:
        >>> import torch
        >>> gpm = GPM(40, width=8)
        >>> gpm(torch.randn(2, 40, 5, 8), torch.randn(2, 40, 5, 8)).shape
        torch.Size([2, 40, 5, 8])
        >>> gpm(torch.randn(2, 40, 7, 11), torch.randn(2, 40, 7, 11)).shape  # any width
        torch.Size([2, 40, 7, 11])
    """

    def __init__(self, dim: int, width: int, reduction: int = 5, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else dim // reduction
        if hidden < 1 or width < 1:
            raise ValueError(
                f"GPM needs hidden >= 1 and width >= 1, got hidden={hidden} (C={dim}, "
                f"reduction={reduction}) and width={width}"
            )
        self.dim, self.hidden_dim, self.width = dim, hidden, width
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.forget = nn.Linear(width, width)
        self.expand = nn.Conv2d(hidden, dim, 1)

    @staticmethod
    def num_parameters(dim: int, width: int, reduction: int = 5) -> int:
        """``2Ch + h + C + 4w(w + 1)`` with ``h = C // reduction``."""
        h = dim // reduction
        return 2 * dim * h + h + dim + 4 * width * (width + 1)

    def _to_width(self, t: Tensor, width: int) -> Tensor:
        if t.shape[-1] == width:
            return t
        return F.interpolate(t, size=(t.shape[-2], width), mode="bilinear", align_corners=False)

    def _check(self, rgb: Tensor, x: Tensor) -> None:
        if rgb.shape != x.shape or rgb.ndim != 4 or rgb.shape[1] != self.dim:
            raise ValueError(
                f"expected two maps (B, {self.dim}, H, W) of one shape, got "
                f"{tuple(rgb.shape)} and {tuple(x.shape)}"
            )

    def _qkv(self, rgb: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r = self.reduce(rgb)
        s = self._to_width(self.reduce(x), self.width)
        rw = self._to_width(r, self.width)
        return r, self.query(s), self.key(rw), self.value(rw)

    def attention(self, rgb: Tensor, x: Tensor) -> Tensor:
        """The perception matrix ``A`` (B, h, H, H) of eq. (15): rows of X attend to rows of RGB."""
        self._check(rgb, x)
        _, q, k, _ = self._qkv(rgb, x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.width), dim=-1)

    def forward(self, rgb: Tensor, x: Tensor) -> Tensor:
        """The fused map (B, C, H, W) that replaces the RGB stage feature."""
        self._check(rgb, x)
        r, q, k, v = self._qkv(rgb, x)
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(QK^T / sqrt(width)) V
        gated = self._to_width(o * torch.sigmoid(self.forget(o)), r.shape[-1])
        return self.expand(gated + r)
