"""CMX's feature rectification (FRM) and feature fusion (FFM) modules, as SegRGB-X uses them.

Zhang et al., "CMX: Cross-Modal Fusion for RGB-X Semantic Segmentation with Transformers",
T-ITS 2023, Sec. III-B/C; SegRGB-X (arXiv 2603.28023) uses them per stage on MiT.
Checked against the authors' ``models/net_utils.py`` (huaaaliu/RGBX_Semantic_Segmentation,
commit e251d86): ``FeatureRectifyModule`` and ``FeatureFusionModule`` (``CrossPath`` then
``ChannelEmbed``). Written anew here; the behaviour, parameter shapes and initialisation follow
theirs. Per stage, FRM rectifies the RGB and X maps that continue down each stream, and FFM
fuses the rectified pair into the map sent to the decoder. CMX (and SegRGB-X, on MiT) use
``reduction=1`` and heads ``(1, 2, 5, 8)`` for stages 1-4.

Details taken from the authors' code, which the paper text leaves open:

- FRM's channel descriptor is ``[GAP(x1), GAP(x2), GMP(x1), GMP(x2)]`` (4C). The first C of
  the 2C sigmoid outputs (``w_c1``) and the first spatial map (``w_s1``) scale ``x1`` in the
  *second* output; ``out1`` adds ``w_c2 * x2`` and ``w_s2 * x2`` (each modality is rectified
  with the other one's reweighted map).
- FFM's cross-attention has no query projection: the queries are ``u`` itself, split into
  heads. Keys and values are one bias-free ``Linear(h, 2h)`` per modality. The "context"
  ``K^T V * scale`` (d x d per head, d = h / heads) is softmax-normalised over the key-channel
  axis (``softmax(dim=-2)``: each column sums to one), and each modality's queries read the
  *other* modality's context.
- The CrossPath normalisation is always ``nn.LayerNorm``; ``norm_layer`` (BatchNorm2d in CMX,
  SyncBN when distributed) is used only in the channel embedding.
- Initialisation (CMX's encoder applies it to both modules): Linear weights truncated normal
  (std .02) with zero bias; Conv2d weights normal(0, sqrt(2 / fan_out)) with zero bias, where
  fan_out = k * k * out_channels / groups; norms weight 1, bias 0.

Parameter counts (C = ``dim``, affine norms), derived in :meth:`FRM.num_parameters` and
:meth:`FFM.num_parameters`; at ``reduction=1``: FRM ``26C^2 + 9C + 2``, FFM ``17C^2 + 26C``.
At MiT-B2 widths (64, 128, 320, 512) the four FRMs hold 10,019,848 and the four FFMs 6,572,032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FFM", "FRM", "cmx_init_"]


def cmx_init_(module: nn.Module) -> None:
    """CMX's weight initialisation for one module (use with ``Module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        fan_out //= module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_pair(x1: Tensor, x2: Tensor, dim: int) -> None:
    if x1.ndim != 4 or x1.shape != x2.shape or x1.shape[1] != dim:
        raise ValueError(
            f"expected two maps (B, {dim}, H, W) of one shape, got "
            f"{tuple(x1.shape)} and {tuple(x2.shape)}"
        )


class FRM(nn.Module):
    """Feature rectification module, CMX (T-ITS 2023) Sec. III-B, eq. (1)-(4).

    On maps ``x1`` (RGB) and ``x2`` (X) of shape (B, C, H, W), with ``x = concat(x1, x2)``::

        w_c1, w_c2 = split(sigmoid(Lin(ReLU(Lin([GAP(x); GMP(x)])))))  4C -> 4C/r -> 2C
        w_s1, w_s2 = split(sigmoid(Conv1x1(ReLU(Conv1x1(x)))))         2C -> C/r -> 2
        out1 = x1 + lambda_c * w_c2 * x2 + lambda_s * w_s2 * x2
        out2 = x2 + lambda_c * w_c1 * x1 + lambda_s * w_s1 * x1

    ``w_c*`` are (B, C, 1, 1) channel weights, ``w_s*`` (B, 1, H, W) spatial weights.

    Args:
        dim: channels C of each input.
        reduction: hidden-width reduction r of both weight networks (CMX: 1).
        lambda_c: weight of the channel-wise rectification (CMX: 0.5).
        lambda_s: weight of the spatial-wise rectification (CMX: 0.5).

    Example:
        >>> import torch
        >>> frm = FRM(8)
        >>> out1, out2 = frm(torch.randn(2, 8, 17, 23), torch.randn(2, 8, 17, 23))
        >>> out1.shape, out2.shape
        (torch.Size([2, 8, 17, 23]), torch.Size([2, 8, 17, 23]))
    """

    def __init__(
        self, dim: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5
    ) -> None:
        super().__init__()
        if dim < 1 or reduction < 1 or dim // reduction < 1:
            raise ValueError(f"FRM needs dim // reduction >= 1, got dim={dim}, r={reduction}")
        self.dim, self.lambda_c, self.lambda_s = dim, lambda_c, lambda_s
        hidden_c, hidden_s = 4 * dim // reduction, dim // reduction
        self.channel_mlp = nn.Sequential(
            nn.Linear(4 * dim, hidden_c), nn.ReLU(), nn.Linear(hidden_c, 2 * dim), nn.Sigmoid()
        )
        self.spatial_mlp = nn.Sequential(
            nn.Conv2d(2 * dim, hidden_s, 1), nn.ReLU(), nn.Conv2d(hidden_s, 2, 1), nn.Sigmoid()
        )
        self.apply(cmx_init_)

    @staticmethod
    def num_parameters(dim: int, reduction: int = 1) -> int:
        """``6Cg + g + 2C + 2Cs + 3s + 2`` with ``g = 4C // r``, ``s = C // r``.

        Channel MLP ``4C*g + g + g*2C + 2C``; spatial MLP ``2C*s + s + 2s + 2``. At r = 1:
        ``26C^2 + 9C + 2``.
        """
        g, s = 4 * dim // reduction, dim // reduction
        return 6 * dim * g + g + 2 * dim + 2 * dim * s + 3 * s + 2

    def weights(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(w_c1, w_c2, w_s1, w_s2)``: channel (B, C, 1, 1) and spatial (B, 1, H, W) weights."""
        _check_pair(x1, x2, self.dim)
        x = torch.cat((x1, x2), dim=1)
        pooled = torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)  # (B, 4C)
        w_c = self.channel_mlp(pooled)[..., None, None]  # (B, 2C, 1, 1)
        w_s = self.spatial_mlp(x)  # (B, 2, H, W)
        w_c1, w_c2 = w_c.chunk(2, dim=1)
        w_s1, w_s2 = w_s.chunk(2, dim=1)
        return w_c1, w_c2, w_s1, w_s2

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """The rectified pair ``(out1, out2)``, each (B, C, H, W)."""
        w_c1, w_c2, w_s1, w_s2 = self.weights(x1, x2)
        out1 = x1 + self.lambda_c * w_c2 * x2 + self.lambda_s * w_s2 * x2
        out2 = x2 + self.lambda_c * w_c1 * x1 + self.lambda_s * w_s1 * x1
        return out1, out2


class FFM(nn.Module):
    """Feature fusion module, CMX (T-ITS 2023) Sec. III-C, eq. (5)-(8).

    Stage 1, information exchange ("CrossPath"), on tokens ``x_m`` (B, N, C), h = C // r::

        y_m, u_m = split(ReLU(Lin_m(x_m)))                 C -> 2h; residual y, cross u
        K_m, V_m = split(Lin_kv_m(u_m))                    bias-free h -> 2h
        ctx_m    = softmax_keys(K_m^T V_m * d^-0.5)        per head, d x d, d = h / heads
        v_1, v_2 = u_1 ctx_2, u_2 ctx_1                    queries are u, split into heads
        t_m      = LayerNorm(x_m + Lin_end_m([y_m; v_m]))  2h -> C

    Stage 2, fusion ("channel embedding"), on ``z = concat(t_1, t_2)`` as a (B, 2C, H, W) map::

        out = Norm(Conv1x1(z) + Norm(Conv1x1(ReLU(DWConv3x3(Conv1x1(z))))))

    with a bias-free residual 2C -> C and the main branch 2C -> h -> h -> C.

    Args:
        dim: channels C of each input and of the output.
        num_heads: heads of the cross-attention; must divide ``dim // reduction``
            (CMX: 1, 2, 5, 8 for stages 1-4).
        reduction: width reduction r of the cross path and the channel embedding (CMX: 1).
        norm_layer: 2-d norm of the channel embedding (CMX: BatchNorm2d).

    Example:
        >>> import torch
        >>> ffm = FFM(10, num_heads=5)
        >>> ffm(torch.randn(2, 10, 17, 23), torch.randn(2, 10, 17, 23)).shape
        torch.Size([2, 10, 17, 23])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        reduction: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = dim // reduction if reduction >= 1 else 0
        if hidden < 1 or num_heads < 1 or hidden % num_heads:
            raise ValueError(
                f"FFM needs num_heads to divide dim // reduction >= 1, got dim={dim}, "
                f"reduction={reduction}, num_heads={num_heads}"
            )
        self.dim, self.hidden_dim, self.num_heads = dim, hidden, num_heads
        self.scale = (hidden // num_heads) ** -0.5
        # Stage 1: CrossPath.
        self.proj1, self.proj2 = nn.Linear(dim, 2 * hidden), nn.Linear(dim, 2 * hidden)
        self.kv1 = nn.Linear(hidden, 2 * hidden, bias=False)
        self.kv2 = nn.Linear(hidden, 2 * hidden, bias=False)
        self.end1, self.end2 = nn.Linear(2 * hidden, dim), nn.Linear(2 * hidden, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # Stage 2: channel embedding.
        self.residual = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 1),
            norm_layer(dim),
        )
        self.norm = norm_layer(dim)
        self.apply(cmx_init_)

    @staticmethod
    def num_parameters(dim: int, reduction: int = 1) -> int:
        """``2C^2 + 11Ch + 4h^2 + 15h + 11C`` with ``h = C // r`` (affine BatchNorm2d).

        CrossPath: projections ``2(2Ch + 2h)``, key/values ``2 * 2h^2``, end projections
        ``2(2hC + C)``, LayerNorms ``4C``. Channel embedding: residual ``2C^2``, main branch
        ``(2Ch + h) + 10h + (hC + C)``, two BatchNorms ``4C``. At r = 1: ``17C^2 + 26C``.
        """
        h = dim // reduction
        return 2 * dim * dim + 11 * dim * h + 4 * h * h + 15 * h + 11 * dim

    def context(self, u: Tensor, kv: nn.Linear) -> Tensor:
        """``softmax_keys(K^T V * scale)`` (B, heads, d, d) of tokens ``u`` (B, N, h).

        Row i is key channel i, column j value channel j; every column sums to one.
        """
        b, n, _ = u.shape
        k, v = kv(u).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return torch.softmax(k.transpose(-2, -1) @ v * self.scale, dim=-2)

    def _read(self, u: Tensor, ctx: Tensor) -> Tensor:
        b, n, _ = u.shape
        q = u.reshape(b, n, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, d)
        return (q @ ctx).transpose(1, 2).reshape(b, n, self.hidden_dim)

    def cross_path(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1 on tokens (B, N, C): each modality's queries read the other's context."""
        y1, u1 = F.relu(self.proj1(x1)).chunk(2, dim=-1)
        y2, u2 = F.relu(self.proj2(x2)).chunk(2, dim=-1)
        v1 = self._read(u1, self.context(u2, self.kv2))
        v2 = self._read(u2, self.context(u1, self.kv1))
        t1 = self.norm1(x1 + self.end1(torch.cat((y1, v1), dim=-1)))
        t2 = self.norm2(x2 + self.end2(torch.cat((y2, v2), dim=-1)))
        return t1, t2

    def channel_embed(self, z: Tensor) -> Tensor:
        """Stage 2 on the concatenated map (B, 2C, H, W) -> (B, C, H, W)."""
        return self.norm(self.residual(z) + self.embed(z))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The fused map (B, C, H, W) of two rectified maps (B, C, H, W)."""
        _check_pair(x1, x2, self.dim)
        b, c, h, w = x1.shape
        t1, t2 = self.cross_path(x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2))
        z = torch.cat((t1, t2), dim=-1).transpose(1, 2).reshape(b, 2 * c, h, w)
        return self.channel_embed(z)
