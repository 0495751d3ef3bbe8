"""DSCF's two implementations compute what the first, step-by-step implementation computed.

``_reference_forward`` is that implementation (one offset net call per modality, one
``grid_sample`` per sampled map, attention as explicit matmul + softmax), written out on the
module's parameters. The reference implementation (CPUs) must match it bit for bit (outputs and
gradients: the demo numbers were measured with it), the fused one (GPUs) in float32 rounding,
for odd sizes, batches > 1 and several groups and heads.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rsfusion.models.fusion import DSCF


def _pixel_grid(height: int, width: int, step: int, dtype: torch.dtype) -> Tensor:
    ys = torch.arange(0, height, step, dtype=dtype) * (2.0 / max(height - 1, 1))
    xs = torch.arange(0, width, step, dtype=dtype) * (2.0 / max(width - 1, 1))
    gy, gx = torch.meshgrid(ys - 1.0, xs - 1.0, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def _offset_net(net, t: Tensor, stride: int) -> Tensor:
    y = F.conv2d(t, net.dw.weight, net.dw.bias, stride=stride, padding=4, groups=t.shape[1])
    y = F.layer_norm(y.permute(0, 2, 3, 1), (t.shape[1],), net.norm.weight, net.norm.bias, 1e-5)
    return F.conv2d(F.gelu(y.permute(0, 3, 1, 2)), net.out.weight)


def _reference_forward(m: DSCF, rgb: Tensor, x: Tensor) -> dict[str, Tensor]:
    """The loop-based DSCF forward as first written (outputs and main intermediates)."""
    b, _, h, w = rgb.shape
    g, heads, d = m.groups, m.heads, m.hidden_dim

    def grouped(t: Tensor) -> Tensor:
        return t.reshape(b * g, t.shape[1] // g, *t.shape[2:])

    r = m.reduce_rgb(rgb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    s = m.reduce_x(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    feat = m.local(torch.cat([r, s], dim=1))
    query = m.to_q(feat)
    ref = _pixel_grid(h, w, m.stride, r.dtype).reshape(1, -1, 2)
    sets = []
    for net, t in ((m.offset_rgb, r), (m.offset_x, s)):
        off = _offset_net(net, grouped(t), m.stride).flatten(2).transpose(1, 2)
        sets.append((ref + off).clamp(-1.0, 1.0))
    positions = torch.cat(sets, dim=1).reshape(b, g, -1, 2)
    sampled = []
    for t in (r, s, query):
        grid = positions.reshape(b * g, -1, 1, 2)
        out = F.grid_sample(grouped(t), grid, mode="bilinear", align_corners=True)
        sampled.append(out.reshape(b, d, -1))
    r_s, x_s, q_s = sampled
    weights = m.mix(q_s).softmax(dim=1)
    mixed = weights[:, :1] * r_s + weights[:, 1:] * x_s
    dh = d // heads
    q = query.reshape(b, heads, dh, h * w).transpose(2, 3)
    k = m.to_k(mixed).reshape(b, heads, dh, -1)
    v = m.to_v(mixed).reshape(b, heads, dh, -1).transpose(2, 3)
    n = positions.shape[2]
    queries = _pixel_grid(h, w, 1, r.dtype).reshape(1, -1, 1, 2)
    disp = (queries - positions.reshape(b * g, 1, n, 2)) * 0.5
    table = m.rpb_table.reshape(g, heads // g, *m.rpb_table.shape[1:])
    table = table.unsqueeze(0).expand(b, -1, -1, -1, -1).flatten(0, 1)
    bias = F.grid_sample(table, disp, mode="bilinear", align_corners=True)
    logits = (q @ k) * m.scale + bias.reshape(b, heads, h * w, n)
    attn = logits.softmax(dim=-1)
    out = (attn @ v).transpose(2, 3).reshape(b, d, h, w)
    proj = m.proj(out)
    fused = m.layer_scale.view(1, -1, 1, 1) * proj + m.skip_scale.view(1, -1, 1, 1) * feat
    y = m.expand(fused.permute(0, 2, 3, 1))
    y = F.layer_norm(y, (m.dim,), None, None, m.norm.eps) if m.faithful else m.norm(y)
    return {
        "positions": positions, "r_s": r_s, "x_s": x_s, "q_s": q_s, "attn": attn,
        "proj": proj, "fused": fused, "out": y.permute(0, 3, 1, 2),
    }  # fmt: skip


CASES = [
    # (batch, dim, height, width, options)
    (1, 32, 7, 9, {"stride": 8, "groups": 1, "heads": 2}),
    (3, 32, 13, 10, {"stride": 4, "groups": 2, "heads": 4}),
    (2, 64, 11, 5, {"stride": 2, "groups": 4, "heads": 8, "bias_table": (9, 13)}),
    (2, 64, 6, 6, {"stride": 1, "groups": 8, "heads": 8, "layer_scale_init": 1.0}),
    (2, 48, 1, 3, {"stride": 1, "groups": 2, "heads": 2, "faithful": True}),
]


def _setup(b, dim, h, w, options, seed=0, offset_scale=20.0):
    torch.manual_seed(seed)
    module = DSCF(dim, **options)
    with torch.no_grad():  # move every weight off its init (norms, scales, offsets included)
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
        module.offset_rgb.out.weight.mul_(offset_scale)  # offsets of pixels, some clamped
        module.offset_x.out.weight.mul_(offset_scale)
    g = torch.Generator().manual_seed(seed + 1)
    rgb, x = torch.randn(b, dim, h, w, generator=g), torch.randn(b, dim, h, w, generator=g)
    return module, rgb, x


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}c{c[1]}_{c[2]}x{c[3]}")
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_outputs_and_gradients_equal_the_reference(case, train, fused):
    module, rgb, x = _setup(*case)
    module.fused = fused
    module.train(train)  # BatchNorm batch statistics in training, running ones in eval
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rgb_a, x_a = rgb.clone().requires_grad_(), x.clone().requires_grad_()
    want = _reference_forward(module, rgb_a, x_a)
    target = torch.randn_like(want["out"])
    F.mse_loss(want["out"], target).backward()
    grads_want = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    module.load_state_dict(state)  # BatchNorm running statistics as before the reference pass
    rgb_b, x_b = rgb.clone().requires_grad_(), x.clone().requires_grad_()
    got = module(rgb_b, x_b)
    assert got.shape == rgb.shape
    tol = {"rtol": 1e-4, "atol": 1e-5} if fused else {"rtol": 0.0, "atol": 0.0}
    torch.testing.assert_close(
        got, want["out"], **(tol if not fused else {"rtol": 1e-5, "atol": 1e-5})
    )
    F.mse_loss(got, target).backward()
    grads_got = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert sorted(grads_got) == sorted(grads_want)
    for name, grad in grads_want.items():
        torch.testing.assert_close(grads_got[name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(rgb_b.grad, rgb_a.grad, **tol)
    torch.testing.assert_close(x_b.grad, x_a.grad, **tol)


@pytest.mark.parametrize("case", CASES[1:3], ids=["groups2", "groups4"])
def test_intermediates_equal_the_reference(case):
    # milder offsets: a layer norm over d/G = 2 channels of nearly equal values, times large
    # output weights, turns float32 rounding into visible position differences
    module, rgb, x = _setup(*case, offset_scale=4.0)
    module.eval()
    with torch.no_grad():
        want = _reference_forward(module, rgb, x)
        parts = module.forward_parts(rgb, x)
    assert (want["positions"].abs() == 1).any()  # some positions are clamped at the border
    for name, value in want.items():
        torch.testing.assert_close(
            getattr(parts, name), value, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
    with torch.no_grad():  # forward_parts (explicit attention) and forward (fused) agree
        torch.testing.assert_close(module(rgb, x), parts.out, rtol=1e-5, atol=1e-5)
