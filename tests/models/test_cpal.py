"""CPAL on the engine: trainable parts, LoRA placement, the faithful flag, Table IX counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsfusion.models import ModelSpec, build_model
from rsfusion.models.base import count_parameters
from rsfusion.models.peft import LoRALinear

TINY = {"channels": 16, "depths": [1, 1, 2, 1], "groups": [1, 2, 4, 8]}
HEAD = {"head_channels": 32, "ham_channels": 32, "image_size": 64}


def _cpal(x_channels: int = 1, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(
        "cpal", 5, 3, x_channels, backbone="internimage_t", backbone_mode="stochastic_depth",
        drop_path_rate=0.5, kwargs={"backbone_kwargs": TINY, **HEAD, **kwargs},
    )  # fmt: skip
    return build_model(spec)


def test_only_mcp_lora_gpm_and_head_train_and_lora_sits_on_the_last_stage():
    model = _cpal()
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"levels", "mcp", "gpm", "head"}
    lora = [n for n, m in model.backbone.named_modules() if isinstance(m, LoRALinear)]
    assert lora == [f"levels.3.blocks.0.dcn.{leaf}" for leaf in ("offset", "mask")]
    assert model.recipe.lora_layers == lora
    backbone_trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert backbone_trainable and all(".lora_" in n for n in backbone_trainable)


@pytest.mark.parametrize("x_channels", [1, 3])
def test_logits_at_an_odd_size_and_every_trainable_part_learns(x_channels):
    model = _cpal(x_channels).train()
    rgb, x = torch.rand(2, 3, 50, 70), torch.rand(2, x_channels, 50, 70)
    target = torch.randint(0, 5, (2, 50, 70))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):  # zero-initialised up-projections and LoRA B: a second step moves the rest
        out = model(rgb, x)
        assert out.shape == (2, 5, 50, 70)
        opt.zero_grad()
        nn.functional.cross_entropy(out, target).backward()
        opt.step()
    still = [i for i, (p, b) in enumerate(zip(params, before)) if torch.equal(p, b)]
    assert not still, [n for n, p in model.named_parameters() if p.requires_grad][still[0]]


def test_faithful_reproduces_the_authors_zero_prompts_and_sigmoid_lora():
    model = _cpal(faithful=True)
    mcp = model.recipe.mcp[0][0]
    assert all(p.abs().sum() == 0 for p in mcp.parameters())
    offset = model.backbone.levels[3].blocks[0].dcn.offset
    assert offset.activation == "sigmoid"
    t = torch.randn(4, offset.base.in_features)
    torch.testing.assert_close(offset(t), offset.base(t) + 0.5)


def test_table_ix_counts_for_internimage_h_on_the_meta_device():
    """Paper Table IX (InternImage-H): MCP stages 1-4 0.62M, stage 4 0.15M; GPM 1-4 3.62M,
    stage 4 2.62M; LoRA stage 4 0.34M (the table truncates to two decimals)."""
    spec = ModelSpec("cpal", 15, 3, 3, backbone="internimage_h", kwargs={"head": "uper"})
    with torch.device("meta"):
        model = build_model(spec)
    recipe = model.recipe
    mcp = [sum(count_parameters(m)[0] for m in stage) for stage in recipe.mcp]
    gpm = [count_parameters(g)[0] for g in recipe.gpm]
    lora = sum(p.numel() for n, p in model.backbone.named_parameters() if ".lora_" in n)
    assert (mcp[3], sum(mcp)) == (153_984, 624_000)
    assert (gpm[3], sum(gpm)) == (2_626_192, 3_624_560)
    assert lora == 349_440


def test_a_six_channel_event_tensor_goes_through_x_proj():
    """DDD17's Ev-SegNet tensor (6 channels) reaches the shared 3-channel stem through x_proj,
    which starts as the channel mean and learns; 1- and 3-channel X build none."""
    model = _cpal(6).train()
    proj = model.recipe.x_proj
    assert proj is not None and proj.weight.shape == (3, 6, 1, 1)
    assert _cpal(1).recipe.x_proj is None and _cpal(3).recipe.x_proj is None
    x = torch.rand(1, 6, 32, 32)
    assert torch.allclose(proj(x), x.mean(1, keepdim=True).expand(-1, 3, -1, -1), atol=1e-6)
    out = model(torch.rand(1, 3, 32, 32), x)
    out.square().mean().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    depths, _ = model.parameter_depths()
    assert depths["recipe.x_proj.weight"] == 0  # an embedding part for layer-wise decay
