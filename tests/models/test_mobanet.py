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
    assert any(".block_prompts." in n for n in names) == (cpia == "adapter")
    assert any(".prompts." in n and "block_" not in n for n in names) == (cpia == "prompt")
    out = model.train()(torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28))
    out["out"].mean().backward()
    cpia_part = model.recipe.prompts[0] if cpia == "prompt" else model.recipe.block_prompts[0][0]
    assert cpia_part.mix.weight.grad is not None


def _sam_model(**extra):
    from rsfusion.models.backbones.sam import TINY_SAM

    torch.manual_seed(0)
    # width 64: adapters of 4 hidden units (2 can all sit below the ReLU for a whole stream)
    sam = {**TINY_SAM, "embed_dim": 64}
    kwargs = {"backbone_kwargs": sam, "proj_dim": 16, "head_channels": 8, **extra}
    return build_model(ModelSpec("mobanet", 6, 3, 1, backbone="samvit_base_patch16", kwargs=kwargs))


def _cpia_gradients(model) -> dict[str, float]:
    """|grad| summed per CPIA parameter after one training step's backward; the zero-initialised
    adapter up-projections are moved off 0 first (at 0 no gradient reaches the prompts)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name and ".up." in name:
                p.normal_(0, 0.05)
    model.train()
    out = model(torch.rand(2, 3, 40, 44), torch.rand(2, 1, 40, 44))
    loss = out["out"].square().mean() + sum(a.square().mean() for a in out["aux"].values())
    loss.backward()
    return {
        n: float(p.grad.abs().sum()) if p.grad is not None else 0.0
        for n, p in model.named_parameters()
        if n.startswith(("recipe.prompts.", "recipe.block_prompts."))
    }


@pytest.mark.parametrize(
    "build", [lambda: _model(cpia="prompt"), lambda: _sam_model(cpia="adapter"),
              lambda: _model(cpia="adapter"), lambda: _sam_model(cpia="prompt")],
    ids=["vit-prompt", "sam-adapter", "vit-adapter", "sam-prompt"],
)  # fmt: skip
def test_every_cpia_parameter_receives_a_gradient(build):
    grads = _cpia_gradients(build())
    leaves = {n.rsplit(".", 1)[-1] for n in grads}
    assert {"gamma_rgb", "beta_rgb", "gamma_x", "beta_x"} <= leaves
    assert len(grads) >= 12 and all(g > 0 for g in grads.values()), [
        n for n, g in grads.items() if g == 0
    ]


def test_adapter_form_gives_each_block_its_own_prompt_from_that_blocks_outputs():
    """SAM path of the released code: block j runs on both streams, then block j's own CPIA
    turns the two outputs into per-modality prompts u + p_m, and each stream's adapter adds
    Adapter(t, prompt) to its tokens."""
    model = _sam_model(cpia="adapter").eval()
    recipe, backbone = model.recipe, model.backbone
    assert len(recipe.block_prompts) == 4 and [len(s) for s in recipe.block_prompts] == [2] * 4
    seen = {}

    def keep(stream):
        def hook(module, args, out):
            seen.setdefault(stream, (args, out))  # the first call: the eval forward

        return hook

    recipe.adapters["rgb"][1][1].register_forward_hook(keep("rgb"))
    recipe.adapters["x"][1][1].register_forward_hook(keep("x"))
    rgb, dsm = torch.rand(1, 3, 40, 44), torch.rand(1, 1, 40, 44)
    with torch.no_grad():
        model(rgb, dsm)
        r, x = backbone.embed(rgb), recipe.embed_x(backbone, dsm)
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            r, x = recipe.in_block(backbone, i, j, r, x) if (i, j) != (1, 1) else (r, x)
        r_out = backbone.run_block(1, 1, r, "rgb")
        x_out = backbone.run_block(1, 1, x, "x")
        p_rgb, p_x = recipe.block_prompts[1][1].stream_prompts(r_out.data, x_out.data)
    (t_rgb, prompt_rgb), _ = seen["rgb"]
    (t_x, prompt_x), _ = seen["x"]
    torch.testing.assert_close(t_rgb, r_out.data)
    torch.testing.assert_close(t_x, x_out.data)
    torch.testing.assert_close(prompt_rgb, p_rgb)
    torch.testing.assert_close(prompt_x, p_x)
    assert not torch.allclose(prompt_rgb, prompt_x)  # each modality its own gamma, beta


def test_stage_scoped_adapters_of_older_checkpoints_still_build_and_run():
    """cpia_scope='stage' (the reading before the released code was read): one CPIA per stage,
    its shared u in every block's adapter; the channel prompts gamma/beta are unused there."""
    model = _model(cpia="adapter", cpia_scope="stage")
    assert len(model.recipe.prompts) == 4 and not hasattr(model.recipe, "block_prompts")
    grads = _cpia_gradients(model)
    unused = {n for n, g in grads.items() if n.rsplit(".", 1)[-1] in ("gamma_rgb", "beta_x")}
    assert unused and all(grads[n] == 0 for n in unused)
    assert grads["recipe.prompts.0.mix.weight"] > 0
    with pytest.raises(ValueError, match="cpia_scope"):
        _model(cpia="adapter", cpia_scope="layer")


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


def test_sam_config_builds_the_sam_path(capsys, vaihingen_root):
    from rsfusion.cli.train import main as train_main
    from rsfusion.config import load_config
    from rsfusion.models.backbones.sam import TINY_SAM

    cfg = load_config("vaihingen_mobanet_sam")
    m = cfg.model
    assert (m.name, m.backbone, m.weights) == (
        "mobanet", "samvit_large_patch16", "samvit_large_patch16.sa1b"
    )  # fmt: skip
    assert (m.kwargs["cpia"], m.kwargs["cpia_scope"], m.kwargs["prompt_ratio"]) == (
        "adapter", "block", 0.25
    )  # fmt: skip
    assert m.masking.mode == "mcrm" and m.aux_loss.mode == "hard" and cfg.data.card == "vaihingen"
    sam = ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in TINY_SAM.items())
    tiny = ["model.weights=null", f"model.kwargs.backbone_kwargs={{{sam}}}",
            f"data.root={vaihingen_root}"]  # fmt: skip
    assert train_main(["--cfg", "vaihingen_mobanet_sam", "--dry-run", "--set", *tiny]) == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in capsys.readouterr().out.splitlines() if ln}
    assert rows["backbone"][1] == "0" and int(rows["block_prompts"][0].replace(",", "")) > 0
