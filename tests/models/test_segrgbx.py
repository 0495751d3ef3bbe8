"""SegRGB-X on the engine: every switch changes the built model, pairings route embeddings."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rsfusion.errors import BlockSplitError
from rsfusion.models.base import ModelSpec, SampleMeta, build_model, count_parameters
from rsfusion.models.fusion import DSRM, FFM, FRM
from rsfusion.models.peft.aligned_prompts import ModalityAlignedPrompts, paired_embeddings
from rsfusion.models.segrgbx import SegRGBX


def build(**kwargs: Any) -> Any:
    spec = ModelSpec(
        name="segrgbx", num_classes=5, rgb_channels=3, x_channels=3, backbone="mit_b0",
        backbone_mode="trainable", seed=0, kwargs={"head_channels": 16, **kwargs},
    )  # fmt: skip
    return build_model(spec)


@pytest.fixture(scope="module")
def full() -> Any:
    return build()


def test_default_parts(full: Any) -> None:
    recipe = full.recipe
    assert isinstance(recipe, SegRGBX)
    assert len(recipe.frm) == len(recipe.ffm) == 4
    assert all(isinstance(m, FRM) for m in recipe.frm)
    assert all(isinstance(m, FFM) for m in recipe.ffm)
    assert isinstance(recipe.dsrm, DSRM)
    assert recipe.maclip is None and recipe.modality_embed is not None  # MA-CLIP off here
    assert all(p.num_control == 4 and p.num_aligned == 4 for p in recipe.prompts)
    assert recipe.prompt_pairing == "rgb_dominant" and recipe.dsrm_pairing == "aligned"
    total, trainable = count_parameters(full)
    assert total == trainable  # trainable MiT, no frozen part without MA-CLIP


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"dsrm": False}, lambda r: r.dsrm is None),
        ({"control_prompts": 0}, lambda r: all(p.control is None for p in r.prompts)),
        ({"aligned_prompts": 0}, lambda r: all(len(p.aligned) == 0 for p in r.prompts)),
        ({"control_prompts": 0, "aligned_prompts": 0}, lambda r: r.prompts is None),
    ],
)
def test_switches_change_the_model(full: Any, kwargs: dict[str, Any], check: Any) -> None:
    model = build(**kwargs)
    assert check(model.recipe)
    assert count_parameters(model)[0] < count_parameters(full)[0]
    out = model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 5, 64, 64)


def test_prompts_are_extra_tokens_and_dropped(full: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    backbone = full.backbone
    run = backbone.run_block

    def spy(stage: int, index: int, state: Any, stream: str) -> Any:
        seen.append((state.extra, stage))
        return run(stage, index, state, stream)

    monkeypatch.setattr(backbone, "run_block", spy)
    full(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    blocks = sum(len(backbone.blocks(i)) for i in range(4))
    assert len(seen) == 2 * blocks  # every block of both streams
    assert all(extra == 8 for extra, _ in seen)  # 4 control + 4 aligned, afresh per block


def test_no_prompts_leaves_blocks_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(control_prompts=0, aligned_prompts=0)
    extras: list[int] = []
    run = model.backbone.run_block
    monkeypatch.setattr(
        model.backbone, "run_block",
        lambda i, j, s, stream: extras.append(s.extra) or run(i, j, s, stream),
    )  # fmt: skip
    model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert extras and set(extras) == {0}


@pytest.mark.parametrize(
    ("pairing", "expected"),
    [("rgb_dominant", ("r", "r")), ("aligned", ("r", "m")), ("cross_modal", ("m", "r"))],
)
def test_prompt_pairing_routes_embeddings(
    pairing: str, expected: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build(prompt_pairing=pairing, dsrm=False)
    recipe = model.recipe
    s_r, s_m = torch.full((1, 64), 1.0), torch.full((1, 64), 2.0)
    monkeypatch.setattr(recipe, "embeddings", lambda rgb, x, meta: (s_r, s_m))
    got: dict[str, float] = {}
    forward = ModalityAlignedPrompts.forward

    def spy(self: Any, embedding: Any, stream: str, batch: Any = None) -> Any:
        got[stream] = float(embedding[0, 0])
        return forward(self, embedding, stream, batch)

    monkeypatch.setattr(ModalityAlignedPrompts, "forward", spy)
    model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    names = {1.0: "r", 2.0: "m"}
    assert (names[got["rgb"]], names[got["x"]]) == expected


@pytest.mark.parametrize("pairing", ["aligned", "cross_modal", "rgb_dominant"])
def test_dsrm_pairing(pairing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(dsrm_pairing=pairing, control_prompts=0, aligned_prompts=0)
    s_r, s_m = torch.full((1, 64), 1.0), torch.full((1, 64), 2.0)
    monkeypatch.setattr(model.recipe, "embeddings", lambda rgb, x, meta: (s_r, s_m))
    calls: list[float] = []
    forward = DSRM.forward
    monkeypatch.setattr(
        DSRM, "forward", lambda self, f, e: calls.append(float(e[0, 0])) or forward(self, f, e)
    )
    model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert calls == [float(t[0, 0]) for t in paired_embeddings(pairing, s_r, s_m)]


def test_modality_selects_the_learnable_embedding(full: Any) -> None:
    """Without MA-CLIP the modality still reaches the model: other modality, other output."""
    full.eval()
    with torch.no_grad():
        for p in full.recipe.modality_embed.values():
            p.normal_()
        for m in full.recipe.dsrm.modules():  # DSRM starts as the identity: make it count
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(std=0.1)
        rgb, x = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
        depth = full(rgb, x, meta=SampleMeta.repeat(1, "nyudepthv2", "depth"))
        thermal = full(rgb, x, meta=SampleMeta.repeat(1, "mfnet", "thermal"))
        hha = full(rgb, x, meta=SampleMeta.repeat(1, "nyudepthv2", "hha"))  # depth's entry
    assert not torch.allclose(depth, thermal)
    assert torch.allclose(depth, hha)


def test_gradients_reach_every_part() -> None:
    model = build()
    model.train()
    out = model(torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64))  # a 1-channel X (DSM)
    out.square().mean().backward()
    recipe = model.recipe
    for name in ("prompts", "frm", "ffm", "head", "modality_embed"):
        grads = [p.grad for p in getattr(recipe, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert recipe.dsrm.out.weight.grad.abs().sum() > 0  # zero-initialised output projection


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="pairing"):
        build(prompt_pairing="both")
    spec = ModelSpec(name="segrgbx", num_classes=3, rgb_channels=3, x_channels=3,
                     backbone="resnet18", kwargs={"head_channels": 8})  # fmt: skip
    with pytest.raises(BlockSplitError, match="extra tokens"):
        build_model(spec)


@pytest.fixture(scope="module")
def maclip_file(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from rsfusion.models.maclip import MACLIP, build_clip, tiny_clip_config

    torch.manual_seed(0)
    cfg = tiny_clip_config()
    model = MACLIP(build_clip(cfg), cfg, ["depth", "thermal"], rank=4, alpha=4.0)
    with torch.no_grad():  # trained LoRAs: B non-zero, so the two modalities differ
        for name, p in model.named_parameters():
            if ".lora_b." in name:
                p.normal_(std=0.5)
    return model.save(tmp_path_factory.mktemp("maclip") / "maclip.pt")


def test_maclip_is_frozen_and_picks_the_lora_per_sample(maclip_file: Any) -> None:
    model = build(maclip=str(maclip_file))
    recipe = model.recipe
    assert recipe.modality_embed is None and recipe.embed_dim == recipe.maclip.embed_dim
    assert not any(p.requires_grad for p in recipe.maclip.parameters())
    total, trainable = count_parameters(model)
    assert total - trainable == count_parameters(recipe.maclip)[0] > 0
    model.train()
    assert not recipe.maclip.training  # frozen: stays in eval mode
    rgb, x = (
        torch.rand(1, 3, 64, 64).repeat(2, 1, 1, 1),
        torch.rand(1, 1, 64, 64).repeat(2, 1, 1, 1),
    )
    meta = SampleMeta(("nyudepthv2", "mfnet"), ("depth", "thermal"))
    s_r, s_m = recipe.embeddings(rgb, x, meta)
    assert not torch.allclose(s_m[0], s_m[1]) and not torch.allclose(s_r[0], s_r[1])
    model.eval()
    with torch.no_grad():
        out = model(rgb, x, meta=meta)
    assert not torch.allclose(out[0], out[1], atol=1e-6)  # same pixels, other LoRA, other output
    with pytest.raises(Exception, match="event"):  # no LoRA of that modality in the pool
        recipe.embeddings(rgb, x, SampleMeta.repeat(2, "deliver", "event"))
