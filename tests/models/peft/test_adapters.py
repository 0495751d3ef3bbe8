"""BottleneckAdapter: KTB MAPA adaptation and MoBaNet's prompt-injected adapter."""

import pytest
import torch

from rsfusion.models.peft import BottleneckAdapter, CrossModalPrompt


def test_zero_at_init_and_learns_after_one_step():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(64, reduction=16, dropout=0.1, scale=0.5)
    assert adapter.hidden_dim == 4
    t = torch.randn(2, 9, 64)
    assert torch.equal(adapter(t), torch.zeros_like(t))
    target = torch.randn_like(t)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(adapter(t), target).backward()
    opt.step()
    adapter.eval()
    assert adapter(t).abs().max() > 0


def test_scale_multiplies_output_and_skip_adds_input():
    torch.manual_seed(0)
    full = BottleneckAdapter(32, dropout=0.0)
    half = BottleneckAdapter(32, dropout=0.0, scale=0.5)
    half.load_state_dict(full.state_dict())
    torch.nn.init.normal_(full.up.weight)
    half.up.weight.data.copy_(full.up.weight)
    t = torch.randn(3, 32)
    torch.testing.assert_close(half(t), 0.5 * full(t))
    skip = BottleneckAdapter(32, skip=True)
    assert torch.equal(skip(t), t)


def test_prompt_injection_changes_output_once_up_projection_is_trained():
    torch.manual_seed(0)
    c = 32
    cpia = CrossModalPrompt(c, ratio=1 / 4)
    adapter = BottleneckAdapter(c, dropout=0.0, prompt_dim=c).eval()
    r, x = torch.randn(2, 6, c), torch.randn(2, 6, c)
    u = cpia.prompt(r, x)
    # At init the up projection is zero: the prompt cannot show yet.
    assert torch.equal(adapter(r, u), torch.zeros_like(r))
    torch.nn.init.normal_(adapter.up.weight, std=0.1)
    with torch.no_grad():
        assert not torch.allclose(adapter(r, u), adapter(r, torch.zeros_like(u)))
        # The prompt enters before the ReLU: equal to a plain adapter whose bias absorbed it.
        plain = BottleneckAdapter(c, dropout=0.0).eval()
        plain.down.weight.copy_(adapter.down.weight)
        plain.up.load_state_dict(adapter.up.state_dict())
        plain.down.bias.copy_(adapter.down.bias + adapter.prompt_proj.bias)
        zero = torch.zeros_like(u)
        torch.testing.assert_close(adapter(r, zero), plain(r))
    # Gradient reaches the prompt generator through the injected adapter.
    adapter(r, cpia.prompt(r, x)).sum().backward()
    assert cpia.up.weight.grad is not None and cpia.up.weight.grad.abs().sum() > 0


def test_prompt_presence_must_match_construction():
    with pytest.raises(ValueError, match="without a prompt"):
        BottleneckAdapter(16, prompt_dim=16)(torch.randn(2, 16))
    with pytest.raises(ValueError, match="with a prompt"):
        BottleneckAdapter(16)(torch.randn(2, 16), torch.randn(2, 16))
