"""GPM: CPAL's gated perception module (CPAL paper, TCSVT 2025, eq. 13-18)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsfusion.models.fusion.gpm import GPM, gpm_width

H_CHANNELS = (320, 640, 1280, 2560)  # InternImage-H stage widths
STRIDES = (4, 8, 16, 32)
# Paper Table IX (FMB, InternImage-H): GPM parameters by inserted stages, in millions.
TABLE_IX_GPM = {"4": 2.62, "3-4": 3.28, "2-4": 3.48, "1-4": 3.62}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trunc2(n: int) -> float:
    return math.floor(n / 1e4) / 100


def _reference(gpm: GPM, rgb, x):
    """Eq. 13-18 written out at the module's own width (no resizing)."""
    r, s = gpm.reduce(rgb), gpm.reduce(x)
    q, k, v = gpm.query(s), gpm.key(r), gpm.value(r)
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(r.shape[-1]), dim=-1)
    o = a @ v
    return gpm.expand(o * torch.sigmoid(gpm.forget(o)) + r), a


def test_parameter_count_formula_and_table_ix():
    assert gpm_width(640, 4) == 160 and gpm_width(640, 32) == 20 and gpm_width(641, 4) == 161
    for c, w in [(40, 8), (64, 13), (2560, 20)]:
        h = c // 5
        expected = (c * h + h) + 4 * (w * w + w) + (h * c + c)
        assert _count(GPM(c, w)) == expected == GPM.num_parameters(c, w)
    stage = [GPM.num_parameters(c, gpm_width(640, s)) for c, s in zip(H_CHANNELS, STRIDES)]
    ours = {"4": sum(stage[3:]), "3-4": sum(stage[2:]), "2-4": sum(stage[1:]), "1-4": sum(stage)}
    wide = [GPM.num_parameters(c, gpm_width(800, s)) for c, s in zip(H_CHANNELS, STRIDES)]
    message = "GPM vs Table IX (InternImage-H, widths 640/stride):\n" + "\n".join(
        f"stages {k}: {v:,} (trunc {_trunc2(v):.2f}M) vs {TABLE_IX_GPM[k]:.2f}M"
        for k, v in ours.items()
    )
    message += f"\n800-wide reading, stages 1-4: {sum(wide):,}"
    print(message)
    assert ours == {"4": 2_626_192, "3-4": 3_289_648, "2-4": 3_480_176, "1-4": 3_624_560}
    assert all(_trunc2(ours[k]) == TABLE_IX_GPM[k] for k in ours), message
    assert _trunc2(sum(wide)) != TABLE_IX_GPM["1-4"], message  # 800 wide does not match
    assert GPM(2560, 20).hidden_dim == 512 and GPM(64, 16).hidden_dim == 12
    with pytest.raises(ValueError, match="hidden"):
        GPM(4, 8)


@pytest.mark.parametrize("hw", [(6, 10), (7, 10), (1, 10), (9, 13), (5, 7), (3, 1), (11, 21)])
def test_any_height_and_width(hw):
    torch.manual_seed(0)
    gpm = GPM(40, width=10)
    rgb, x = torch.randn(2, 40, *hw), torch.randn(2, 40, *hw)
    out = gpm(rgb, x)
    assert out.shape == (2, 40, *hw)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in gpm.parameters())
    assert gpm.attention(rgb, x).shape == (2, 8, hw[0], hw[0])


def test_matches_equations_at_built_width():
    torch.manual_seed(0)
    gpm = GPM(40, width=10)
    rgb, x = torch.randn(2, 40, 7, 10), torch.randn(2, 40, 7, 10)
    ref, a = _reference(gpm, rgb, x)
    torch.testing.assert_close(gpm(rgb, x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpm.attention(rgb, x), a)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 8, 7))


def test_other_widths_resize_the_attention_branch_only():
    torch.manual_seed(0)
    gpm = GPM(40, width=10)
    rgb, x = torch.randn(2, 40, 5, 13), torch.randn(2, 40, 5, 13)

    def to(t, w):
        return F.interpolate(t, size=(t.shape[-2], w), mode="bilinear", align_corners=False)

    r = gpm.reduce(rgb)
    rw, sw = to(r, 10), to(gpm.reduce(x), 10)
    o = torch.softmax(gpm.query(sw) @ gpm.key(rw).transpose(-2, -1) / math.sqrt(10), -1)
    o = o @ gpm.value(rw)
    expected = gpm.expand(to(o * torch.sigmoid(gpm.forget(o)), 13) + r)
    torch.testing.assert_close(gpm(rgb, x), expected, rtol=1e-5, atol=1e-5)


def test_attention_runs_over_rows_with_width_features():
    torch.manual_seed(0)
    gpm = GPM(40, width=10).eval()
    rgb, x = torch.randn(1, 40, 6, 10), torch.randn(1, 40, 6, 10)
    out = gpm(rgb, x)
    # Rows are tokens (no position code): permuting the rows of both inputs permutes the output.
    perm = torch.randperm(6)
    torch.testing.assert_close(gpm(rgb[:, :, perm], x[:, :, perm]), out[:, :, perm])
    # Columns are features mixed by the Linears: permuting them is not an equivariance.
    cols = torch.arange(9, -1, -1)
    assert not torch.allclose(gpm(rgb[..., cols], x[..., cols]), out[..., cols], atol=1e-4)
    # Each RGB row influences every output row (attention over H) ...
    rgb2 = rgb.clone()
    rgb2[:, :, 0] += 1.0
    changed = (gpm(rgb2, x) - out).abs().amax(dim=(0, 1, 3))
    assert (changed > 0).all()
    # ... while X enters only through the queries: it reweights each row's own attention.
    a = gpm.attention(rgb, x)
    x2 = x.clone()
    x2[:, :, 2] += 1.0
    a2 = gpm.attention(rgb, x2)
    row_changed = (a2 - a).abs().amax(dim=(0, 1, 3))
    assert row_changed[2] > 0 and torch.all(row_changed[[0, 1, 3, 4, 5]] == 0)


def test_queries_from_x_keys_values_and_residual_from_rgb():
    torch.manual_seed(0)
    gpm = GPM(40, width=10)
    with torch.no_grad():
        gpm.query.weight.zero_()
        gpm.query.bias.zero_()  # Q = 0: uniform attention, X no longer matters
    rgb = torch.randn(2, 40, 5, 10)
    out = gpm(rgb, torch.randn(2, 40, 5, 10))
    torch.testing.assert_close(gpm(rgb, torch.randn(2, 40, 5, 10)), out)
    r = gpm.reduce(rgb)
    v = gpm.value(r).mean(dim=-2, keepdim=True).expand_as(r)
    torch.testing.assert_close(
        out, gpm.expand(v * torch.sigmoid(gpm.forget(v)) + r), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="one shape"):
        gpm(rgb, rgb[:, :, :4])
