"""The Swin engine adapter (KTB's backbone): walk vs timm, odd sizes, frozen norms,
block adapters (Swin and ViT), and loading official / timm / segmentation checkpoints."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resize_rel_pos_bias_table
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.backbones.swin import SwinBackbone, shift_window_mask
from rsfusion.models.backbones.swin_weights import load_swin_weights
from rsfusion.models.backbones.vit import ViTBackbone
from rsfusion.models.backbones.weights import WeightsUnavailable
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import DualStreamEngine, Recipe
from rsfusion.models.mobanet import build_backbone

NAME = "swin_tiny_patch4_window7_224"
KW: dict[str, Any] = {"embed_dim": 16, "depths": (2, 1, 2, 1), "num_heads": (1, 2, 2, 4)}


def tiny(seed: int = 0, randomise: bool = True, **kwargs: Any) -> SwinBackbone:
    """A 16-wide Swin; with ``randomise`` every timm tensor is random (stage norms default)."""
    torch.manual_seed(seed)
    backbone = SwinBackbone(NAME, **{**KW, **kwargs})
    if randomise:
        with torch.no_grad():
            for p in backbone.swin.parameters():
                p.normal_(0, 0.5)
        backbone.sync_x_norms()
    return backbone


class Recorder(Recipe):
    """Keeps the per-stage maps of both streams; logits are zeros."""

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor:
        self.rgb, self.x = rgb, x
        return fused[0].new_zeros(fused[0].shape[0], 1, *size)


def engine_maps(backbone: Backbone, rgb: Tensor, x: Tensor | None = None) -> Recorder:
    recipe = Recorder()
    with torch.no_grad():
        out = DualStreamEngine(backbone, recipe)(rgb, rgb if x is None else x)
    assert out.shape[-2:] == rgb.shape[-2:]
    return recipe


def test_walk_reproduces_timm_stage_features() -> None:
    backbone = tiny(window_size=4)  # 128x256: every stage grid a multiple of the window
    with torch.no_grad():
        for norm in backbone.stage_norms:
            norm.weight.normal_()
            norm.bias.normal_()
    backbone.sync_x_norms()
    image = torch.randn(2, 3, 128, 256)
    maps = engine_maps(backbone, image)
    with torch.no_grad():
        ref = backbone.swin.forward_intermediates(image, norm=True, intermediates_only=True)
        for i, norm in enumerate(backbone.stage_norms):
            ref[i] = norm(ref[i].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert [m.shape[1] for m in maps.rgb] == [16, 32, 64, 128]
    assert [s.reduction for s in backbone.stages] == [4, 8, 16, 32]
    for ours, theirs, x_map in zip(maps.rgb, ref, maps.x):
        assert torch.equal(ours, theirs)
        assert torch.equal(x_map, theirs)  # same image, X norms an exact copy


@pytest.mark.parametrize("size", [(64, 96), (70, 90)])
def test_odd_sizes_give_ceil_maps(size: tuple[int, int]) -> None:
    backbone = tiny()  # window 7: no stage grid is a multiple of it
    maps = engine_maps(backbone, torch.randn(1, 3, *size), torch.randn(1, 3, *size))
    padded = [-(-s // 32) * 32 for s in size]
    for m, stage in zip(maps.rgb, backbone.stages):
        assert m.shape[-2:] == (padded[0] // stage.reduction, padded[1] // stage.reduction)
        assert torch.isfinite(m).all()
    assert not torch.equal(maps.rgb[-1], maps.x[-1])


def test_window_padding_is_before_the_shift() -> None:
    backbone = tiny()
    block = backbone.blocks(0)[1]  # shifted: window 7, shift 3
    assert tuple(block.shift_size) == (3, 3)
    x = torch.randn(2, 10, 13, 16)
    with torch.no_grad():
        ours = backbone.window_attention(block, x)
        # On a grid padded to 14x14 timm's shift-then-pad equals the segmentation pad-then-shift.
        ref = block._attn(F.pad(x, (0, 0, 0, 1, 0, 4)))[:, :10, :13]
        timm_unpadded = block._attn(x)  # timm shifts first, then pads: differs at the border
    assert torch.equal(ours, ref)
    assert not torch.allclose(ours, timm_unpadded)
    mask = block.get_attn_mask(torch.zeros(1, 14, 21, 1))
    assert torch.equal(shift_window_mask((14, 21), (7, 7), (3, 3)), mask)


def test_absolute_position_embedding_is_added_in_embed() -> None:
    backbone = tiny()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        plain = backbone.embed(image).data
        backbone.swin.absolute_pos_embed = nn.Parameter(torch.randn(1, 16, 24, 16))
        with_pos = backbone.embed(image, copy.deepcopy(backbone.embedding())).data
    assert torch.equal(with_pos, plain + backbone.swin.absolute_pos_embed.reshape(1, -1, 16))


def test_frozen_eval_and_separate_x_norms() -> None:
    backbone = tiny()
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not any(m.training for m in backbone.modules())
    for i in range(4):
        rgb, x = backbone.output_norm(i, "rgb"), backbone.output_norm(i, "x")
        assert rgb is not x and rgb.weight.data_ptr() != x.weight.data_ptr()
        assert torch.equal(rgb.weight, x.weight) and torch.equal(rgb.bias, x.bias)
    assert backbone.output_norm(3) is backbone.swin.norm
    with torch.no_grad():
        backbone.swin.norm.weight.add_(1.0)
    assert not torch.equal(backbone.swin.norm.weight, backbone.output_norm(3, "x").weight)
    backbone.sync_x_norms()
    assert torch.equal(backbone.swin.norm.weight, backbone.output_norm(3, "x").weight)


def _states(backbone: Backbone, image: Tensor) -> list[tuple[int, int, StreamState]]:
    """(stage, block, state entering the block) for every block."""
    out = []
    with torch.no_grad():
        state = backbone.embed(image)
        for i in range(len(backbone.stages)):
            for j in range(len(backbone.blocks(i))):
                out.append((i, j, state))
                state = backbone.run_block(i, j, state)
            state = backbone.next_stage(i, state)
    return out


def vit() -> ViTBackbone:
    torch.manual_seed(0)
    kw = {"depth": 4, "embed_dim": 48, "num_heads": 2, "img_size": 28}
    return ViTBackbone("vit_small_patch14_reg4_dinov2", **kw)


@pytest.mark.parametrize("make", [lambda: tiny(window_size=4), vit], ids=["swin", "vit"])
def test_block_halves_compose_to_the_block(make) -> None:
    backbone = make()
    assert backbone.splits_blocks
    for i, j, state in _states(backbone, torch.randn(1, 3, 64, 64)):
        with torch.no_grad():
            plain = backbone.run_block(i, j, state).data
            halves = backbone.mlp(i, j, backbone.mixer(i, j, state, "x"), "x")
        assert torch.equal(halves.data, plain)
        assert (halves.hw, halves.prefix) == (state.hw, state.prefix)


@pytest.mark.parametrize("make", [lambda: tiny(window_size=4), vit], ids=["swin", "vit"])
def test_mixer_half_is_the_block_up_to_the_attention_residual(make) -> None:
    backbone = make()
    no_ffn = copy.deepcopy(backbone)  # zero FFN: the block's output is t + attn(t)
    for block in (b for i in range(len(no_ffn.stages)) for b in no_ffn.blocks(i)):
        nn.init.zeros_(block.mlp.fc2.weight)
        nn.init.zeros_(block.mlp.fc2.bias)
    for i, j, state in _states(backbone, torch.randn(1, 3, 64, 64))[:3]:
        with torch.no_grad():
            mixed = backbone.mixer(i, j, state, "rgb").data
            block = no_ffn.blocks(i)[j]
            if isinstance(backbone, SwinBackbone):  # timm's own block forward, NHWC
                b, n, c = state.data.shape
                t1 = block(state.data.reshape(b, *state.hw, c)).reshape(b, n, c)
            else:
                t1 = block(state.data)
        assert torch.equal(mixed, t1)


def test_base_backbone_refuses_block_halves_by_a_named_error() -> None:
    class Plain(Backbone):
        name = "plain"

        def embedding(self) -> nn.Module:
            return nn.Identity()

        def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
            return StreamState(image, image.shape[-2:])

        def blocks(self, stage: int) -> list[nn.Module]:
            return [nn.Identity()]

        def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
            return state.data

    state = StreamState(torch.zeros(1, 1, 2, 2), (2, 2))
    assert not Plain.splits_blocks
    assert torch.equal(Plain().run_block(0, 0, state).data, state.data)
    for half in ("mixer", "mlp"):
        with pytest.raises(BlockSplitError, match="plain"):
            getattr(Plain(), half)(0, 0, state)


# --- weights ------------------------------------------------------------------------------


def official(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm names -> microsoft/Swin-Transformer: merging at the end of the previous stage."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        out[".".join(parts)] = value.clone()
    out["head.weight"], out["head.bias"] = torch.randn(10, 128), torch.randn(10)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)  # a buffer official files keep
    return out


def maps_of(backbone: SwinBackbone) -> list[Tensor]:
    torch.manual_seed(5)
    return engine_maps(backbone, torch.randn(1, 3, 64, 96)).rgb


@pytest.mark.parametrize("layout", ["official", "timm", "segmentation"])
def test_saved_layouts_load_back_exactly(layout: str, tmp_path: Path) -> None:
    src = tiny(seed=1)
    sd = src.swin.state_dict()
    if layout == "official":
        path = tmp_path / "swin.pth"
        torch.save({"model": official(sd)}, path)
    elif layout == "timm":
        path = tmp_path / "swin.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        with torch.no_grad():
            for norm in src.stage_norms:
                norm.weight.normal_()
                norm.bias.normal_()
        src.sync_x_norms()
        weights = {f"backbone.{k}": v for k, v in official(sd).items() if "head" not in k}
        for i in range(4):
            norm = src.output_norm(i)
            weights[f"backbone.norm{i}.weight"] = norm.weight.clone()
            weights[f"backbone.norm{i}.bias"] = norm.bias.clone()
        weights["decode_head.conv_seg.weight"] = torch.randn(6, 64, 1, 1)
        path = tmp_path / "upernet_swin.pth"
        torch.save({"meta": {"iter": 160000}, "state_dict": weights}, path)
    dst = tiny(seed=2)
    before = maps_of(dst)
    report = load_swin_weights(dst, path)
    after, want = maps_of(dst), maps_of(src)
    for a, w, b in zip(after, want, before):
        assert torch.equal(a, w) and not torch.equal(a, b)
    for i in range(4):  # X norms re-copied from the loaded RGB norms
        assert torch.equal(dst.output_norm(i, "x").weight, src.output_norm(i).weight)
    assert report.loaded == len(sd) + (6 if layout == "segmentation" else 0)
    norms_missing = [f"stage_norms.{i}.{k}" for i in range(3) for k in ("weight", "bias")]
    assert report.missing == ([] if layout == "segmentation" else norms_missing)
    assert ("head.fc.weight" in report.unexpected) == (layout == "official")
    assert report.resized == []


def test_other_window_resizes_bias_tables(tmp_path: Path) -> None:
    src = tiny(seed=1)  # window 7
    path = tmp_path / "w7.pth"
    torch.save({"model": official(src.swin.state_dict())}, path)
    dst = tiny(seed=2, window_size=4)
    report = load_swin_weights(dst, path)
    assert report.resized == [
        "relative_position_bias_table: window 7x7 -> 4x4 in 6 blocks "
        "(timm resize_rel_pos_bias_table)"
    ]
    name = "layers.2.blocks.1.attn.relative_position_bias_table"
    table = src.swin.state_dict()[name]
    want = resize_rel_pos_bias_table(table, new_window_size=(4, 4), new_bias_shape=(49, 2))
    assert dst.swin.state_dict()[name].shape == (49, 2)
    assert torch.equal(dst.swin.state_dict()[name], want)
    qkv = "layers.2.blocks.1.attn.qkv.weight"
    assert torch.equal(dst.swin.state_dict()[qkv], src.swin.state_dict()[qkv])


def test_refuses_other_width_and_mmseg_native_layout(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny(seed=1).swin.state_dict(), path)
    with pytest.raises(ValueError, match=r"embed 16, depths \(2, 1, 2, 1\).*embed 32"):
        load_swin_weights(tiny(embed_dim=32, randomise=False), path)
    native = tmp_path / "native.pth"
    torch.save({"state_dict": {"backbone.patch_embed.projection.weight": torch.zeros(1)}}, native)
    with pytest.raises(ValueError, match="mmseg's own Swin layout"):
        load_swin_weights(tiny(randomise=False), native)


def test_hub_name_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="Fix: download"):
        load_swin_weights(tiny(randomise=False), "swin_tiny_patch4_window7_224.ms_in1k")
    assert time.monotonic() - start < 5
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_swin_weights(tiny(randomise=False), tmp_path / "missing.pth")


def test_mobanet_dispatches_swin(tmp_path: Path) -> None:
    src = tiny(seed=1)
    path = tmp_path / "swin.pth"
    torch.save({"model": official(src.swin.state_dict())}, path)
    kwargs = {"backbone_kwargs": KW}
    spec = ModelSpec("mobanet", 6, 3, 1, backbone=NAME, weights=str(path), kwargs=kwargs)
    backbone = build_backbone(spec)
    assert isinstance(backbone, SwinBackbone)
    for a, b in zip(maps_of(backbone), maps_of(src)):
        assert torch.equal(a, b)
