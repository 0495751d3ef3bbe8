"""The pure-PyTorch DCNv3 (InternImage, Wang et al., CVPR 2023; CPAL's backbone): the core
against a direct per-pixel computation, and the module's initialisation, gate and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rsfusion.models.backbones.dcnv3 import DCNv3, dcnv3_core


def bilinear(image: Tensor, y: float, x: float) -> Tensor:
    """``image`` (H, W, C) at the fractional pixel (y, x) (pixel centres at integers), zero
    outside the map: the four neighbours weighted by hand."""
    h, w, c = image.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = image.new_zeros(c)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * image[yy, xx]
    return out


def direct(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    group: int,
    offset_scale: float,
    remove_center: bool,
) -> Tensor:
    """DCNv3 (Eq. 4) by explicit loops over samples, output pixels, groups and kernel points.

    Point order, (x, y) offset pairs and the sampling position are the authors' CUDA kernel's
    (``dcnv3_im2col_cuda.cuh``): points column-major (``for i < kernel_w: for j < kernel_h``),
    position ``p0 + (grid_point + offset) * offset_scale`` around the window centre ``p0``.
    """
    n, h, w, c = input.shape
    gc = c // group
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    half_h, half_w = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    points = [(i, j) for i in range(kw) for j in range(kh)]
    if remove_center:
        points = [(i, j) for i, j in points if (i, j) != (kw // 2, kh // 2)]
    out = input.new_zeros(n, h_out, w_out, c)
    for b in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                cy, cx = half_h - ph + oy * sh, half_w - pw + ox * sw  # window centre
                for g in range(group):
                    image = input[b, :, :, g * gc : (g + 1) * gc]
                    acc = input.new_zeros(gc)
                    for k, (i, j) in enumerate(points):
                        p = g * len(points) + k
                        off_x, off_y = offset[b, oy, ox, 2 * p], offset[b, oy, ox, 2 * p + 1]
                        x = cx + (i * dw - half_w + float(off_x)) * offset_scale
                        y = cy + (j * dh - half_h + float(off_y)) * offset_scale
                        acc = acc + mask[b, oy, ox, p] * bilinear(image, y, x)
                    out[b, oy, ox, g * gc : (g + 1) * gc] = acc
    return out


CASES = {
    "k3-s1-p1-d1": ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, False),
    "k3-remove-center": ((3, 3), (1, 1), (1, 1), (1, 1), 1.0, True),
    "k3-s2-d2-scale2": ((3, 3), (2, 2), (1, 1), (2, 2), 2.0, False),
    "k3x5-unequal-pads": ((3, 5), (1, 2), (1, 2), (1, 1), 0.5, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_core_matches_a_direct_computation(case: str) -> None:
    kernel, stride, pad, dilation, scale, remove = CASES[case]
    torch.manual_seed(0)
    n, h, w, group, gc = 2, 5, 6, 2, 3
    points = kernel[0] * kernel[1] - int(remove)
    h_out = (h + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    w_out = (w + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    x = torch.randn(n, h, w, group * gc, dtype=torch.float64)
    offset = 1.5 * torch.randn(n, h_out, w_out, group * points * 2, dtype=torch.float64)
    mask = torch.randn(n, h_out, w_out, group, points, dtype=torch.float64).softmax(-1)
    mask = mask.reshape(n, h_out, w_out, -1)
    args = (*kernel, *stride, *pad, *dilation, group, gc, scale)
    out = dcnv3_core(x, offset, mask, *args, remove_center=remove)
    ref = direct(x, offset, mask, kernel, stride, pad, dilation, group, scale, remove)
    assert out.shape == (n, h_out, w_out, group * gc) and out.dtype == x.dtype
    assert torch.allclose(out, ref, atol=1e-5)
    assert (offset.abs() * scale > 1).any()  # the offsets really leave the grid cells
    out32 = dcnv3_core(x.float(), offset.float(), mask.float(), *args, remove_center=remove)
    assert out32.dtype == torch.float32 and torch.allclose(out32, ref.float(), atol=1e-5)


def test_core_refuses_what_does_not_fit() -> None:
    x = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="square odd"):
        dcnv3_core(x, x, x, 2, 2, 1, 1, 1, 1, 1, 1, 1, 4, 1.0, remove_center=True)
    with pytest.raises(ValueError, match="group \\* group_channels"):
        dcnv3_core(x, x, x, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0)
    with pytest.raises(ValueError, match="do not fit the output grid"):
        dcnv3_core(x, torch.zeros(1, 4, 4, 18), torch.zeros(1, 4, 4, 8), 3, 3, 1, 1, 1, 1, 1, 1,
                   1, 4, 1.0)  # fmt: skip


def test_module_starts_as_a_uniform_3x3_average() -> None:
    """offset and mask zero-initialised (the authors' _reset_parameters): every group averages
    its 3x3 neighbourhood (zero outside) of input_proj's output, then output_proj."""
    torch.manual_seed(0)
    dcn = DCNv3(8, group=2)
    assert dcn.offset.weight.abs().sum() == 0 and dcn.offset.bias.abs().sum() == 0
    assert dcn.mask.weight.abs().sum() == 0 and dcn.mask.bias.abs().sum() == 0
    assert dcn.input_proj.bias.abs().sum() == 0 and dcn.output_proj.bias.abs().sum() == 0
    bound = math.sqrt(6 / (8 + 8))  # Xavier-uniform
    assert dcn.input_proj.weight.abs().max() <= bound
    x = torch.randn(2, 5, 7, 8)
    with torch.no_grad():
        proj = dcn.input_proj(x).permute(0, 3, 1, 2)
        mean = F.avg_pool2d(proj, 3, stride=1, padding=1, count_include_pad=True)
        ref = dcn.output_proj(mean.permute(0, 2, 3, 1))
        out = dcn(x)
    assert out.shape == x.shape and torch.allclose(out, ref, atol=1e-5)


def test_module_layout_and_centre_feature_scale() -> None:
    torch.manual_seed(0)
    dcn = DCNv3(16, group=4, dw_kernel_size=5, center_feature_scale=True, offset_scale=2.0)
    assert isinstance(dcn.offset, torch.nn.Linear) and isinstance(dcn.mask, torch.nn.Linear)
    assert dcn.offset.out_features == 4 * 9 * 2 and dcn.mask.out_features == 4 * 9
    assert dcn.dw_conv[0].kernel_size == (5, 5) and dcn.dw_conv[0].groups == 16
    assert dcn.center_feature_scale_proj_weight.shape == (4, 16)
    assert dcn.center_feature_scale_proj_bias.shape == (4,)
    assert sorted(n for n, _ in dcn.named_parameters()) == sorted([
        "dw_conv.0.weight", "dw_conv.0.bias", "dw_conv.1.1.weight", "dw_conv.1.1.bias",
        "offset.weight", "offset.bias", "mask.weight", "mask.bias", "input_proj.weight",
        "input_proj.bias", "output_proj.weight", "output_proj.bias",
        "center_feature_scale_proj_weight", "center_feature_scale_proj_bias"])  # fmt: skip
    assert DCNv3(16, group=4, remove_center=True).mask.out_features == 4 * 8
    with torch.no_grad():
        for p in dcn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(1, 6, 5, 16)
    with torch.no_grad():
        proj = dcn.input_proj(x)
        feature = dcn.dw_conv(x.permute(0, 3, 1, 2))
        mask = dcn.mask(feature).reshape(1, 6, 5, 4, 9).softmax(-1).reshape(1, 6, 5, -1)
        core = dcnv3_core(proj, dcn.offset(feature), mask, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 2.0)
        gate = torch.sigmoid(
            torch.einsum("bhwc,gc->bhwg", feature, dcn.center_feature_scale_proj_weight)
            + dcn.center_feature_scale_proj_bias
        )
        gate = gate[..., :, None].expand(1, 6, 5, 4, 4).reshape(1, 6, 5, 16)
        ref = dcn.output_proj(core * (1 - gate) + proj * gate)
        assert torch.allclose(dcn(x), ref, atol=1e-5)


def test_gradients_reach_offsets_masks_and_input() -> None:
    torch.manual_seed(0)
    dcn = DCNv3(8, group=2)
    with torch.no_grad():
        dcn.offset.weight.normal_(0, 0.5)
        dcn.mask.weight.normal_(0, 0.5)
    x = torch.randn(1, 4, 4, 8, requires_grad=True)
    dcn(x).square().sum().backward()
    for grad in (x.grad, dcn.offset.weight.grad, dcn.mask.weight.grad):
        assert grad is not None and grad.abs().sum() > 0
