"""KTB's dynamic sparse cross-modality fusion (DSCF), Cai et al., CVPR 2025.

A deformable-attention fusion in the spirit of DAT (Xia et al., CVPR 2022): every pixel of the
fused query map attends to a sparse set of keys sampled from both modalities at learned
positions, with a relative-position bias read off a learnable table at the query-key
displacement.

Two implementations of one computation. The reference (:meth:`DSCF.forward_parts`, used on
CPUs) keeps every intermediate in the layout of the equations; its float32 results are those
every demo figure was measured with, bit for bit. The fused one (GPUs; ``DSCF.fused``) runs as
a few batched kernels: both modalities' offset nets share their layer norm, GELU and output
projection, one ``grid_sample`` reads r, x and Q at every group's points, the 1x1 convolutions
run as linear layers on channels-last views, and the attention is one
``scaled_dot_product_attention`` call with the position bias as its additive mask. Neither has
Python loops over groups or heads or host synchronisations; both cache their coordinate grids.
The two agree to float32 rounding (tests), which is not bit-equality: training is chaotic, so
the reference stays where the published demo numbers are reproduced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DSCF", "DSCFParts", "dscf_stage_options"]

# The authors' settings per stage (paper stages 1-4 = engine stages 0-3).
_STRIDES = (8, 4, 2, 1)
_GROUPS = (1, 2, 4, 8)
_HEADS = (2, 4, 8, 16)
_LAYER_SCALE = (1e-3, 1e-3, 1e-3, 1.0)


def dscf_stage_options(stage: int, feature_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """KTB's per-stage DSCF settings (authors' code), keyword arguments for :class:`DSCF`.

    Args:
        stage: 0-based stage index as the engine passes it (0..3 = the paper's stages 1..4).
        feature_size: optional training map size (H, W); when given, the bias table gets the
            DAT-style size (2H - 1, 2W - 1) [inf]; otherwise DSCF's default table is used.
    """
    if not 0 <= stage < len(_STRIDES):
        raise ValueError(f"KTB has 4 stages (0..3), got stage {stage}")
    options: dict[str, Any] = {
        "stride": _STRIDES[stage],
        "groups": _GROUPS[stage],
        "heads": _HEADS[stage],
        "layer_scale_init": _LAYER_SCALE[stage],
    }
    if feature_size is not None:
        options["bias_table"] = (2 * feature_size[0] - 1, 2 * feature_size[1] - 1)
    return options


@dataclass
class DSCFParts:
    """Intermediate results of one DSCF pass (for tests and inspection).

    Shapes: B batch, d reduced channels, G groups, h heads, N = 2 * Ns sampled points.
    """

    r: Tensor  # (B, d, H, W) reduced RGB
    x: Tensor  # (B, d, H, W) reduced X
    feat: Tensor  # (B, d, H, W) F, the identity branch
    query: Tensor  # (B, d, H, W) Q
    positions: Tensor  # (B, G, N, 2) sampling positions (x, y) in [-1, 1]: RGB set, then X set
    r_s: Tensor  # (B, d, N) r sampled
    x_s: Tensor  # (B, d, N) x sampled
    q_s: Tensor  # (B, d, N) Q sampled
    weights: Tensor  # (B, 2, N) mixing weights (RGB, X)
    mixed: Tensor  # (B, d, N) S
    attn: Tensor  # (B, h, H*W, N) attention probabilities
    proj: Tensor  # (B, d, H, W) Proj(attention output)
    fused: Tensor  # (B, d, H, W) a * proj + b * F
    out: Tensor  # (B, C, H, W) LayerNorm(Linear(fused))


class _OffsetNet(nn.Module):
    """Offset network, one per modality, shared by its groups (authors' code).

    Depthwise Conv k9 stride s pad 4 -> LayerNorm over channels -> GELU -> Conv1x1 -> 2 (no bias).
    The two output channels are (x, y) offsets in normalised [-1, 1] coordinates.
    """

    def __init__(self, channels: int, stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 9, stride=stride, padding=4, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.out = nn.Conv2d(channels, 2, 1, bias=False)

    def forward(self, t: Tensor) -> Tensor:
        """(B*G, d/G, H, W) -> offsets (B*G, 2, Hk, Wk), Hk = ceil(H / s)."""
        y = self.dw(t)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(F.gelu(y))


def _pixel_grid(height: int, width: int, step: int, device=None, dtype=None) -> Tensor:
    """Pixels (i*step, j*step) as (x, y) in [-1, 1] for ``align_corners=True``, (H', W', 2).

    A size-1 axis maps to -1.
    """
    dtype = dtype or torch.float32
    ys = torch.arange(0, height, step, device=device, dtype=dtype) * (2.0 / max(height - 1, 1))
    xs = torch.arange(0, width, step, device=device, dtype=dtype) * (2.0 / max(width - 1, 1))
    gy, gx = torch.meshgrid(ys - 1.0, xs - 1.0, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


@functools.lru_cache(maxsize=64)
def _stored_grid(
    height: int, width: int, step: int, device: torch.device, dtype: torch.dtype, scale: float
) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in training
        return _pixel_grid(height, width, step, device, dtype) * scale


def _grid(
    height: int, width: int, step: int, device=None, dtype=None, scale: float = 1.0
) -> Tensor:
    """:func:`_pixel_grid` times ``scale``, computed once per size, device and dtype (no kernels
    in later calls); traced afresh under ``torch.compile``."""
    if torch.compiler.is_compiling():
        return _pixel_grid(height, width, step, device, dtype) * scale
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _stored_grid(height, width, step, device, dtype or torch.float32, scale)


class DSCF(nn.Module):
    """Dynamic sparse cross-modality fusion, KTB (CVPR 2025) DSCF (authors' code).

    On two normalised stage maps (B, C, H, W)::

        r, x  = Linear_C->d(rgb), Linear_C->d(x)            (d = C / reduction)
        F     = GELU(BN(Conv3x3_2d->d([r, x]))); Q = Conv1x1(F)
        p_m   = clamp(ref + OffsetNet_m(m), -1, 1)            per modality m, per group
        r_s, x_s, Q_s = bilinear samples at [p_r, p_x]        (2 * Ns points)
        w     = softmax_2(MLP(Q_s)); S = w0 * r_s + w1 * x_s
        attn  = MHA(Q, K(S), V(S)) + sampled relative-position bias
        out   = LayerNorm_C(Linear_d->C(a * Proj(attn) + b * F))

    Args:
        dim: stage channels C.
        reduction: C / d (8 in KTB).
        stride: offset-net stride s; Ns = ceil(H / s) * ceil(W / s) points per modality.
        groups: offset groups G (each group of d / G channels has its own positions).
        heads: attention heads (a multiple of ``groups``).
        layer_scale_init: init of the per-channel scale a (b starts at 1).
        bias_table: size (T_h, T_w) or T of the per-head relative-position bias table; it spans
            displacements [-2, 2] (normalised) and is sampled bilinearly, so any H, W works.
        faithful: keep the final LayerNorm frozen at identity affine, as the authors' code does;
            default trains it.
        eps: final LayerNorm epsilon.

    Example:
        >>> import torch
        >>> dscf = DSCF(64, stride=4, groups=2, heads=4)
        >>> dscf(torch.randn(2, 64, 9, 7), torch.randn(2, 64, 9, 7)).shape
        torch.Size([2, 64, 9, 7])
    """

    #: the fused implementation: None = on CUDA tensors (the reference elsewhere), True, False
    fused: bool | None = None

    def __init__(
        self,
        dim: int,
        reduction: int = 8,
        stride: int = 1,
        groups: int = 1,
        heads: int = 2,
        layer_scale_init: float = 1e-3,
        bias_table: int | tuple[int, int] = 31,
        faithful: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        d = dim // reduction
        table = (bias_table, bias_table) if isinstance(bias_table, int) else tuple(bias_table)
        if d < 1 or d % heads or d % groups or heads % groups:
            raise ValueError(
                f"DSCF needs d = {dim}//{reduction} = {d} divisible by heads ({heads}) and "
                f"groups ({groups}), and heads divisible by groups"
            )
        if min(table) < 2 or stride < 1:
            raise ValueError(f"bias_table must be >= 2 and stride >= 1, got {table}, {stride}")
        self.dim, self.hidden_dim = dim, d
        self.stride, self.groups, self.heads = stride, groups, heads
        self.faithful = faithful
        self.scale = (d // heads) ** -0.5
        self.reduce_rgb = nn.Linear(dim, d)
        self.reduce_x = nn.Linear(dim, d)
        self.local = nn.Sequential(
            nn.Conv2d(2 * d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.GELU()
        )
        self.to_q = nn.Conv2d(d, d, 1)
        self.offset_rgb = _OffsetNet(d // groups, stride)
        self.offset_x = _OffsetNet(d // groups, stride)
        self.mix = nn.Sequential(nn.Conv1d(d, d, 1), nn.ReLU(), nn.Conv1d(d, 2, 1))
        self.to_k = nn.Conv1d(d, d, 1)
        self.to_v = nn.Conv1d(d, d, 1)
        self.proj = nn.Conv2d(d, d, 1)
        self.rpb_table = nn.Parameter(torch.empty(heads, *table))
        nn.init.trunc_normal_(self.rpb_table, std=0.01)
        self.layer_scale = nn.Parameter(torch.full((d,), float(layer_scale_init)))
        self.skip_scale = nn.Parameter(torch.ones(d))
        self.expand = nn.Linear(d, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        if faithful:  # kept (at 1, 0) for checkpoint layout, frozen and unused
            self.norm.requires_grad_(False)

    def reference_points(self, height: int, width: int, device=None, dtype=None) -> Tensor:
        """Reference grid (Hk, Wk, 2) as (x, y) in [-1, 1] [inf].

        The points are the input pixels (i*s, j*s), the centres of the offset net's strided
        9x9 receptive fields, so zero offsets sample ``t[..., ::s, ::s]`` exactly.
        """
        return _grid(height, width, self.stride, device, dtype)

    def _grouped(self, t: Tensor) -> Tensor:
        b, c, h, w = t.shape
        return t.reshape(b * self.groups, c // self.groups, h, w)

    def sample_positions(self, r: Tensor, x: Tensor) -> Tensor:
        """Positions (B, G, 2*Ns, 2), RGB set then X set: clamp(ref + offset, -1, 1).

        ``r`` and ``x`` are the reduced maps (B, d, H, W); each modality's offset net reads its
        own map, group by group [inf: which map feeds the offset nets].
        """
        b, _, h, w = r.shape
        ref = self.reference_points(h, w, r.device, r.dtype).reshape(1, -1, 2)
        sets = []
        for net, t in ((self.offset_rgb, r), (self.offset_x, x)):
            off = net(self._grouped(t)).flatten(2).transpose(1, 2)  # (B*G, Ns, 2)
            sets.append((ref + off).clamp(-1.0, 1.0))
        return torch.cat(sets, dim=1).reshape(b, self.groups, -1, 2)

    def sample(self, t: Tensor, positions: Tensor) -> Tensor:
        """Bilinear (align_corners=True) samples (B, d, N) of (B, d, H, W) at its groups' points."""
        b, c = t.shape[:2]
        grid = positions.reshape(b * self.groups, -1, 1, 2)
        out = F.grid_sample(self._grouped(t), grid, mode="bilinear", align_corners=True)
        return out.reshape(b, c, -1)

    def sample_maps(self, maps: list[Tensor], positions: Tensor) -> Tensor:
        """:meth:`sample` of several (B, d, H, W) maps in one ``grid_sample``: (B, M, d, N)."""
        b, d, h, w = maps[0].shape
        g, m = self.groups, len(maps)
        t = torch.stack([t.reshape(b, g, d // g, h, w) for t in maps], dim=2)  # (B, G, M, d/G,..)
        grid = positions.reshape(b * g, -1, 1, 2)
        out = F.grid_sample(t.reshape(b * g, -1, h, w), grid, mode="bilinear", align_corners=True)
        return out.view(b, g, m, d // g, -1).transpose(1, 2).reshape(b, m, d, -1)

    def fused_positions(self, r: Tensor, x: Tensor) -> Tensor:
        """:meth:`sample_positions` with both offset nets in one batch after their depthwise
        convolutions (layer norm, GELU, 1x1 projection), float32."""
        b, _, h, w = r.shape
        g, c = self.groups, self.hidden_dim // self.groups  # ints, also when traced
        nets = (self.offset_rgb, self.offset_x)
        dw = [net.dw(self._grouped(t)) for net, t in zip(nets, (r, x))]  # 2 x (B*G, c, Hk, Wk)
        y = torch.stack(dw, dim=1).permute(0, 1, 3, 4, 2)  # (B*G, 2, Hk, Wk, c)
        y = F.layer_norm(y, (c,), None, None, self.offset_rgb.norm.eps)
        scale = torch.stack([net.norm.weight for net in nets]).view(1, 2, 1, 1, c)
        shift = torch.stack([net.norm.bias for net in nets]).view(1, 2, 1, 1, c)
        y = F.gelu(torch.addcmul(shift, y, scale)).flatten(2, 3)  # (B*G, 2, Ns, c)
        proj = torch.stack([net.out.weight.view(2, c) for net in nets]).transpose(1, 2)
        off = torch.matmul(y, proj).float()  # (B*G, 2, Ns, 2): per modality (x, y) offsets
        ref = self.reference_points(h, w, r.device, torch.float32).reshape(1, 1, -1, 2)
        return (ref + off).clamp(-1.0, 1.0).reshape(b, g, -1, 2)

    def mixing_weights(self, q_s: Tensor) -> Tensor:
        """Modality weights (B, 2, N) from the sampled queries: softmax over (RGB, X)."""
        return self.mix(q_s).softmax(dim=1)

    def position_bias(self, height: int, width: int, positions: Tensor) -> Tensor:
        """Relative-position bias (B, h, H*W, N): the table sampled at (query - key) / 2."""
        b, g, n, _ = positions.shape
        grid = _grid(height, width, 1, positions.device, positions.dtype)
        queries = grid.reshape(1, -1, 1, 2)  # (1, HW, 1, 2)
        disp = (queries - positions.reshape(b * g, 1, n, 2)) * 0.5  # (B*G, HW, N, 2)
        table = self.rpb_table.reshape(g, self.heads // g, *self.rpb_table.shape[1:])
        table = table.unsqueeze(0).expand(b, -1, -1, -1, -1).flatten(0, 1)
        bias = F.grid_sample(table, disp, mode="bilinear", align_corners=True)
        return bias.reshape(b, self.heads, height * width, n)

    def final_norm(self, t: Tensor) -> Tensor:
        """Final LayerNorm over C; ``faithful``: always the identity affine (as the authors do)."""
        if self.faithful:
            return F.layer_norm(t, (self.dim,), None, None, self.norm.eps)
        return self.norm(t)

    def forward_parts(self, rgb: Tensor, x: Tensor) -> DSCFParts:
        """Run DSCF (the reference implementation) and keep every intermediate (see
        :class:`DSCFParts`)."""
        self._check(rgb, x)
        b, _, h, w = rgb.shape
        # Per-modality Linear C->d (d = C / reduction, 8 in KTB).
        r = self.reduce_rgb(rgb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        s = self.reduce_x(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # F = GELU(BN(Conv3x3(concat))), Q = Conv1x1(F).
        feat = self.local(torch.cat([r, s], dim=1))
        query = self.to_q(feat)
        # Deformable positions and 2*Ns bilinear samples of r, x and Q.
        positions = self.sample_positions(r, s)
        r_s, x_s, q_s = (self.sample(t, positions) for t in (r, s, query))
        # Mixing: softmax over the two modalities, S = w0 * r_s + w1 * x_s.
        weights = self.mixing_weights(q_s)
        mixed = weights[:, :1] * r_s + weights[:, 1:] * x_s
        # Multi-head attention of all H*W queries against the 2*Ns keys, plus position bias.
        dh = self.hidden_dim // self.heads
        q = query.reshape(b, self.heads, dh, h * w).transpose(2, 3)
        k = self.to_k(mixed).reshape(b, self.heads, dh, -1)
        v = self.to_v(mixed).reshape(b, self.heads, dh, -1).transpose(2, 3)
        logits = (q @ k) * self.scale + self.position_bias(h, w, positions)
        attn = logits.softmax(dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(b, self.hidden_dim, h, w)
        # out = a * Proj(attn) + b * F, then Linear d->C and LayerNorm.
        proj = self.proj(out)
        fused = self.layer_scale.view(1, -1, 1, 1) * proj + self.skip_scale.view(1, -1, 1, 1) * feat
        final = self.final_norm(self.expand(fused.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return DSCFParts(
            r, s, feat, query, positions, r_s, x_s, q_s, weights, mixed, attn, proj, fused, final
        )

    def forward(self, rgb: Tensor, x: Tensor) -> Tensor:
        """Fuse an RGB and an X stage map (B, C, H, W) into one map of the same shape."""
        fused = self.fused if self.fused is not None else rgb.is_cuda
        if fused and not torch.onnx.is_in_onnx_export():  # the exporter: no SDPA with a bias
            return self.forward_fused(rgb, x)
        return self.forward_parts(rgb, x).out

    def forward_fused(self, rgb: Tensor, x: Tensor) -> Tensor:
        """The fused implementation of :meth:`forward` (see the module docstring)."""
        self._check(rgb, x)
        b, _, h, w = rgb.shape
        d, heads = self.hidden_dim, self.heads
        r = self.reduce_rgb(rgb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        s = self.reduce_x(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        feat = self.local(torch.cat([r, s], dim=1))
        feat_t = feat.permute(0, 2, 3, 1)  # (B, H, W, d): 1x1 convolutions as linear layers
        query_t = F.linear(feat_t, self.to_q.weight.view(d, d), self.to_q.bias)
        positions = self.fused_positions(r, s)
        r_s, x_s, q_s = self.sample_maps([r, s, query_t.permute(0, 3, 1, 2)], positions).unbind(1)
        weights = self.mixing_weights(q_s)
        mixed_t = torch.addcmul(weights[:, :1] * r_s, weights[:, 1:], x_s).transpose(1, 2)
        n, dh = mixed_t.shape[1], d // heads
        q = query_t.reshape(b, h * w, heads, dh).transpose(1, 2)  # (B, heads, HW, dh)
        k = F.linear(mixed_t, self.to_k.weight.view(d, d), self.to_k.bias)
        v = F.linear(mixed_t, self.to_v.weight.view(d, d), self.to_v.bias)
        k, v = (t.view(b, n, heads, dh).transpose(1, 2) for t in (k, v))  # (B, heads, N, dh)
        bias = self.position_bias(h, w, positions).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, bias, scale=self.scale)
        out_t = out.transpose(1, 2).reshape(b, h, w, d)
        proj_t = F.linear(out_t, self.proj.weight.view(d, d), self.proj.bias)
        fused_t = torch.addcmul(self.skip_scale * feat_t, self.layer_scale, proj_t)
        return self.final_norm(self.expand(fused_t)).permute(0, 3, 1, 2)

    def _check(self, rgb: Tensor, x: Tensor) -> None:
        if rgb.shape != x.shape or rgb.ndim != 4 or rgb.shape[1] != self.dim:
            raise ValueError(
                f"expected two maps (B, {self.dim}, H, W) of one shape, got "
                f"{tuple(rgb.shape)} and {tuple(x.shape)}"
            )
