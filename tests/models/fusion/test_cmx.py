"""FRM and FFM: CMX's rectification and fusion modules as SegRGB-X uses them (CMX, T-ITS 2023)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsfusion.models.fusion import FFM, FRM

MIT_B2 = (64, 128, 320, 512)
CMX_HEADS = (1, 2, 5, 8)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _pair(c: int, h: int, w: int, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)


def test_parameter_counts_match_the_formulas():
    for c, r in [(1, 1), (8, 1), (12, 2), (10, 3), (64, 1)]:
        assert _count(FRM(c, r)) == FRM.num_parameters(c, r)
    for c in (1, 8, 64):
        assert FRM.num_parameters(c) == 26 * c * c + 9 * c + 2
    for c, heads, r in [(10, 5, 1), (12, 3, 2), (16, 2, 4), (8, 8, 1)]:
        assert _count(FFM(c, heads, r)) == FFM.num_parameters(c, r)
    for c in (2, 8, 64):
        assert FFM.num_parameters(c) == 17 * c * c + 26 * c
    # CMX's per-stage configuration on MiT-B2 widths builds, with the documented totals.
    ffms = [FFM(c, heads) for c, heads in zip(MIT_B2, CMX_HEADS)]
    assert sum(_count(m) for m in ffms) == 6_572_032
    assert sum(FRM.num_parameters(c) for c in MIT_B2) == 10_019_848


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="num_heads"):
        FFM(10, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        FFM(4, num_heads=1, reduction=8)
    with pytest.raises(ValueError, match="dim // reduction"):
        FRM(2, reduction=4)
    a, b = _pair(4, 5, 6)
    with pytest.raises(ValueError, match="one shape"):
        FRM(4)(a, b[:, :, :4])
    with pytest.raises(ValueError, match="one shape"):
        FFM(4, 2)(a[:, :3], b[:, :3])


@pytest.mark.parametrize("hw", [(17, 23), (1, 1), (3, 1), (2, 9)])
def test_any_size_and_gradients_reach_every_parameter(hw):
    torch.manual_seed(0)
    frm, ffm = FRM(8, reduction=2), FFM(8, num_heads=2)
    x1, x2 = _pair(8, *hw)
    r1, r2 = frm(x1, x2)
    fused = ffm(r1, r2)
    assert r1.shape == r2.shape == fused.shape == (2, 8, *hw)
    assert torch.isfinite(fused).all()
    (fused.square().sum() + r1.sum() + r2.sum()).backward()
    for name, p in [*frm.named_parameters(), *ffm.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frm_by_hand_on_a_one_channel_case():
    frm = FRM(1, lambda_c=0.3, lambda_s=0.7)
    with torch.no_grad():
        lin1, lin2 = frm.channel_mlp[0], frm.channel_mlp[2]
        lin1.weight.copy_(torch.eye(4))  # pooled -> ReLU(pooled)
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))  # GAP(x1), GMP(x2)
        lin2.bias.copy_(torch.tensor([-2.0, 1.0]))
        conv1, conv2 = frm.spatial_mlp[0], frm.spatial_mlp[2]
        conv1.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))  # x1 + x2
        conv1.bias.copy_(torch.tensor([-1.0]))
        conv2.weight.copy_(torch.tensor([1.0, -0.5]).view(2, 1, 1, 1))
        conv2.bias.zero_()
    a = [[1.0, 2.0], [3.0, 4.0]]
    b = [[0.0, -1.0], [2.0, 1.0]]
    # GAP(x1) = 2.5, GMP(x2) = 2: the pooled vector is [GAP x1, GAP x2, GMP x1, GMP x2].
    w_c1, w_c2 = _sigmoid(2.5 - 2.0), _sigmoid(2.0 + 1.0)
    exp1, exp2 = [[0.0] * 2 for _ in range(2)], [[0.0] * 2 for _ in range(2)]
    for i in range(2):
        for j in range(2):
            s = max(a[i][j] + b[i][j] - 1.0, 0.0)
            w_s1, w_s2 = _sigmoid(s), _sigmoid(-0.5 * s)
            exp1[i][j] = a[i][j] + 0.3 * w_c2 * b[i][j] + 0.7 * w_s2 * b[i][j]
            exp2[i][j] = b[i][j] + 0.3 * w_c1 * a[i][j] + 0.7 * w_s1 * a[i][j]
    x1, x2 = torch.tensor(a).view(1, 1, 2, 2), torch.tensor(b).view(1, 1, 2, 2)
    out1, out2 = frm(x1, x2)
    torch.testing.assert_close(out1, torch.tensor(exp1).view(1, 1, 2, 2))
    torch.testing.assert_close(out2, torch.tensor(exp2).view(1, 1, 2, 2))


def test_frm_adds_only_the_other_modality():
    torch.manual_seed(0)
    frm = FRM(6)
    x1, x2 = _pair(6, 5, 7)
    w_c1, w_c2, w_s1, w_s2 = frm.weights(x1, x2)
    assert w_c1.shape == (2, 6, 1, 1) and w_s1.shape == (2, 1, 5, 7)
    assert all(((w > 0) & (w < 1)).all() for w in (w_c1, w_c2, w_s1, w_s2))
    out1, out2 = frm(x1, x2)
    torch.testing.assert_close(out1 - x1, 0.5 * (w_c2 + w_s2) * x2)
    torch.testing.assert_close(out2 - x2, 0.5 * (w_c1 + w_s1) * x1)
    out1, _ = frm(x1, torch.zeros_like(x2))
    torch.testing.assert_close(out1, x1)  # nothing to rectify with


def test_init_follows_cmx():
    torch.manual_seed(0)
    ffm = FFM(64, num_heads=1)
    assert torch.all(ffm.proj1.bias == 0) and torch.all(ffm.embed[0].bias == 0)
    assert abs(ffm.proj1.weight.std().item() - 0.02) < 0.002
    assert ffm.proj1.weight.abs().max() <= 2.0  # truncated at +-2 (absolute), as timm's
    assert abs(ffm.residual.weight.std().item() - math.sqrt(2 / 64)) < 0.01
    assert abs(ffm.embed[1].weight.std().item() - math.sqrt(2 / 9)) < 0.05  # depthwise
    assert ffm.kv1.bias is None and ffm.residual.bias is None
    assert isinstance(ffm.norm1, nn.LayerNorm) and isinstance(ffm.norm, nn.BatchNorm2d)
    assert abs(FRM(64).channel_mlp[0].weight.std().item() - 0.02) < 0.002


def _context_by_hand(u: torch.Tensor, kv: nn.Linear, heads: int) -> torch.Tensor:
    """K^T V * d^-0.5 per head, each column (value channel) softmax-normalised over keys."""
    hdim = u.shape[-1]
    d = hdim // heads
    k_all, v_all = kv(u)[..., :hdim], kv(u)[..., hdim:]
    out = torch.empty(u.shape[0], heads, d, d)
    for b in range(u.shape[0]):
        for h in range(heads):
            k, v = k_all[b, :, h * d : (h + 1) * d], v_all[b, :, h * d : (h + 1) * d]
            logits = torch.zeros(d, d)
            for n in range(u.shape[1]):
                logits += torch.outer(k[n], v[n])
            logits = logits / math.sqrt(d)
            for j in range(d):
                col = logits[:, j].exp()
                out[b, h, :, j] = col / col.sum()
    return out


def test_ffm_context_is_a_softmax_over_key_channels():
    torch.manual_seed(0)
    ffm = FFM(8, num_heads=2)
    with torch.no_grad():
        ffm.kv1.weight.mul_(40)  # make the softmax far from uniform
    u = torch.relu(torch.randn(2, 5, 8))
    ctx = ffm.context(u, ffm.kv1)
    torch.testing.assert_close(ctx, _context_by_hand(u, ffm.kv1, 2))
    torch.testing.assert_close(ctx.sum(-2), torch.ones(2, 2, 4))  # columns sum to one
    assert not torch.allclose(ctx.sum(-1), torch.ones(2, 2, 4), atol=1e-3)  # rows do not


def test_ffm_cross_path_by_hand():
    torch.manual_seed(0)
    ffm = FFM(8, num_heads=2, reduction=2)  # h = 4, two heads of d = 2
    with torch.no_grad():
        for kv in (ffm.kv1, ffm.kv2):
            kv.weight.normal_()
        for lin in (ffm.proj1, ffm.proj2, ffm.end1, ffm.end2):
            lin.weight.normal_(0, 0.3)
            lin.bias.normal_(0, 0.1)
    x1, x2 = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    y1, u1 = F.relu(ffm.proj1(x1)).split(4, dim=-1)
    y2, u2 = F.relu(ffm.proj2(x2)).split(4, dim=-1)
    ctx1, ctx2 = _context_by_hand(u1, ffm.kv1, 2), _context_by_hand(u2, ffm.kv2, 2)
    v1, v2 = torch.empty_like(u1), torch.empty_like(u2)
    for h in range(2):
        s = slice(2 * h, 2 * h + 2)
        v1[..., s] = u1[..., s] @ ctx2[:, h]  # RGB queries read the X context
        v2[..., s] = u2[..., s] @ ctx1[:, h]
    t1 = F.layer_norm(x1 + ffm.end1(torch.cat((y1, v1), -1)), (8,))
    t2 = F.layer_norm(x2 + ffm.end2(torch.cat((y2, v2), -1)), (8,))
    o1, o2 = ffm.cross_path(x1, x2)
    torch.testing.assert_close(o1, t1)
    torch.testing.assert_close(o2, t2)


def test_ffm_forward_is_cross_path_then_channel_embedding():
    torch.manual_seed(0)
    ffm = FFM(6, num_heads=3).eval()  # BatchNorm at init in eval: x / sqrt(1 + eps)
    with torch.no_grad():
        for conv in (ffm.embed[0], ffm.embed[1], ffm.embed[3]):
            conv.bias.normal_()
    x1, x2 = _pair(6, 5, 7)
    t1, t2 = ffm.cross_path(x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2))
    z = torch.cat((t1, t2), -1).transpose(1, 2).reshape(2, 12, 5, 7)
    bn = 1 / math.sqrt(1 + 1e-5)
    e = ffm.embed
    main = F.conv2d(z, e[0].weight, e[0].bias)
    main = F.relu(F.conv2d(main, e[1].weight, e[1].bias, padding=1, groups=6))
    main = F.conv2d(main, e[3].weight, e[3].bias) * bn
    expected = (F.conv2d(z, ffm.residual.weight) + main) * bn
    torch.testing.assert_close(ffm(x1, x2), expected)


def test_cross_path_is_token_permutation_equivariant_and_reads_the_other_context():
    torch.manual_seed(0)
    ffm = FFM(8, num_heads=2)
    x1, x2 = torch.randn(2, 11, 8), torch.randn(2, 11, 8)
    t1, t2 = ffm.cross_path(x1, x2)
    perm = torch.randperm(11)
    p1, p2 = ffm.cross_path(x1[:, perm], x2[:, perm])
    torch.testing.assert_close(p1, t1[:, perm])
    torch.testing.assert_close(p2, t2[:, perm])
    # Permuting one modality alone leaves the other's context (a sum over tokens) unchanged.
    q1, _ = ffm.cross_path(x1, x2[:, perm])
    torch.testing.assert_close(q1, t1)
    # X reaches the RGB output only through its context: with K_2 = 0 it is uniform.
    with torch.no_grad():
        ffm.kv2.weight[:8].zero_()
    a1, _ = ffm.cross_path(x1, x2)
    b1, _ = ffm.cross_path(x1, torch.randn(2, 11, 8))
    torch.testing.assert_close(a1, b1)
    u2 = F.relu(ffm.proj2(x2))[..., 8:]
    torch.testing.assert_close(ffm.context(u2, ffm.kv2), torch.full((2, 2, 4, 4), 0.25))
