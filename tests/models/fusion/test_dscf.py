"""DSCF: KTB dynamic sparse cross-modality fusion (Cai et al., CVPR 2025)."""

import pytest
import torch
import torch.nn.functional as F

from rsfusion.models.fusion import DSCF, dscf_stage_options


def _maps(b: int = 2, c: int = 32, h: int = 12, w: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)


def _module(seed: int = 0, **kwargs) -> DSCF:
    torch.manual_seed(seed)
    options = {"stride": 4, "groups": 2, "heads": 4} | kwargs
    return DSCF(32, **options)


def _zero_offsets(module: DSCF) -> None:
    with torch.no_grad():
        module.offset_rgb.out.weight.zero_()
        module.offset_x.out.weight.zero_()


def test_stage_options_follow_methods():
    opts = [dscf_stage_options(i) for i in range(4)]
    assert [o["stride"] for o in opts] == [8, 4, 2, 1]
    assert [o["groups"] for o in opts] == [1, 2, 4, 8]
    assert [o["heads"] for o in opts] == [2, 4, 8, 16]
    assert [o["layer_scale_init"] for o in opts] == [1e-3, 1e-3, 1e-3, 1.0]
    assert dscf_stage_options(0, feature_size=(120, 160))["bias_table"] == (239, 319)
    with pytest.raises(ValueError):
        dscf_stage_options(4)
    # Swin-B and Swin-L widths all build with d = C / 8.
    for widths in ((128, 256, 512, 1024), (192, 384, 768, 1536)):
        for i, c in enumerate(widths):
            module = DSCF(c, **dscf_stage_options(i))
            assert module.hidden_dim == c // 8
            assert module.layer_scale.shape == (c // 8,) and module.skip_scale.eq(1).all()
    with pytest.raises(ValueError):
        DSCF(32, groups=3, heads=3)  # d = 4 is not divisible by 3


def test_zero_offsets_sample_the_strided_grid():
    module = _module()
    _zero_offsets(module)
    rgb, x = _maps(h=13, w=10)
    with torch.no_grad():
        parts = module.forward_parts(rgb, x)
    ref = module.reference_points(13, 10)
    assert ref.shape == (4, 3, 2)  # ceil(13 / 4), ceil(10 / 4); (x, y) order
    torch.testing.assert_close(ref[0, 0], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(ref[1, 2], torch.tensor([2 * 8 / 9 - 1, 2 * 4 / 12 - 1]))
    # Both position sets (RGB, X) of every group are the reference grid.
    expected = ref.reshape(1, 1, -1, 2).repeat(2, 2, 2, 1)
    torch.testing.assert_close(parts.positions, expected)
    # Sampled values are the maps read at pixels (4i, 4j), once per position set.
    for sampled, full in ((parts.r_s, parts.r), (parts.x_s, parts.x), (parts.q_s, parts.query)):
        grid = full[..., ::4, ::4].flatten(2)
        torch.testing.assert_close(sampled, torch.cat([grid, grid], dim=2))


def test_learned_offsets_move_and_clamp_positions():
    module = _module()
    rgb, x = _maps()
    with torch.no_grad():
        module.offset_x.out.weight.mul_(50.0)  # push the X positions far out
        pos = module.forward_parts(rgb, x).positions
    ns = 3 * 3
    ref = module.reference_points(12, 10).reshape(-1, 2)
    assert pos.abs().max() <= 1.0
    assert not torch.allclose(pos[:, :, :ns], ref.expand_as(pos[:, :, :ns]))
    assert (pos[:, :, ns:].abs() == 1.0).float().mean() > 0.5  # clamped to the border
    assert not torch.equal(pos[:, 0], pos[:, 1])  # each group has its own positions


def test_sampling_is_bilinear_with_corners_aligned():
    module = _module(groups=1, heads=2)
    t = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6) ** 1.5
    # x halfway between columns 1 and 2, y exactly on row 3 (align_corners=True coordinates).
    pos = torch.tensor([[1.5 * 2 / 5 - 1, 3 * 2 / 4 - 1], [1.0, 1.0]]).expand(2, 1, 2, 2)
    out = module.sample(t, pos)
    torch.testing.assert_close(out[..., 0], (t[:, :, 3, 1] + t[:, :, 3, 2]) / 2)
    torch.testing.assert_close(out[..., 1], t[:, :, 4, 5])


def test_mixing_weights_are_a_softmax_over_the_two_modalities():
    module = _module()
    with torch.no_grad():
        for p in module.mix.parameters():
            p.normal_()  # far from uniform
        parts = module.forward_parts(*_maps())
    w = parts.weights
    assert w.shape == (2, 2, 2 * 9) and (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 18))
    assert w.std() > 0.05
    torch.testing.assert_close(parts.weights, module.mixing_weights(parts.q_s))
    torch.testing.assert_close(parts.mixed, w[:, :1] * parts.r_s + w[:, 1:] * parts.x_s)
    # One modality on both inputs (same reducer): S is that modality's samples, whatever w is.
    with torch.no_grad():
        module.reduce_x.load_state_dict(module.reduce_rgb.state_dict())
        module.offset_x.load_state_dict(module.offset_rgb.state_dict())
        rgb, _ = _maps()
        same = module.forward_parts(rgb, rgb)
    torch.testing.assert_close(same.mixed, same.r_s)
    torch.testing.assert_close(same.weights.sum(1), torch.ones(2, 18))


def test_init_is_the_identity_branch_up_to_the_layer_scale():
    rgb, x = _maps()
    early = _module(layer_scale_init=1e-3)
    with torch.no_grad():
        parts = early.forward_parts(rgb, x)
    diff = (parts.fused - parts.feat).abs()
    assert (diff <= 1e-3 * parts.proj.abs() + 1e-6 * (1 + parts.feat.abs())).all()  # float32 ulp
    assert diff.max() < 1e-2 * parts.feat.abs().max()
    # Stage 4 (a = 1): the attention branch enters at full strength.
    late = _module(layer_scale_init=1.0)
    with torch.no_grad():
        parts = late.forward_parts(rgb, x)
    torch.testing.assert_close(parts.fused - parts.feat, parts.proj)
    assert (parts.fused - parts.feat).abs().max() > 0.05


def test_position_bias_is_the_table_sampled_at_half_the_displacement():
    module = _module(bias_table=(9, 7))
    th, tw = 9, 7
    u = torch.linspace(-1, 1, tw).view(1, 1, tw)
    v = torch.linspace(-1, 1, th).view(1, th, 1)
    cx = torch.arange(1.0, 5.0).view(4, 1, 1)  # one slope per head
    with torch.no_grad():
        module.rpb_table.copy_(cx * u - 2 * cx * v)  # linear: bilinear sampling is exact
    pos = torch.rand(2, 2, 6, 2) * 2 - 1
    bias = module.position_bias(3, 5, pos)  # (B, heads, 15, 6)
    qy, qx = torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 5), indexing="ij")
    q = torch.stack([qx, qy], -1).reshape(1, 1, 15, 1, 2)
    group = torch.tensor([0, 0, 1, 1])  # heads 0-1 read group 0's positions, 2-3 group 1's
    disp = (q - pos[:, group].unsqueeze(2)) / 2
    expected = cx.view(1, 4, 1, 1) * (disp[..., 0] - 2 * disp[..., 1])
    torch.testing.assert_close(bias, expected)


@pytest.mark.parametrize("b,h,w,stride", [(1, 7, 9, 8), (3, 13, 10, 4), (3, 5, 3, 1)])
def test_any_batch_and_odd_sizes(b, h, w, stride):
    module = _module(stride=stride).eval()
    rgb, x = _maps(b=b, h=h, w=w)
    with torch.no_grad():
        parts = module.forward_parts(rgb, x)
        single = module(rgb[-1:], x[-1:])
    n = 2 * -(-h // stride) * -(-w // stride)
    assert parts.out.shape == rgb.shape and torch.isfinite(parts.out).all()
    assert parts.attn.shape == (b, 4, h * w, n)
    torch.testing.assert_close(parts.attn.sum(-1), torch.ones(b, 4, h * w))
    torch.testing.assert_close(parts.out[-1:], single, atol=1e-5, rtol=1e-5)  # per-sample
    # The output is LayerNorm over channels.
    torch.testing.assert_close(parts.out.mean(1), torch.zeros(b, h, w), atol=1e-5, rtol=0)


def test_bias_table_does_not_depend_on_the_input_size():
    module = _module(bias_table=11)
    before = module.rpb_table.detach().clone()
    for h, w in ((8, 8), (16, 12)):
        out = module(*_maps(h=h, w=w))
        assert out.shape == (2, 32, h, w)
    assert module.rpb_table.shape == (4, 11, 11)
    assert torch.equal(module.rpb_table.detach(), before)


@pytest.mark.parametrize("faithful", [False, True])
def test_gradient_reaches_every_trainable_parameter(faithful):
    module = _module(faithful=faithful, stride=2)
    rgb, x = _maps(h=16, w=16)
    F.mse_loss(module(rgb, x), torch.randn_like(rgb)).backward()
    for name, p in module.named_parameters():
        if name.startswith("norm."):
            assert p.requires_grad is not faithful
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("faithful", [False, True])
def test_final_layernorm_faithful_flag(faithful):
    module = _module(faithful=faithful)
    rgb, x = _maps()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(module(rgb, x), torch.randn_like(rgb)).backward()
        opt.step()
    at_identity = module.norm.weight.eq(1).all() and module.norm.bias.eq(0).all()
    assert bool(at_identity) is faithful
    if faithful:
        # Even a changed (e.g. loaded) affine is not applied: the LayerNorm stays at identity.
        with torch.no_grad():
            ref = module(rgb, x)
            module.norm.weight.fill_(3.0)
            torch.testing.assert_close(module(rgb, x), ref)
