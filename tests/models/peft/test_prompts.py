"""CrossModalPrompt: MoBaNet CPIA / KTB MAPA prompting, and the SAM path's per-modality prompts."""

import pytest
import torch

from rsfusion.models.peft import CrossModalPrompt


def test_parameter_count_matches_mobanet_formula():
    # C = 1024, r = 1/4 -> h = 256: two Linear C->h, Linear 2h->h, Linear h->C, 4 prompts (C,).
    c, h = 1024, 256
    expected = 2 * (c * h + h) + (2 * h * h + h) + (h * c + c) + 4 * c
    assert expected == 923_392
    module = CrossModalPrompt(c, ratio=1 / 4)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == expected


def test_ratio_sets_hidden_size():
    assert CrossModalPrompt(1024, ratio=1 / 4).hidden_dim == 256
    ktb = CrossModalPrompt(1024, ratio=1 / 8)
    assert ktb.hidden_dim == 128
    assert ktb.down_rgb.out_features == ktb.mix.out_features == ktb.up.in_features == 128
    assert ktb.mix.in_features == 256
    with pytest.raises(ValueError, match="ratio"):
        CrossModalPrompt(64, ratio=0)


def test_unit_channel_prompts_give_r_plus_two_u():
    torch.manual_seed(0)
    module = CrossModalPrompt(32, ratio=1 / 8)
    with torch.no_grad():
        for g in (module.gamma_rgb, module.gamma_x):
            g.fill_(1.0)
        for b in (module.beta_rgb, module.beta_x):
            b.zero_()
    r, x, u = torch.randn(3, 2, 5, 32).unbind(0)
    r2, x2 = module.inject(r, x, u)
    torch.testing.assert_close(r2, r + 2 * u)
    torch.testing.assert_close(x2, x + 2 * u)


def test_prompt_is_linear_mix_of_both_modalities_and_channel_prompts_differ():
    torch.manual_seed(0)
    module = CrossModalPrompt(16, ratio=1 / 4)
    r, x = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    r2, x2, u = module(r, x, return_prompt=True)
    torch.testing.assert_close(u, module.prompt(r, x))
    # No nonlinearity: u(a r1 + b r2, ...) is affine in its inputs.
    u0 = module.prompt(torch.zeros_like(r), torch.zeros_like(x))
    torch.testing.assert_close(module.prompt(2 * r, 2 * x) - u0, 2 * (u - u0), rtol=1e-5, atol=1e-5)
    # Each stream sees the other: changing X changes the RGB output.
    r3, _ = module(r, x + 1)
    assert not torch.allclose(r2, r3)
    # gamma ~ N(1, .02), beta ~ N(0, .02), drawn separately per modality.
    assert abs(module.gamma_rgb.mean().item() - 1) < 0.02
    assert abs(module.beta_x.mean().item()) < 0.02
    assert 0.005 < module.gamma_x.std().item() < 0.05
    assert not torch.equal(module.gamma_rgb, module.gamma_x)
    torch.testing.assert_close(
        r2 - r - u, u * module.gamma_rgb + module.beta_rgb, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(x2 - x - u, u * module.gamma_x + module.beta_x, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_every_parameter_and_shapes_are_checked():
    module = CrossModalPrompt(16, ratio=1 / 8)
    r2, x2 = module(torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    (r2.square().sum() + x2.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    with pytest.raises(ValueError, match="one shape"):
        module(torch.randn(2, 4, 16), torch.randn(2, 5, 16))


def test_stream_prompts_are_u_plus_each_modalitys_channel_prompt():
    """MoBaNet's SAM path feeds adapter m with u + (u * gamma_m + beta_m): what ``inject`` adds
    to the tokens, without the tokens."""
    torch.manual_seed(0)
    module = CrossModalPrompt(32, ratio=1 / 4)
    r, x = torch.randn(2, 2, 7, 32).unbind(0)
    p_rgb, p_x = module.stream_prompts(r, x)
    u = module.prompt(r, x)
    torch.testing.assert_close(p_rgb, u + u * module.gamma_rgb + module.beta_rgb)
    torch.testing.assert_close(p_x, u + u * module.gamma_x + module.beta_x)
    r2, x2 = module.inject(r, x, u)
    torch.testing.assert_close(r2 - r, p_rgb, rtol=1e-5, atol=1e-5)
    (p_rgb.sum() + p_x.sum()).backward()
    for p in (module.gamma_rgb, module.beta_rgb, module.gamma_x, module.beta_x):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
