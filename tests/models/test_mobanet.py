"""MoBaNet on the engine: X embedding copy, CPIA forms, DGFM at init, outputs."""

import pytest
import torch

from rsfusion.models import ModelSpec, build_model
from rsfusion.models.base import count_parameters

KW = {"backbone_kwargs": {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 56},
      "proj_dim": 16, "head_channels": 8}  # fmt: skip


def _model(**extra):
    torch.manual_seed(0)
    spec = ModelSpec("mobanet", 6, 3, 1, backbone="vit_small_patch14_dinov2",
                     kwargs={**KW, **extra})  # fmt: skip
    return build_model(spec)


def test_x_embedding_is_a_trainable_copy_of_the_rgb_one():
    model = _model()
    rgb_embed = model.backbone.vit.patch_embed.proj.weight
    x_embed = model.recipe.x_embed.proj.weight
    assert torch.equal(rgb_embed, x_embed) and x_embed.data_ptr() != rgb_embed.data_ptr()
    assert x_embed.requires_grad and not rgb_embed.requires_grad


def test_training_returns_main_and_aux_eval_returns_logits():
    model = _model().train()
    out = model(torch.rand(2, 3, 30, 44), torch.rand(2, 1, 30, 44))
    assert set(out["aux"]) == {"rgb", "x"}
    assert out["out"].shape == out["aux"]["x"].shape == (2, 6, 30, 44)
    model.eval()
    assert model(torch.rand(1, 3, 30, 44), torch.rand(1, 1, 30, 44)).shape == (1, 6, 30, 44)


def test_dsm_changes_the_prediction_and_dgfm_gate_starts_at_half():
    model = _model().eval()
    rgb = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        a = model(rgb, torch.zeros(1, 1, 28, 28))
        b = model(rgb, torch.ones(1, 1, 28, 28))
        r, s = torch.rand(1, 32, 2, 2), torch.rand(1, 32, 2, 2)
        assert torch.allclose(model.recipe.dgfm[0].gate(r, s), torch.full_like(r, 0.5))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cpia", ["prompt", "adapter"])
def test_both_cpia_forms_train_and_count_parameters(cpia):
    model = _model(cpia=cpia)
    total, trainable = count_parameters(model)
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert total - trainable == frozen
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".adapters." in n for n in names) == (cpia == "adapter")
    out = model.train()(torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28))
    out["out"].mean().backward()
    assert model.recipe.prompts[0].mix.weight.grad is not None


def test_backbone_weights_from_a_local_file_or_a_clear_error(tmp_path):
    from rsfusion.errors import WeightsError
    from rsfusion.models.backbones.weights import weights_digest

    donor = _model()
    path = tmp_path / "vit.pth"
    torch.save(donor.backbone.vit.state_dict(), path)
    torch.manual_seed(123)  # a different random init, then the file's weights
    spec = ModelSpec("mobanet", 6, 3, 1, backbone="vit_small_patch14_dinov2", kwargs=KW,
                     weights=str(path))  # fmt: skip
    model = build_model(spec)
    assert weights_digest(model.backbone.vit) == weights_digest(donor.backbone.vit)
    missing = ModelSpec("mobanet", 6, 3, 1, backbone="vit_small_patch14_dinov2", kwargs=KW,
                        weights=str(tmp_path / "nope.pth"))  # fmt: skip
    with pytest.raises(WeightsError, match="nope.pth: no such file"):
        build_model(missing)
    hub = ModelSpec("mobanet", 6, 3, 1, backbone="vit_small_patch14_dinov2", kwargs=KW,
                    weights="vit_small_patch14_dinov2.lvd142m", weights_required=True)  # fmt: skip
    with pytest.raises(WeightsError, match="model.weights"):
        build_model(hub)


def test_cnn_backbone_with_real_lite0_weights_stage_level_cpia():
    from rsfusion.models.mobanet import LITE0_WEIGHTS

    spec = ModelSpec("mobanet", 6, 3, 1, backbone="tf_efficientnet_lite0", weights=LITE0_WEIGHTS,
                     kwargs={"proj_dim": 16, "head_channels": 8})  # fmt: skip
    model = build_model(spec)
    stem = model.backbone.embedding()[0].weight
    assert torch.equal(model.recipe.x_embed[0].weight, stem)  # a copy of the pre-trained stem
    assert abs(float(stem.std()) - 0.0) > 1e-3
    # prompts sized by the channels entering each stage: stem 32, then 16, 24, 40, 112
    assert [p.down_rgb.in_features for p in model.recipe.prompts] == [32, 16, 24, 40, 112]
    out = model.train()(torch.rand(2, 3, 70, 90), torch.rand(2, 1, 70, 90))
    assert out["out"].shape == (2, 6, 70, 90)
    bad = ModelSpec("mobanet", 6, 3, 1, backbone="tf_efficientnet_lite0",
                    kwargs={"cpia": "adapter", "proj_dim": 16, "head_channels": 8})  # fmt: skip
    with pytest.raises(ValueError, match="constant width"):
        build_model(bad)
