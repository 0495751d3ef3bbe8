"""The MiT (SegFormer) engine adapter: walk vs smp, prompt tokens kept off the spatial operators,
backbone modes, layer depths, and an end-to-end dual-stream run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from rsfusion.models.backbones.base import StreamState
from rsfusion.models.backbones.factory import build_backbone
from rsfusion.models.backbones.mit import MiTBackbone, mit_settings
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import DualStreamEngine, Recipe, StageOutput

KW: dict[str, Any] = {"embed_dims": (8, 16, 32, 64), "num_heads": (1, 2, 4, 8)}


def tiny(seed: int = 0, depths: tuple[int, ...] = (1, 2, 1, 1), **kwargs: Any) -> MiTBackbone:
    """A MiT-B0 8..64 wide with every tensor random (norms and biases included), frozen."""
    torch.manual_seed(seed)
    backbone = MiTBackbone("mit_b0", depths=depths, **{**KW, **kwargs})
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_(0, 0.3)
    backbone.set_mode("frozen")
    return backbone


def walk(backbone: MiTBackbone, image: Tensor) -> list[Tensor]:
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


def prompted(backbone: MiTBackbone, stage: int, m: int = 3, seed: int = 1) -> StreamState:
    """A token state entering ``stage`` (64x96 input) with ``m`` random prompt tokens appended."""
    torch.manual_seed(seed)
    state = backbone.embed(torch.randn(2, 3, 64, 96))
    for i in range(stage):
        for j in range(len(backbone.blocks(i))):
            state = backbone.run_block(i, j, state)
        out = backbone.stage_output(i, state)
        state = backbone.next_stage(i, backbone.continue_from(i, state, out, None))
    prompts = torch.randn(2, m, backbone.stages[stage].channels)
    return state.with_extra(prompts)


class Spy:
    """Records the input shapes of a module's calls."""

    def __init__(self, module: nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.shapes.append(tuple(args[0].shape))


# ---------------------------------------------------------------------- construction, walk
def test_settings_are_segformers():
    b0, b5 = mit_settings("mit_b0"), mit_settings("mit_b5")
    assert b0["embed_dims"] == [32, 64, 160, 256] and b0["depths"] == [2, 2, 2, 2]
    assert b5["embed_dims"] == [64, 128, 320, 512] and b5["depths"] == [3, 6, 40, 3]
    assert [mit_settings(f"mit_b{i}")["depths"] for i in (1, 2, 3, 4)] == [
        [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 18, 3], [3, 8, 27, 3]]  # fmt: skip
    for s in (b0, b5):
        assert s["num_heads"] == [1, 2, 5, 8] and s["sr_ratios"] == [8, 4, 2, 1]
        assert s["mlp_ratios"] == [4, 4, 4, 4] and s["qkv_bias"] is True
    backbone = MiTBackbone("mit_b0", depths=(1, 1, 1, 1))
    assert [(s.channels, s.reduction, s.depth) for s in backbone.stages] == [
        (32, 4, 1), (64, 8, 1), (160, 16, 1), (256, 32, 1)]  # fmt: skip
    assert backbone.mit.norm1.eps == 1e-6 and backbone.blocks(0)[0].attn.q.bias is not None
    assert backbone.blocks(2)[0].mlp.fc1.out_features == 4 * 160
    assert backbone.stride == 32 and backbone.reads_output and backbone.accepts_extra_tokens
    assert backbone.stage_input_channels() == [32, 64, 160, 256]
    with pytest.raises(ValueError, match="unknown MiT"):
        MiTBackbone("mit_b9")


def test_factory_builds_mit_names():
    spec = ModelSpec("segrgbx", 4, 3, 1, backbone="mit_b0", drop_path_rate=0.2,
                     kwargs={"backbone_kwargs": {"depths": (1, 1, 1, 1)}})  # fmt: skip
    backbone = build_backbone(spec)
    assert isinstance(backbone, MiTBackbone) and [s.depth for s in backbone.stages] == [1] * 4
    assert backbone.blocks(3)[0].drop_path.drop_prob == pytest.approx(0.2)


def test_walk_reproduces_smp_forward_features():
    backbone = tiny()
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps, ref = walk(backbone, image), backbone.mit.forward_features(image)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6),
                                              (2, 64, 2, 3)]  # fmt: skip
    for m, r in zip(maps, ref):
        assert torch.allclose(m, r, atol=1e-5)


def test_odd_size_gives_the_maps_of_the_zero_padded_input():
    backbone = tiny()
    image = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        maps = walk(backbone, image)
        ref = backbone.mit.forward_features(F.pad(image, (0, 26, 0, 14)))  # to 64 x 96
    for m, r in zip(maps, ref):
        assert m.shape == r.shape and torch.allclose(m, r, atol=1e-5)


@pytest.mark.parametrize(("stage", "h", "w"), [(0, 32, 48), (3, 4, 6)])  # sr 8 and sr 1
def test_block_halves_equal_smp_block(stage, h, w):
    backbone = tiny()
    block = backbone.blocks(stage)[0]
    c = backbone.stages[stage].channels
    grid = torch.randn(2, c, h, w)
    state = StreamState(grid.flatten(2).transpose(1, 2), (h, w))
    with torch.no_grad():
        halves = backbone.mlp(stage, 0, backbone.mixer(stage, 0, state))
        ref = block(grid).flatten(2).transpose(1, 2)
    assert torch.allclose(halves.data, ref, atol=1e-6)


def test_next_stage_needs_the_output_map():
    backbone = tiny()
    state = backbone.embed(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="output map"):
        backbone.next_stage(0, state)
    assert backbone.next_stage(3, state) is state  # nothing after the last stage


# ---------------------------------------------------------------------- prompt tokens
def test_mix_ffn_depthwise_conv_sees_only_the_patch_grid():
    backbone = tiny()
    state = prompted(backbone, 0, m=3)
    block = backbone.blocks(0)[0]
    mlp = block.mlp
    spy = Spy(mlp.dwconv.dwconv)
    with torch.no_grad():
        out = backbone.mlp(0, 0, state)
        t = state.data
        hidden = mlp.fc1(block.norm2(t))
        n = state.hw[0] * state.hw[1]
        grid = hidden[:, :n].transpose(1, 2).reshape(2, -1, *state.hw)
        conv = mlp.dwconv.dwconv(grid).flatten(2).transpose(1, 2)
        hidden = torch.cat([conv, hidden[:, n:]], dim=1)  # prompts: no depthwise conv
        ref = t + mlp.fc2(mlp.act(hidden))
        plain = backbone.mlp(0, 0, StreamState(state.patches(), state.hw))
    spy.handle.remove()
    assert out.extra == 3 and out.data.shape == t.shape
    assert torch.allclose(out.data, ref, atol=1e-6)
    assert spy.shapes[0] == (2, mlp.fc1.out_features, 16, 24)  # the patch grid, no prompts
    assert torch.allclose(out.patches(), plain.data, atol=1e-6)  # per token besides the conv


@pytest.mark.parametrize("stage", [0, 1, 3])  # sr 8, 4, 1
def test_attention_keys_are_reduced_patches_plus_unreduced_prompts(stage):
    backbone = tiny()
    m = 3
    state = prompted(backbone, stage, m=m)
    attn = backbone.blocks(stage)[0].attn
    norm1 = backbone.blocks(stage)[0].norm1
    kv_spy = Spy(attn.kv)
    with torch.no_grad():
        out = backbone.mixer(stage, 0, state)
        x = norm1(state.data)
        b, n, c = x.shape
        h, w = state.hw
        patches, prompts = x[:, : h * w], x[:, h * w :]
        if attn.sr_ratio > 1:
            grid = attn.sr(patches.transpose(1, 2).reshape(b, c, h, w))
            patches = attn.norm(grid.flatten(2).transpose(1, 2))
        k, v = attn.kv(torch.cat([patches, prompts], dim=1)).chunk(2, dim=-1)
        heads = attn.num_heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(attn.q(x)), split(k), split(v))
        ref = state.data + attn.proj(att.transpose(1, 2).reshape(b, n, c))
    kv_spy.handle.remove()
    r = attn.sr_ratio
    assert kv_spy.shapes[0] == (2, (h // r) * (w // r) + m, c)  # the adapter's call
    assert out.extra == m and torch.allclose(out.data, ref, atol=1e-5)


def test_prompts_change_patch_outputs_but_not_the_spatial_grids():
    backbone = tiny()
    state = prompted(backbone, 0, m=4)
    other = state.with_data(state.data.clone())
    other.data[:, -4:] = torch.randn(2, 4, 8)
    block = backbone.blocks(0)[0]
    sr, dw = Spy(block.attn.sr), Spy(block.mlp.dwconv.dwconv)
    with torch.no_grad():
        a, b = backbone.run_block(0, 0, state), backbone.run_block(0, 0, other)
    sr.handle.remove(), dw.handle.remove()
    assert not torch.allclose(a.patches(), b.patches(), atol=1e-4)  # attention sees prompts
    assert sr.shapes == [(2, 8, 16, 24)] * 2 and dw.shapes == [(2, 32, 16, 24)] * 2
    assert a.hw == state.hw and a.extra == 4 and a.data.shape == state.data.shape


def test_stage_output_drops_the_prompts():
    backbone = tiny()
    state = prompted(backbone, 1, m=2)
    with torch.no_grad():
        for j in range(len(backbone.blocks(1))):
            state = backbone.run_block(1, j, state)
        out = backbone.stage_output(1, state)
        by_hand = backbone.stage_output(1, StreamState(state.data[:, :-2], state.hw))
    assert out.shape == (2, 16, 8, 12) and torch.equal(out, by_hand)


# ---------------------------------------------------------------------- modes, depths
def test_stochastic_depth_mode():
    backbone = tiny(depths=(2, 2, 2, 2), drop_path_rate=0.5)
    drops = [m for m in backbone.modules() if isinstance(m, DropPath)]
    assert len(drops) == 7  # the first block's rate is 0 (SegFormer's linear rule)
    backbone.set_mode("stochastic_depth")
    backbone.train()
    assert all(m.training for m in drops)
    others = [m for m in backbone.modules() if not isinstance(m, DropPath)]
    assert not any(m.training for m in others)  # LayerNorms, dropouts, the backbone itself
    assert not any(p.requires_grad for p in backbone.parameters())
    image = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        first = walk(backbone, image)[-1]
        second = walk(backbone, image)[-1]
        assert not torch.allclose(first, second)
        backbone.eval()
        assert not any(m.training for m in drops)
        assert torch.equal(walk(backbone, image)[-1], walk(backbone, image)[-1])
    backbone.set_mode("frozen")
    backbone.train()
    assert not any(m.training for m in backbone.modules())


def test_trainable_mode():
    backbone = tiny(drop_path_rate=0.1)
    backbone.set_mode("trainable")
    backbone.train()
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(m.training for m in backbone.modules())
    walk(backbone, torch.randn(2, 3, 64, 64))[-1].sum().backward()
    assert backbone.mit.patch_embed1.proj.weight.grad is not None
    assert backbone.blocks(0)[0].attn.sr.weight.grad is not None


def test_parameter_depths():
    backbone = tiny(depths=(2, 1, 3, 2))
    depths, total = backbone.parameter_depths()
    assert total == 8
    assert set(depths) == {n for n, _ in backbone.named_parameters()}
    last = [2, 3, 6, 8]  # each stage's last block
    for name, depth in depths.items():
        parts = name.split(".")
        if parts[1] == "patch_embed1":
            assert depth == 0, name
        elif parts[1].startswith("patch_embed"):
            stage = int(parts[1][-1]) - 1
            assert depth == last[stage - 1], name  # the depth before the stage's first block
        elif parts[1].startswith("block"):
            stage, j = int(parts[1][-1]) - 1, int(parts[2])
            assert depth == (last[stage - 1] if stage else 0) + j + 1, name
        else:
            assert parts[1].startswith("norm"), name
            assert depth == last[int(parts[1][-1]) - 1], name


# ---------------------------------------------------------------------- engine
class Prompting(Recipe):
    """X embedded with a copy of patch_embed1; learned prompts appended before every stage;
    the stream maps summed; RGB continues from a rewritten (doubled) map after stage 0."""

    def __init__(self, backbone: MiTBackbone, m: int = 2) -> None:
        super().__init__()
        self.x_embed = self.copy_embedding(backbone)
        self.prompts = nn.ParameterList(
            nn.Parameter(torch.randn(1, m, s.channels)) for s in backbone.stages
        )
        self.cls = nn.Conv2d(backbone.stages[-1].channels, 3, 1)
        self.calls: list[tuple] = []

    def embed_x(self, backbone, x):
        return self.embed_x_copy(backbone, x, self.x_embed)

    def before_stage(self, stage, r, x):
        self.calls.append(("before", stage, r.hw))
        p = self.prompts[stage].expand(r.data.shape[0], -1, -1)
        return r.with_extra(p), x.with_extra(p)

    def in_block(self, backbone, stage, index, r, x):
        assert r.extra == x.extra == 2
        self.calls.append(("block", stage, index))
        r = backbone.mlp(stage, index, backbone.mixer(stage, index, r, "rgb"), "rgb")
        return r, backbone.run_block(stage, index, x, "x")

    def after_stage(self, stage, r, x):
        self.calls.append(("after", stage, tuple(r.shape), tuple(x.shape)))
        return StageOutput(r + x, rgb=2 * r) if stage == 0 else r + x

    def decode(self, fused, rgb, x, size):
        self.maps = rgb
        return F.interpolate(self.cls(fused[-1]), size=size, mode="bilinear")


def test_engine_runs_end_to_end():
    backbone = tiny(depths=(1, 1, 1, 1))
    recipe = Prompting(backbone)
    engine = DualStreamEngine(backbone, recipe)
    rgb, x = torch.randn(2, 3, 50, 70), torch.randn(2, 1, 50, 70)
    out = engine(rgb, x)
    assert out.shape == (2, 3, 50, 70)
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]
    expected = []
    for i, (h, w) in enumerate(grids):
        c = backbone.stages[i].channels
        expected += [
            ("before", i, (h, w)),
            ("block", i, 0),
            ("after", i, (2, c, h, w), (2, c, h, w)),
        ]
    assert recipe.calls == expected
    out.sum().backward()  # the recipe's parts train through the frozen backbone
    assert recipe.prompts[1].grad is not None and recipe.x_embed.proj.weight.grad is not None
    assert backbone.mit.patch_embed2.proj.weight.grad is None

    # RGB's stage 1 embeds the rewritten map: the prompts stay, the doubled map shows
    with torch.no_grad():
        r = backbone.embed(rgb).with_extra(recipe.prompts[0].expand(2, -1, -1))
        r = backbone.run_block(0, 0, r)
        first = backbone.stage_output(0, r)
        r = backbone.next_stage(0, backbone.continue_from(0, r, first, 2 * first))
        r = backbone.run_block(1, 0, r.with_extra(recipe.prompts[1].expand(2, -1, -1)))
        assert torch.allclose(recipe.maps[0], first, atol=1e-6)
        assert torch.allclose(recipe.maps[1], backbone.stage_output(1, r), atol=1e-5)
