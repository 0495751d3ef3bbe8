"""DGFM: MoBaNet difference-guided gated fusion (arXiv 2026, Fig. 1)."""

import torch
import torch.nn.functional as F

from rsfusion.models.fusion import DGFM


def _maps(seed: int = 0, c: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, c, 6, 5, generator=g), torch.randn(2, c, 6, 5, generator=g)


def _ln(module: DGFM, t: torch.Tensor) -> torch.Tensor:
    ln = module.norm
    out = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), ln.weight, ln.bias, ln.eps)
    return out.permute(0, 3, 1, 2)


def test_default_hidden_is_an_eighth():
    assert DGFM(1024).hidden_dim == 128
    assert DGFM(64, hidden=4).reduce_rgb.out_channels == 4
    assert DGFM(64).reduce_rgb.bias is None and DGFM(64).reduce_x.bias is None


def test_init_is_layernorm_of_the_mean():
    torch.manual_seed(0)
    module = DGFM(16)
    rgb, x = _maps()
    with torch.no_grad():
        torch.testing.assert_close(module.gate(rgb, x), torch.full_like(rgb, 0.5))
        torch.testing.assert_close(module(rgb, x), _ln(module, 0.5 * rgb + 0.5 * x))
        # LayerNorm is over channels: every pixel has zero mean, unit variance across C.
        out = module(rgb, x)
        torch.testing.assert_close(out.mean(1), torch.zeros(2, 6, 5), atol=1e-5, rtol=0)


def test_gate_is_symmetric_at_init_and_not_after_training_the_last_conv():
    torch.manual_seed(0)
    module = DGFM(16, hidden=4)
    rgb, x = _maps()
    with torch.no_grad():
        assert torch.equal(module.gate(rgb, x), module.gate(x, rgb))
        torch.nn.init.normal_(module.gate_net[-1].weight)
        g = module.gate(rgb, x)
        assert not torch.allclose(g, module.gate(x, rgb))
        assert not torch.allclose(g, torch.full_like(g, 0.5))
        torch.testing.assert_close(module(rgb, x), _ln(module, g * rgb + (1 - g) * x))


def test_gate_reads_the_modality_difference():
    torch.manual_seed(0)
    module = DGFM(16, hidden=4)
    rgb, x = _maps()
    with torch.no_grad():
        module.reduce_x.weight.copy_(module.reduce_rgb.weight)  # one reducer for both
        module.gate_net[0].weight[:, :8].zero_()  # the gate sees only d = |r' - s'|
        torch.nn.init.normal_(module.gate_net[-1].weight)
        # d is symmetric, so the gate is too; it varies with d over the image...
        g = module.gate(rgb, x)
        torch.testing.assert_close(g, module.gate(x, rgb))
        assert g.std(dim=(2, 3)).min() > 1e-3
        # ...and where the modalities agree (d = 0) it is the same at every pixel.
        same = module.gate(rgb, rgb)
        torch.testing.assert_close(same, same[..., :1, :1].expand_as(same))
        # Where the two agree, the gate cannot matter: output = LN(rgb).
        torch.testing.assert_close(module(rgb, rgb), _ln(module, rgb))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    module = DGFM(16, hidden=4)
    with torch.no_grad():
        torch.nn.init.normal_(module.gate_net[-1].weight, std=0.1)
    rgb, x = _maps()
    target = torch.randn_like(rgb)
    F.mse_loss(module(rgb, x), target).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_init_last_conv_still_learns_from_the_start():
    torch.manual_seed(0)
    module = DGFM(16, hidden=4)
    rgb, x = _maps()
    F.mse_loss(module(rgb, x), torch.randn_like(rgb)).backward()
    last = module.gate_net[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
