"""The InternImage engine adapter (Wang et al., CVPR 2023; CPAL's backbone): the
authors' settings and parameter counts, the walk vs the plain forward, block halves vs the
whole block, weights in the official layouts, backbone modes and an end-to-end engine run."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import DropPath
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError, WeightsError, WeightsUnavailable
from rsfusion.models.backbones.base import StreamState
from rsfusion.models.backbones.factory import build_backbone
from rsfusion.models.backbones.internimage import (
    INTERNIMAGE_NAMES,
    InternImageBackbone,
    internimage_settings,
)
from rsfusion.models.backbones.internimage_weights import load_internimage_weights
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import DualStreamEngine, Recipe

TINY: dict[str, Any] = {"channels": 16, "depths": (1, 1, 2, 1), "groups": (1, 2, 4, 8)}
#: Tiny versions of the variants' block kinds (level 2 of the H/G-like ones has post-norms
#: after blocks 1 and 3 of 4, as H's after 5, 11, ... of 32).
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "t-prenorm": ("internimage_t", {}),
    "t-seg-layer-scale": ("internimage_t", {"layer_scale": 1.0}),
    "s-postnorm-layer-scale": ("internimage_s", {}),
    "l-offset-scale-2": ("internimage_l", {}),
    "h-res-post-norm": ("internimage_h", {"depths": (1, 1, 4, 1),
                                          "level2_post_norm_block_ids": (1, 3)}),
    "g-postnorm-centre-scale": ("internimage_g", {"depths": (1, 1, 4, 1),
                                                  "level2_post_norm_block_ids": (1, 3)}),
}  # fmt: skip


def tiny(kind: str = "t-prenorm", seed: int = 0, randomise: bool = True, **kw: Any):
    """A 16..128-wide InternImage of a variant's kind, every tensor random, frozen."""
    name, extra = KINDS[kind]
    torch.manual_seed(seed)
    backbone = InternImageBackbone(name, **{**TINY, **extra, **kw})
    if randomise:
        with torch.no_grad():
            for p in backbone.parameters():
                p.normal_(0, 0.2)
    backbone.set_mode("frozen")
    return backbone


def walk(backbone: InternImageBackbone, image: Tensor) -> list[Tensor]:
    """The single-stream engine walk: embed, every block, output, continue, next stage."""
    state = backbone.embed(image)
    maps = []
    for i in range(len(backbone.stages)):
        for j in range(len(backbone.blocks(i))):
            state = backbone.run_block(i, j, state)
        out = backbone.stage_output(i, state)
        maps.append(out)
        if i + 1 < len(backbone.stages):
            state = backbone.next_stage(i, backbone.continue_from(i, state, out, None))
    return maps


# ---------------------------------------------------------------------- settings, counts
def test_settings_are_the_authors() -> None:
    t, h = internimage_settings("internimage_t"), internimage_settings("internimage_h")
    assert (t["channels"], t["depths"], t["groups"]) == (64, (4, 4, 18, 4), (4, 8, 16, 32))
    assert t["layer_scale"] is None and not t["post_norm"] and t["offset_scale"] == 1.0
    assert (h["channels"], h["depths"], h["groups"]) == (320, (6, 6, 32, 6), (10, 20, 40, 80))
    assert h["dw_kernel_size"] == 5 and h["res_post_norm"] and h["center_feature_scale"]
    assert h["level2_post_norm"] and h["level2_post_norm_block_ids"] == (5, 11, 17, 23, 29)
    assert h["layer_scale"] is None and not h["post_norm"] and h["offset_scale"] == 1.0
    table = {  # classification/configs/internimage_*.yaml
        "internimage_s": (80, (4, 4, 21, 4), (5, 10, 20, 40), 1.0),
        "internimage_b": (112, (4, 4, 21, 4), (7, 14, 28, 56), 1.0),
        "internimage_l": (160, (5, 5, 22, 5), (10, 20, 40, 80), 2.0),
        "internimage_xl": (192, (5, 5, 24, 5), (12, 24, 48, 96), 2.0),
    }
    for name, (c, d, g, scale) in table.items():
        s = internimage_settings(name)
        assert (s["channels"], s["depths"], s["groups"], s["offset_scale"]) == (c, d, g, scale)
        assert s["layer_scale"] == 1e-5 and s["post_norm"] and not s["res_post_norm"]
    for name in INTERNIMAGE_NAMES:
        s = internimage_settings(name)
        assert s["mlp_ratio"] == 4.0 and s["drop_path_rate"] == 0.0 and not s["remove_center"]
    with pytest.raises(ValueError, match="unknown InternImage variant"):
        InternImageBackbone("internimage_q")
    with pytest.raises(ValueError, match="unknown InternImage settings"):
        InternImageBackbone("internimage_t", heads=3)


def expected_backbone_params(s: dict[str, Any]) -> int:
    """Parameters of the authors' ``patch_embed`` + ``levels`` from a variant's settings, by
    the layer shapes of ``classification/models/intern_image.py`` and ``DCNv3_pytorch``."""
    c0 = s["channels"]
    n = 3 * (c0 // 2) * 9 + c0 // 2 + 2 * (c0 // 2)  # stem conv1 + LN
    n += (c0 // 2) * c0 * 9 + c0 + 2 * c0  # conv2 + LN
    dw = s["dw_kernel_size"] or 3
    points = 9 - int(s["remove_center"])
    ids = s["level2_post_norm_block_ids"] if s["level2_post_norm"] else ()
    for i, (depth, g) in enumerate(zip(s["depths"], s["groups"])):
        c = c0 * 2**i
        hidden = int(c * s["mlp_ratio"])
        block = 2 * c + 2 * c  # norm1, norm2
        block += 2 * (c * c + c)  # input_proj, output_proj
        block += c * dw * dw + c + 2 * c  # depthwise conv + its LN
        block += (c + 1) * g * points * 2 + (c + 1) * g * points  # offset, mask
        block += (g * c + g) if s["center_feature_scale"] else 0
        block += c * hidden + hidden + hidden * c + c  # MLP
        block += 2 * c if s["layer_scale"] is not None else 0  # gamma1, gamma2
        block += 4 * c if s["res_post_norm"] else 0  # res_post_norm1, 2
        n += depth * block
        n += 2 * c if (not s["post_norm"] or s["center_feature_scale"]) else 0  # level norm
        n += 2 * c * len(ids) if i == 2 else 0  # level-2 post-norms
        n += c * 2 * c * 9 + 2 * 2 * c if i < len(s["depths"]) - 1 else 0  # downsample
    return n


def test_parameter_counts_match_the_official_models() -> None:
    """Backbones built without weights (H on the meta device: no memory) have the parameter
    counts of the authors' ``patch_embed`` + ``levels``; adding their classification heads gives
    the README's totals: InternImage-T 30M, InternImage-H 1.08B."""
    t = InternImageBackbone("internimage_t")
    with torch.device("meta"):
        h = InternImageBackbone("internimage_h")
    counts = {}
    for name, model in (("internimage_t", t), ("internimage_h", h)):
        counts[name] = sum(p.numel() for p in model.parameters())
        assert counts[name] == expected_backbone_params(internimage_settings(name))
    assert counts == {"internimage_t": 28_754_672, "internimage_h": 1_073_122_480}
    # T..XL head: conv_head (1x1 conv C4 -> 1.5 C4, no bias; BatchNorm) + Linear(1.5 C4, 1000)
    feat = 64 * 8
    wide = int(feat * 1.5)
    head_t = feat * wide + 2 * wide + wide * 1000 + 1000
    # H head (use_clip_projector): dcnv3_head_x4 1x1 conv C4 -> 1024*4, dcnv3_head_x3 1x1 conv
    # C3 -> 1024, attention pooling (3 LNs, q/k/v 1024x1024 without bias + q/k/v biases, proj
    # 1024 -> 768), fc_norm LN(768), Linear(768, 1000)
    c4, c3 = 320 * 8, 320 * 4
    head_h = c4 * 4096 + 4096 + c3 * 1024 + 1024
    head_h += 3 * 2 * 1024 + 3 * 1024 * 1024 + 3 * 1024 + 1024 * 768 + 768 + 2 * 768
    head_h += 768 * 1000 + 1000
    assert abs(counts["internimage_t"] + head_t - 30e6) / 30e6 < 0.01  # 29.92M
    assert abs(counts["internimage_h"] + head_h - 1.08e9) / 1.08e9 < 0.01  # 1.0896B


def test_offset_and_mask_linears_of_the_last_stage() -> None:
    """CPAL's LoRA targets: ``levels.3.blocks.*.dcn.offset`` / ``.mask`` are nn.Linear."""
    backbone = tiny("h-res-post-norm", randomise=False, depths=(1, 1, 2, 3))
    modules = dict(backbone.named_modules())
    for j in range(3):
        offset, mask = (
            modules[f"levels.3.blocks.{j}.dcn.offset"],
            modules[f"levels.3.blocks.{j}.dcn.mask"],
        )
        assert type(offset) is nn.Linear and type(mask) is nn.Linear
        assert (offset.in_features, offset.out_features) == (128, 8 * 9 * 2)
        assert (mask.in_features, mask.out_features) == (128, 8 * 9)
        assert modules[f"levels.3.blocks.{j}"] is backbone.blocks(3)[j]


def test_construction_and_factory() -> None:
    spec = ModelSpec("cpal", 4, 3, 1, backbone="internimage_h", drop_path_rate=0.5,
                     kwargs={"backbone_kwargs": {**TINY, "depths": (1, 1, 6, 1)}})  # fmt: skip
    backbone = build_backbone(spec)
    assert isinstance(backbone, InternImageBackbone) and backbone.name == "internimage_h"
    assert [(s.channels, s.reduction, s.depth) for s in backbone.stages] == [
        (16, 4, 1), (32, 8, 1), (64, 16, 6), (128, 32, 1)]  # fmt: skip
    assert backbone.stride == 32 and backbone.reads_output and backbone.splits_blocks
    assert not backbone.accepts_extra_tokens
    assert backbone.blocks(3)[0].drop_path.drop_prob == pytest.approx(0.5)  # linear ramp
    assert isinstance(backbone.blocks(0)[0].drop_path, nn.Identity)  # rate 0 at the first
    level = backbone.levels[2]  # H's ids kept as the authors do: only block 5 exists here
    assert level.post_norm_block_ids == [5, 11, 17, 23, 29] and len(level.post_norms) == 5
    assert [level.block_post_norm(j) is not None for j in range(6)] == [False] * 5 + [True]
    assert backbone.stage_input_channels() == [16, 32, 64, 128]
    assert backbone.embedding() is backbone.patch_embed
    post = tiny("s-postnorm-layer-scale", randomise=False)
    assert post.output_norm(0) is None and backbone.output_norm(0) is not None


# ---------------------------------------------------------------------- walk, halves
@pytest.mark.parametrize("kind", list(KINDS))
def test_walk_equals_the_plain_forward(kind: str) -> None:
    backbone = tiny(kind)
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps, ref = walk(backbone, image), backbone.features(image)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6),
                                              (2, 128, 2, 3)]  # fmt: skip
    for m, r in zip(maps, ref):
        assert torch.allclose(m, r, atol=1e-5)


def test_odd_size_gives_the_maps_of_the_zero_padded_input() -> None:
    backbone = tiny("h-res-post-norm")
    image = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        maps = walk(backbone, image)
        ref = backbone.features(F.pad(image, (0, 26, 0, 14)))  # to 64 x 96
    for m, r in zip(maps, ref):
        assert m.shape == r.shape and torch.allclose(m, r, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_block_halves_equal_the_whole_block(kind: str) -> None:
    """mixer then mlp = the authors' block forward, followed by the level-2 post-norm after
    the blocks listed (H/G)."""
    backbone = tiny(kind)
    level = backbone.levels[2]
    h, w, c = 4, 6, 64
    for j, block in enumerate(level.blocks):
        grid = torch.randn(2, h, w, c)
        state = StreamState(grid.reshape(2, h * w, c), (h, w))
        with torch.no_grad():
            mixed = backbone.mixer(2, j, state)
            halves = backbone.mlp(2, j, mixed)
            ref = block(grid)
            ids = level.post_norm_block_ids or []
            if j in ids:
                ref = level.post_norms[ids.index(j)](ref)
            whole = backbone.run_block(2, j, state)
        assert mixed.hw == (h, w) and not torch.allclose(mixed.data, state.data)
        assert torch.allclose(halves.data, ref.reshape(2, h * w, c), atol=1e-5)
        assert torch.equal(whole.data, halves.data)
    if kind.startswith(("h", "g")):
        assert level.post_norm_block_ids == [1, 3]


def test_stage_output_and_next_stage() -> None:
    backbone = tiny("t-prenorm")
    state = backbone.embed(torch.randn(1, 3, 64, 64))
    assert state.is_tokens and state.data.shape == (1, 256, 16) and state.hw == (16, 16)
    with pytest.raises(ValueError, match="output map"):
        backbone.next_stage(0, state)
    assert backbone.next_stage(3, state) is state  # nothing after the last stage
    out = backbone.stage_output(0, state)
    norm = backbone.levels[0].norm
    with torch.no_grad():
        ref = norm(state.data.reshape(1, 16, 16, 16)).permute(0, 3, 1, 2)
        nxt = backbone.next_stage(0, backbone.continue_from(0, state, out, 2 * out))
        down = backbone.levels[0].downsample((2 * out).permute(0, 2, 3, 1))
    assert torch.allclose(out, ref)
    assert nxt.hw == (8, 8) and torch.allclose(nxt.data, down.reshape(1, 64, 32))  # rewritten
    prompted = state.with_extra(torch.zeros(1, 2, 16))
    for call in (backbone.mixer, backbone.mlp, backbone.run_block):
        with pytest.raises(BlockSplitError, match="extra"):
            call(0, 0, prompted)


def test_parameter_depths() -> None:
    backbone = tiny("h-res-post-norm", randomise=False, depths=(2, 1, 4, 2))
    depths, total = backbone.parameter_depths()
    assert total == 9 and set(depths) == {n for n, _ in backbone.named_parameters()}
    last = [2, 3, 7, 9]
    for name, depth in depths.items():
        parts = name.split(".")
        if parts[0] == "patch_embed":
            assert depth == 0, name
        elif parts[2] == "blocks":
            stage, j = int(parts[1]), int(parts[3])
            assert depth == (last[stage - 1] if stage else 0) + j + 1, name
        elif parts[2] == "downsample":
            assert depth == last[int(parts[1])], name  # the depth before the next stage
        else:
            assert parts[2] in ("norm", "post_norms"), name
            assert depth == last[int(parts[1])], name


# ---------------------------------------------------------------------- modes
def test_stochastic_depth_mode() -> None:
    backbone = tiny("h-res-post-norm", drop_path_rate=0.5)
    drops = [m for m in backbone.modules() if isinstance(m, DropPath)]
    assert len(drops) == 6  # 7 blocks, the first one's rate is 0 (the authors' linear rule)
    backbone.set_mode("stochastic_depth")
    backbone.train()
    assert all(m.training for m in drops)
    assert not any(m.training for m in backbone.modules() if not isinstance(m, DropPath))
    assert not any(p.requires_grad for p in backbone.parameters())
    image = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        assert not torch.allclose(walk(backbone, image)[-1], walk(backbone, image)[-1])
        backbone.eval()
        assert not any(m.training for m in drops)
        assert torch.equal(walk(backbone, image)[-1], walk(backbone, image)[-1])
    backbone.set_mode("frozen")
    backbone.train()
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())


def test_trainable_mode() -> None:
    backbone = tiny("t-prenorm", drop_path_rate=0.1)
    backbone.set_mode("trainable")
    backbone.train()
    assert all(p.requires_grad for p in backbone.parameters())
    walk(backbone, torch.randn(2, 3, 64, 64))[-1].sum().backward()
    assert backbone.patch_embed.conv1.weight.grad is not None
    assert backbone.levels[3].blocks[0].dcn.offset.weight.grad is not None


# ---------------------------------------------------------------------- weights
def with_head(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A tiny model's tensors as an official classification checkpoint: plus its head."""
    out = {k: v.clone() for k, v in sd.items()}
    out["conv_head.0.weight"] = torch.randn(192, 128, 1, 1)
    out["conv_head.1.running_mean"] = torch.zeros(192)
    out["head.weight"], out["head.bias"] = torch.randn(10, 192), torch.randn(10)
    return out


@pytest.mark.parametrize("layout", ["classification", "plain-safetensors", "mmseg"])
@pytest.mark.parametrize("kind", ["t-prenorm", "h-res-post-norm"])
def test_saved_layouts_load_back_exactly(layout: str, kind: str, tmp_path: Path) -> None:
    src = tiny(kind, seed=1)
    sd = src.state_dict()
    if layout == "classification":
        path = tmp_path / "internimage.pth"
        torch.save({"model": with_head(sd)}, path)
    elif layout == "plain-safetensors":
        path = tmp_path / "internimage.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        weights = {f"backbone.{k}": v.clone() for k, v in sd.items()}
        weights["decode_head.conv_seg.weight"] = torch.randn(6, 64, 1, 1)
        path = tmp_path / "upernet_internimage.pth"
        torch.save({"meta": {"iter": 160000}, "state_dict": weights}, path)
    dst = tiny(kind, seed=2)
    report = load_internimage_weights(dst, path)
    now = dst.state_dict()
    assert now.keys() == sd.keys()
    for k in sd:
        assert torch.equal(now[k], sd[k]), k
    assert report.loaded == len(sd) and report.missing == []
    dropped = {"classification": ["conv_head.0.weight", "conv_head.1.running_mean",
                                  "head.weight", "head.bias"],
               "plain-safetensors": [], "mmseg": ["decode_head.conv_seg.weight"]}  # fmt: skip
    assert report.unexpected == dropped[layout]
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(walk(dst, image), walk(src, image)):
            assert torch.equal(a, b)


def test_refuses_other_architectures_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(tiny("t-prenorm", seed=1).state_dict(), path)
    with pytest.raises(ValueError, match=r"channels 16, depths \(1, 1, 2, 1\).*channels 32"):
        load_internimage_weights(tiny("t-prenorm", randomise=False, channels=32), path)
    seg = tmp_path / "seg.pth"  # a T segmentation checkpoint: layer scale 1.0, gammas trained
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in
                               tiny("t-seg-layer-scale", seed=1).state_dict().items()}}, seg)  # fmt: skip
    with pytest.raises(ValueError, match="layer_scale=1.0"):
        load_internimage_weights(tiny("t-prenorm", randomise=False), seg)
    report = load_internimage_weights(tiny("t-seg-layer-scale", randomise=False), seg)
    assert report.missing == [] and report.unexpected == []
    with pytest.raises(ValueError, match="not an InternImage checkpoint"):
        torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}}, path)
        load_internimage_weights(tiny(randomise=False), path)


def test_hub_names_offline_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match="Fix: download https://huggingface.co/"):
        load_internimage_weights(tiny(randomise=False), "internimage_t_1k_224")
    assert time.monotonic() - start < 5
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_internimage_weights(tiny(randomise=False), tmp_path / "missing.pth")
    with pytest.raises(WeightsUnavailable, match="official InternImage checkpoint name"):
        load_internimage_weights(tiny(randomise=False), "internimage_t_in1k")


def test_factory_loads_local_files_and_warns_on_hub_names_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = tiny("h-res-post-norm", seed=1)
    path = tmp_path / "internimage_h.pth"
    torch.save({"model": with_head(src.state_dict())}, path)
    kwargs = {"backbone_kwargs": {**TINY, **KINDS["h-res-post-norm"][1]}}
    spec = ModelSpec("cpal", 6, 3, 1, backbone="internimage_h", weights=str(path), kwargs=kwargs)
    backbone = build_backbone(spec)
    for k, v in src.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = dataclasses.replace(spec, weights="internimage_h_jointto22k_384")
    with pytest.warns(UserWarning, match="BACKBONE WEIGHTS NOT LOADED"):
        build_backbone(hub)
    with pytest.raises(WeightsError, match="internimage_h_jointto22k_384"):
        build_backbone(dataclasses.replace(hub, weights_required=True))


# ---------------------------------------------------------------------- engine
class Head(Recipe):
    """Sums the streams; a 1x1 conv head on the last map (as tests/models/test_engine_v2.py)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cls = nn.Conv2d(dim, 2, 1)

    def decode(self, fused, rgb, x, size):
        return nn.functional.interpolate(self.cls(fused[-1]), size=size)


class Halves(Head):
    """Runs every block through its two halves on both streams, adding a trainable scalar
    after each half of the X stream (where CPAL's MCP prompts go)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def in_block(self, backbone, stage, index, r, x):
        r = backbone.mlp(stage, index, backbone.mixer(stage, index, r, "rgb"), "rgb")
        x = backbone.mixer(stage, index, x, "x")
        x = x.with_patches(x.patches() + self.bias)
        x = backbone.mlp(stage, index, x, "x")
        return r, x.with_patches(x.patches() + self.bias)


@pytest.mark.parametrize("recipe", [Head, Halves])
def test_engine_runs_end_to_end_at_an_odd_size(recipe: type[Head]) -> None:
    backbone = tiny("h-res-post-norm")
    engine = DualStreamEngine(backbone, recipe(128))
    rgb, x = torch.randn(2, 3, 50, 70), torch.randn(2, 3, 50, 70)
    out = engine(rgb, x)
    assert out.shape == (2, 2, 50, 70)
    out.sum().backward()
    assert engine.recipe.cls.weight.grad is not None
    if recipe is Halves:
        assert engine.recipe.bias.grad is not None
    assert all(p.grad is None for p in backbone.parameters())
