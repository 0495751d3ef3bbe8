"""LoRA: zero start, injection after freezing, per-stream and per-sample adapters, folding."""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerScale
from torch import nn

from rsfusion.models.backbones.base import stream_scope
from rsfusion.models.backbones.vit import ViTBackbone
from rsfusion.models.checkpoint import frozen_digest
from rsfusion.models.engine import DualStreamEngine
from rsfusion.models.peft import LoRALinear, fold_lora, inject_lora, lora_scope, unfold_lora
from tests.models.test_engine_v2 import Head

TINY = {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 28}
TARGETS = ["vit.blocks.3.attn.qkv", "vit.blocks.3.mlp.fc*"]


def _vit() -> ViTBackbone:
    """A tiny DINOv2-layout ViT with its 1e-5 layer scales set to 1 (blocks change tokens)."""
    torch.manual_seed(0)
    vit = ViTBackbone("vit_small_patch14_dinov2", taps=(1, 3), **TINY)
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, LayerScale):
                m.gamma.fill_(1.0)
    return vit


def _train_lora(layer: LoRALinear) -> None:
    with torch.no_grad():
        for p in layer.lora_b.values():
            p.normal_(0, 0.5)


def test_lora_starts_as_the_frozen_layer_and_scales_by_alpha_over_rank():
    base = nn.Linear(12, 6)
    layer = LoRALinear(base, rank=4, alpha=2.0)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), base(x))
    _train_lora(layer)
    a, b = layer.lora_a["shared"], layer.lora_b["shared"]
    torch.testing.assert_close(layer(x), base(x) + 0.5 * x @ a.T @ b.T)


def test_injected_after_freezing_lora_stays_trainable_and_is_not_hashed():
    backbone = _vit()
    engine = DualStreamEngine(backbone, Head(32))  # freezes the backbone
    digest = frozen_digest(engine)
    names = inject_lora(backbone, TARGETS, rank=2, adapters=("rgb", "x"))
    assert names == ["vit.blocks.3.attn.qkv", "vit.blocks.3.mlp.fc1", "vit.blocks.3.mlp.fc2"]
    lora = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert lora == {f"{m}.lora_{k}.{s}" for m in names for k in "ab" for s in ("rgb", "x")}
    backbone.set_mode("frozen")  # setting the mode again (the engine's builder) keeps them
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == lora
    # the base weights are the same frozen tensors; the hash names them under .base
    assert frozen_digest(engine) != digest
    assert engine.backbone.vit.blocks[3].attn.qkv.base.weight.requires_grad is False
    # trains: gradients reach A (B starts at zero, so A's first gradient is zero too)
    out = engine(torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28))
    out.sum().backward()
    qkv = engine.backbone.vit.blocks[3].attn.qkv
    assert qkv.lora_b["rgb"].grad.abs().sum() > 0 and qkv.lora_b["x"].grad.abs().sum() > 0


def test_injecting_before_freezing_would_freeze_nothing_it_should_not():
    """The order the engine relies on: inject, then set_mode, still leaves LoRA trainable."""
    backbone = _vit()
    inject_lora(backbone, TARGETS[:1], rank=2)
    backbone.set_mode("stochastic_depth")
    assert [n for n, p in backbone.named_parameters() if p.requires_grad] == [
        "vit.blocks.3.attn.qkv.lora_a.shared",
        "vit.blocks.3.attn.qkv.lora_b.shared",
    ]


def test_a_misspelled_target_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        inject_lora(_vit(), ["vit.blocks.3.atn.qkv"])


def test_per_stream_lora_follows_the_stream_the_backbone_runs():
    layer = LoRALinear(nn.Linear(8, 8), rank=2, adapters=("rgb", "x"))
    _train_lora(layer)
    x = torch.randn(2, 8)
    with stream_scope("rgb"):
        rgb = layer(x)
    with stream_scope("x"):
        xs = layer(x)
    assert not torch.allclose(rgb, xs)
    torch.testing.assert_close(rgb, layer.base(x) + layer.delta_weight("rgb").matmul(x.T).T)
    with pytest.raises(RuntimeError, match="outside a backbone call"):
        layer(x)


def test_a_lora_pool_picks_one_adapter_per_sample():
    layer = LoRALinear(nn.Linear(8, 4), rank=2, adapters=("depth", "thermal"), select="key")
    _train_lora(layer)
    x = torch.randn(3, 5, 8)
    with lora_scope("depth"):
        depth = layer(x)
    with lora_scope("thermal"):
        thermal = layer(x)
    with lora_scope(["thermal", "depth", "thermal"]):
        mixed = layer(x)
    torch.testing.assert_close(mixed, torch.stack([thermal[0], depth[1], thermal[2]]))
    with lora_scope(["event"] * 3), pytest.raises(KeyError, match="event"):
        layer(x)


def test_fold_equals_unfolded_and_the_state_dict_stays_unfolded():
    backbone = _vit()
    engine = DualStreamEngine(backbone, Head(32)).eval()
    inject_lora(backbone, TARGETS, rank=4, alpha=1.0, adapters=("rgb", "x"))
    for m in backbone.modules():
        if isinstance(m, LoRALinear):
            _train_lora(m)
    rgb, x = torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28)
    state = {k: v.clone() for k, v in engine.state_dict().items()}
    with torch.no_grad():
        plain = engine(rgb, x)
        assert fold_lora(engine) == 3
        folded = engine(rgb, x)
    assert not torch.allclose(plain, DualStreamEngine(_vit(), Head(32)).eval()(rgb, x))
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
    after = engine.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    unfold_lora(engine)
    with torch.no_grad():
        assert torch.equal(engine(rgb, x), plain)


def test_the_prediction_runner_folds_lora():
    from rsfusion.inference.runner import ModelRunner

    backbone = _vit()
    engine = DualStreamEngine(backbone, Head(32))
    inject_lora(backbone, TARGETS[:1], rank=2)
    runner = ModelRunner(engine, device="cpu", precision="fp32", fold_bn=False)
    assert runner.lora_folded == 1 and backbone.vit.blocks[3].attn.qkv.folded


def test_the_authors_sigmoid_lora_shifts_every_output_by_half_and_is_not_folded():
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, rank=2, alpha=1.0, activation="sigmoid")
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x) + 0.5)  # B = 0: sigmoid(0) everywhere
    assert fold_lora(layer) == 0 and not layer.folded
