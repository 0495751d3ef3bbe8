"""DCNv3, InternImage's deformable convolution, in plain PyTorch (no custom CUDA op).

DCNv3 (Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with
Deformable Convolutions", CVPR 2023, Sec. 3.1, Eq. 4) splits the channels into ``G`` groups;
every output position ``p0`` of group ``g`` is the sum over the ``K = k*k`` points of a
(dilated) kernel grid ``p_k`` of ``m_gk * x_g(p0 + p_k + Δp_gk)``: sampling offsets ``Δp`` and
modulation scalars ``m`` (softmax-normalised over the ``K`` points of a group) are predicted per
position from the input, values at fractional positions are bilinear interpolations (zero
outside the map).

:func:`dcnv3_core` is that sum as the authors' PyTorch reference
(``classification/ops_dcnv3/functions/dcnv3_func.py``, ``dcnv3_core_pytorch``; no custom
CUDA op): reference points plus the k x k dilation grid per group, offsets scaled by
``offset_scale / (W, H)``, converted to [-1, 1] and sampled with ``F.grid_sample`` (bilinear,
zero padding, ``align_corners=False``) on the input laid out as (N*group, group_channels, H, W),
weighted by the mask and summed over the kernel points. The kernel points are ordered
x-major (point ``i * kernel_h + j`` is column ``i``, row ``j``), each offset pair is (x, y),
and offsets / masks are laid out ``[group][point]`` in the last dimension, as the authors' CUDA
kernel (``dcnv3_im2col_cuda.cuh``) reads them, so weights trained with that op load here.

:class:`DCNv3` is the authors' module (``classification/ops_dcnv3/modules/dcnv3.py``,
``DCNv3_pytorch``, parameter names as in the official checkpoints): ``input_proj``, a depthwise
conv branch (``dw_conv``: conv, LayerNorm, GELU) feeding the ``offset`` and ``mask`` Linears,
the core, an optional centre feature scale, ``output_proj``. Channels-last in and out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCNv3", "ToChannelsFirst", "ToChannelsLast", "dcnv3_core"]


def dcnv3_core(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv3 operator (InternImage, Wang et al., CVPR 2023, Eq. 4) in plain PyTorch.

    Args:
        input: (N, H, W, group * group_channels), channels last.
        offset: (N, H_out, W_out, group * P * 2): per group and kernel point an (x, y) offset in
            pixels (before ``offset_scale``); ``P = kernel_h * kernel_w`` (minus 1 with
            ``remove_center``).
        mask: (N, H_out, W_out, group * P): the modulation weights, already normalised
            (softmax over the P points of a group in :class:`DCNv3`).
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w: the
            sampling grid, as an ordinary convolution's; the input is zero-padded by
            ``pad_h`` rows and ``pad_w`` columns on each side.
        group, group_channels: channel groups; each group has its own offsets and mask.
        offset_scale: scales both the kernel grid around its centre and the offsets.
        remove_center: drop the kernel's centre point (square odd kernels only).

    Returns:
        (N, H_out, W_out, group * group_channels) with ``H_out = (H + 2 pad_h - (dilation_h
        (kernel_h - 1) + 1)) // stride_h + 1`` (likewise ``W_out``), in ``input``'s dtype.
        Sampling runs in at least float32 (normalised coordinates of large maps need it).

    The authors' reference pads with ``[0, 0, pad_h, pad_h, pad_w, pad_w]`` on a channels-last
    tensor, i.e. the width by ``pad_h`` and the height by ``pad_w``; every InternImage layer
    uses ``pad_h == pad_w``, where both agree. Here height gets ``pad_h`` and width ``pad_w``.
    """
    remove = int(bool(remove_center))
    if remove and (kernel_h != kernel_w or kernel_h % 2 == 0):
        raise ValueError(f"remove_center needs a square odd kernel, got {kernel_h}x{kernel_w}")
    n, h, w, c = input.shape
    if c != group * group_channels:
        raise ValueError(
            f"input has {c} channels, expected group * group_channels = {group} * {group_channels}"
        )
    points = kernel_h * kernel_w - remove
    h_in, w_in = h + 2 * pad_h, w + 2 * pad_w
    h_out = (h_in - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    w_out = (w_in - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    want_offset = (n, h_out, w_out, group * points * 2)
    want_mask = (n, h_out, w_out, group * points)
    if tuple(offset.shape) != want_offset or tuple(mask.shape) != want_mask:
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not fit the output "
            f"grid: expected {want_offset} / {want_mask}"
        )
    dtype = torch.promote_types(input.dtype, torch.float32)
    device = input.device
    padded = F.pad(input, (0, 0, pad_w, pad_w, pad_h, pad_h))

    # reference points: the centre of each output position's kernel window on the padded map,
    # as a fraction of its size (pixel i covers [i, i + 1), its centre is i + 0.5)
    half_h = (dilation_h * (kernel_h - 1)) // 2
    half_w = (dilation_w * (kernel_w - 1)) // 2
    ref_y = (half_h + 0.5 + stride_h * torch.arange(h_out, device=device, dtype=dtype)) / h_in
    ref_x = (half_w + 0.5 + stride_w * torch.arange(w_out, device=device, dtype=dtype)) / w_in
    ref = torch.stack(
        (ref_x[None, :].expand(h_out, w_out), ref_y[:, None].expand(h_out, w_out)), dim=-1
    ).reshape(1, h_out, w_out, 1, 1, 2)

    # the dilation grid around the centre, x-major (column i, row j -> point i * kernel_h + j)
    kx = (dilation_w * torch.arange(kernel_w, device=device, dtype=dtype) - half_w) / w_in
    ky = (dilation_h * torch.arange(kernel_h, device=device, dtype=dtype) - half_h) / h_in
    grid = torch.stack(
        (kx[:, None].expand(kernel_w, kernel_h), ky[None, :].expand(kernel_w, kernel_h)), dim=-1
    ).reshape(kernel_w * kernel_h, 2)
    if remove:
        centre = (kernel_w * kernel_h) // 2
        grid = torch.cat((grid[:centre], grid[centre + 1 :]))
    grid = grid.reshape(1, 1, 1, 1, points, 2)

    size = torch.tensor([w_in, h_in], device=device, dtype=dtype)
    shift = offset.to(dtype).reshape(n, h_out, w_out, group, points, 2)
    locations = ref + grid * offset_scale + shift * offset_scale / size
    grids = (2 * locations - 1).permute(0, 3, 1, 2, 4, 5)  # (N, G, H_out, W_out, P, 2)
    grids = grids.reshape(n * group, h_out * w_out, points, 2)

    values = padded.reshape(n, h_in * w_in, group, group_channels).permute(0, 2, 3, 1)
    values = values.reshape(n * group, group_channels, h_in, w_in).to(dtype)
    sampled = F.grid_sample(
        values, grids, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (N*G, group_channels, H_out*W_out, P)
    weights = mask.to(dtype).reshape(n, h_out * w_out, group, points).permute(0, 2, 1, 3)
    weights = weights.reshape(n * group, 1, h_out * w_out, points)
    out = (sampled * weights).sum(-1)  # (N*G, group_channels, H_out*W_out)
    out = out.reshape(n, group * group_channels, h_out * w_out).transpose(1, 2)
    return out.reshape(n, h_out, w_out, group * group_channels).to(input.dtype)


class ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C) (the authors' ``to_channels_last``; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W) (the authors' ``to_channels_first``; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class DCNv3(nn.Module):
    """The DCNv3 layer of an InternImage block (Wang et al., CVPR 2023, Sec. 3.1), channels last.

    As the authors' ``DCNv3_pytorch``: ``x = input_proj(input)``; a depthwise conv branch
    ``f = GELU(LN(dwconv(input)))`` predicts the offsets (``offset``: C -> G*P*2) and the
    modulation mask (``mask``: C -> G*P, softmax over the P points of each group); the core
    (:func:`dcnv3_core`) samples ``x``; with ``center_feature_scale`` the result is blended with
    ``x`` by a per-group gate ``s = sigmoid(f W^T + b)`` as ``core * (1 - s) + x * s``
    (InternImage-H/G); then ``output_proj``. ``offset`` and ``mask`` are plain ``nn.Linear``
    modules called as modules, so a PEFT part may wrap them (CPAL's LoRA, last stage).

    Initialisation as the authors' ``_reset_parameters``: ``offset`` and ``mask`` zero (the
    kernel starts as a uniform k x k average), ``input_proj`` / ``output_proj`` Xavier-uniform
    weights and zero biases; the centre-feature-scale projection zero (gate 0.5).

    Args:
        channels: C (a multiple of ``group``).
        kernel_size, stride, pad, dilation: the sampling grid (InternImage: 3, 1, 1, 1).
        dw_kernel_size: kernel of the depthwise conv (default ``kernel_size``; 5 in
            InternImage-H/G).
        group: channel groups G.
        offset_scale: scale of the kernel grid and offsets (InternImage-L/XL: 2.0).
        center_feature_scale: the gated blend with the projected input (InternImage-H/G).
        remove_center: drop the kernel's centre point (an option of the authors' op).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ) -> None:
        super().__init__()
        if channels % group:
            raise ValueError(f"channels ({channels}) must be a multiple of group ({group})")
        if remove_center and kernel_size % 2 == 0:
            raise ValueError("remove_center needs an odd kernel_size")
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        points = kernel_size * kernel_size - self.remove_center

        self.dw_conv = nn.Sequential(
            nn.Conv2d(
                channels,
                channels,
                kernel_size=dw_kernel_size,
                stride=1,
                padding=(dw_kernel_size - 1) // 2,
                groups=channels,
            ),
            nn.Sequential(ToChannelsLast(), nn.LayerNorm(channels, eps=1e-6)),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation (their ``_reset_parameters``)."""
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.mask.weight)
        nn.init.zeros_(self.mask.bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, input: Tensor) -> Tensor:
        """(N, H, W, C) -> (N, H_out, W_out, C) (H_out = H with InternImage's 3/1/1/1 grid)."""
        n, h, w, _ = input.shape
        x = self.input_proj(input)
        feature = self.dw_conv(input.permute(0, 3, 1, 2))  # (N, H, W, C)
        offset = self.offset(feature)
        mask = self.mask(feature).reshape(n, h, w, self.group, -1)
        mask = F.softmax(mask, dim=-1).reshape(n, h, w, -1).to(x.dtype)
        out = dcnv3_core(
            x,
            offset,
            mask,
            self.kernel_size,
            self.kernel_size,
            self.stride,
            self.stride,
            self.pad,
            self.pad,
            self.dilation,
            self.dilation,
            self.group,
            self.group_channels,
            self.offset_scale,
            bool(self.remove_center),
        )
        if self.center_feature_scale:
            gate = F.linear(
                feature, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            ).sigmoid()  # (N, H, W, G): one gate per group
            gate = gate.repeat_interleave(self.group_channels, dim=-1)
            out = out * (1 - gate) + x * gate
        return self.output_proj(out)
