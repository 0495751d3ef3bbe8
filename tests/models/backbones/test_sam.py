"""SAM's image encoder (timm samvit) as an engine backbone: stages, halves, weights."""

from __future__ import annotations

import pytest
import torch

from rsfusion.errors import WeightsError
from rsfusion.models import ModelSpec, build_model
from rsfusion.models.backbones.sam import TINY_SAM, SamBackbone, load_sam_weights
from rsfusion.models.backbones.weights import weights_digest


def _sam(seed: int = 0, **kw) -> SamBackbone:
    torch.manual_seed(seed)
    backbone = SamBackbone("samvit_base_patch16", **{**TINY_SAM, **kw})
    with torch.no_grad():  # SAM initialises its relative-position tables at 0: make them count
        for name, p in backbone.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    return backbone.eval()


def test_stages_end_at_the_global_attention_blocks():
    sam = _sam()
    assert sam.taps == (1, 3, 5, 7) and [s.depth for s in sam.stages] == [2, 2, 2, 2]
    windowed = [b.window_size for b in sam.sam.blocks]
    assert windowed == [4, 0, 4, 0, 4, 0, 4, 0]
    assert sam.stride == 16 and all(s.reduction == 16 for s in sam.stages)
    assert SamBackbone("samvit_base_patch16", taps=(3, 7), **TINY_SAM).taps == (3, 7)
    with pytest.raises(ValueError, match="taps"):
        SamBackbone("samvit_base_patch16", taps=(3, 9), **TINY_SAM)


def test_walking_the_stages_equals_timms_own_forward():
    sam = _sam()
    image = torch.rand(2, 3, 96, 80)  # a 6 x 5 grid: windows of 4 are padded inside the blocks
    with torch.no_grad():
        want = sam.sam.forward_intermediates(image, indices=list(sam.taps), intermediates_only=True)
        state, got = sam.embed(image), []
        for i in range(len(sam.stages)):
            for j in range(len(sam.blocks(i))):
                state = sam.run_block(i, j, state)
            got.append(sam.stage_output(i, state))
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g.shape == w.shape == (2, 32, 6, 5)
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("stage", [0, 1])  # block 0 of a stage is windowed, block 1 global
def test_attention_and_mlp_halves_make_the_whole_block(stage):
    sam = _sam()
    with torch.no_grad():
        state = sam.embed(torch.rand(1, 3, 90, 80))  # padded to 96 x 80: a 6 x 5 grid
        for j in (0, 1):
            whole = sam.run_block(stage, j, state)
            halves = sam.mlp(stage, j, sam.mixer(stage, j, state))
            torch.testing.assert_close(halves.data, whole.data)
            assert not torch.allclose(whole.data, state.data)


def test_position_embedding_follows_the_grid_and_padding():
    sam = _sam()
    with torch.no_grad():
        a = sam.embed(torch.rand(1, 3, 33, 47))
        b = sam.embed(torch.zeros(1, 3, 48, 48))
    assert a.hw == (3, 3) and a.data.shape == (1, 9, 32) and a.prefix == 0
    # a zero image embeds to the patch bias plus the resampled position embedding
    pos = torch.nn.functional.interpolate(
        sam.sam.pos_embed.permute(0, 3, 1, 2), size=(3, 3), mode="bicubic", antialias=True
    )
    bias = sam.sam.patch_embed.proj.bias
    want = pos.flatten(2).transpose(1, 2) + bias
    torch.testing.assert_close(b.data, want, atol=1e-5, rtol=1e-5)


def _release_file(backbone: SamBackbone, path):
    """``backbone``'s weights in the SAM release layout: ``image_encoder.*`` keys, the MLP as
    ``lin1`` / ``lin2``, a neck, and prompt-encoder / mask-decoder tensors to ignore."""
    state = {}
    for key, value in backbone.sam.state_dict().items():
        state["image_encoder." + key.replace(".mlp.fc", ".mlp.lin")] = value.clone()
    state["image_encoder.neck.0.weight"] = torch.zeros(8, 32, 1, 1)
    state["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 8)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    torch.save(state, path)


def test_weights_from_a_sam_release_file(tmp_path):
    donor = _sam(seed=1)
    path = tmp_path / "sam_vit_tiny.pth"
    _release_file(donor, path)
    model = _sam(seed=2)
    assert weights_digest(model.sam) != weights_digest(donor.sam)
    report = load_sam_weights(model, path)
    assert weights_digest(model.sam) == weights_digest(donor.sam)
    assert report.loaded == len(donor.sam.state_dict()) and not report.resized
    assert any(k.startswith("prompt_encoder.") for k in report.unexpected)
    assert "image_encoder.neck.0.weight" in report.unexpected


def test_weights_for_another_input_size_are_resampled(tmp_path):
    donor = _sam(seed=1)  # built for 64 px: a 4 x 4 position grid, global tables of 7
    path = tmp_path / "sam.pth"
    _release_file(donor, path)
    model = _sam(seed=2, img_size=128)  # 8 x 8 grid, global tables of 15
    report = load_sam_weights(model, path)
    assert model.sam.pos_embed.shape == (1, 8, 8, 32)
    assert any("pos_embed" in line for line in report.resized)
    assert any("blocks.1.attn.rel_pos_h: 7 -> 15" in line for line in report.resized)
    windowed = model.sam.blocks[0].attn.rel_pos_h  # window tables keep their size: copied
    assert torch.equal(windowed, donor.sam.blocks[0].attn.rel_pos_h)


def test_weights_that_do_not_fit_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "wide.pth"
    _release_file(_sam(embed_dim=64), path)
    with pytest.raises(WeightsError, match="width 64"):
        load_sam_weights(_sam(), path)
    kwargs = {"backbone_kwargs": TINY_SAM, "cpia": "adapter", "proj_dim": 8, "head_channels": 8}
    missing = ModelSpec("mobanet", 6, 3, 1, backbone="samvit_base_patch16", kwargs=kwargs,
                        weights=str(tmp_path / "nope.pth"))  # fmt: skip
    with pytest.raises(WeightsError, match="nope.pth: no such file"):
        build_model(missing)
    hub = ModelSpec("mobanet", 6, 3, 1, backbone="samvit_base_patch16", kwargs=kwargs,
                    weights="samvit_base_patch16.sa1b", weights_required=True)  # fmt: skip
    with pytest.raises(WeightsError, match="model.weights"):
        build_model(hub)


def test_mobanet_on_sam_from_a_file_is_frozen_and_runs(tmp_path):
    donor = _sam(seed=1)
    path = tmp_path / "sam.pth"
    _release_file(donor, path)
    kwargs = {"backbone_kwargs": TINY_SAM, "cpia": "adapter", "proj_dim": 8, "head_channels": 8}
    spec = ModelSpec("mobanet", 6, 3, 1, backbone="samvit_base_patch16", kwargs=kwargs,
                     weights=str(path))  # fmt: skip
    model = build_model(spec)
    assert weights_digest(model.backbone.sam) == weights_digest(donor.sam)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    out = model.train()(torch.rand(2, 3, 40, 56), torch.rand(2, 1, 40, 56))
    assert out["out"].shape == (2, 6, 40, 56)
    depths, total = model.parameter_depths()
    assert total == 8 and depths["backbone.sam.pos_embed"] == 0
    assert depths["recipe.adapters.x.2.1.up.weight"] == 6  # stage 3, block 2: the 6th block
    assert depths["recipe.block_prompts.2.1.mix.weight"] == 6  # the CPIA of that block
