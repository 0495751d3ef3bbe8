"""Engine v2: backbone modes, stream rewriting after a stage, per-sample metadata, layer depths
of recipe parts, and the hook table in the README matching the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from rsfusion.models import ModelSpec, build_model
from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.backbones.cnn import TimmCNNBackbone
from rsfusion.models.backbones.vit import ViTBackbone
from rsfusion.models.base import SampleMeta
from rsfusion.models.engine import DualStreamEngine, Recipe, StageOutput
from rsfusion.models.ktb import KTB
from rsfusion.models.mobanet import MoBaNet

TINY = {"depth": 6, "embed_dim": 32, "num_heads": 2, "img_size": 56}
README = Path(__file__).parents[2] / "README.md"


def tiny_vit(**kw) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone("vit_small_patch14_dinov2", taps=(1, 3, 5), **{**TINY, **kw})


class Head(Recipe):
    """Sums the streams; a 1x1 conv head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cls = nn.Conv2d(dim, 2, 1)

    def decode(self, fused, rgb, x, size):
        return nn.functional.interpolate(self.cls(fused[-1]), size=size)


def _spec(mode: str, drop: float | None = 0.5, **kw) -> ModelSpec:
    kwargs = {"backbone_kwargs": {**TINY, "taps": (1, 3, 5)}, "proj_dim": 8, "head_channels": 8}
    return ModelSpec(
        "mobanet", 3, 3, 1, backbone="vit_small_patch14_dinov2", kwargs=kwargs,
        backbone_mode=mode, drop_path_rate=drop, **kw,
    )  # fmt: skip


# --------------------------------------------------------------------------- backbone modes
@pytest.mark.parametrize("mode", ["frozen", "stochastic_depth", "trainable"])
def test_drop_path_acts_only_in_stochastic_depth_or_trainable_training(mode):
    torch.manual_seed(0)
    model = build_model(_spec(mode))
    drops = [m for m in model.backbone.modules() if isinstance(m, DropPath)]
    assert drops, "drop_path_rate must reach the backbone's blocks"
    rgb, x = torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28)
    model.train()
    active = mode != "frozen"
    assert all(m.training == active for m in drops)
    model.recipe.eval()  # recipe dropout off: only drop-path can make two forwards differ
    with torch.no_grad():
        a, b = model(rgb, x), model(rgb, x)
    assert torch.equal(a, b) != active
    assert a.shape == (2, 3, 28, 28)
    model.eval()
    assert not any(m.training for m in drops)  # never at evaluation
    with torch.no_grad():
        assert torch.equal(model(rgb, x), model(rgb, x))
    frozen = [p.requires_grad for p in model.backbone.parameters()]
    assert all(frozen) if mode == "trainable" else not any(frozen)


def test_stochastic_depth_keeps_batchnorm_statistics_and_weights_frozen():
    torch.manual_seed(0)
    backbone = TimmCNNBackbone("efficientnet_lite0", out_indices=(0, 1, 2), drop_path_rate=0.5)
    backbone.set_mode("stochastic_depth")
    engine = DualStreamEngine(backbone, Head(backbone.stages[-1].channels)).train()
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in norms]
    assert not any(m.training for m in norms)
    assert any(m.training for m in backbone.modules() if isinstance(m, DropPath))
    engine(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, stats))
    assert all(p.grad is None for p in backbone.parameters())


def test_trainable_backbone_moves_under_the_optimiser_with_its_own_lr():
    from rsfusion.config import OptimConfig
    from rsfusion.training.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(_spec("trainable", drop=None)).train()
    opt = build_optimizer(model, OptimConfig(lr=1e-2, backbone_lr=1e-3, weight_decay=0.0))
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.backbone.vit.blocks[0].attn.qkv.weight)] == pytest.approx(1e-3)
    assert lrs[id(model.recipe.head.classifier.weight)] == pytest.approx(1e-2)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    rgb, x = torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28)
    target = torch.randint(0, 3, (2, 28, 28))
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(rgb, x)["out"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert "vit.blocks.0.attn.qkv.weight" in moved and "vit.patch_embed.proj.weight" in moved
    # the trainable backbone is in the checkpoint: nothing is frozen to leave out
    from rsfusion.models.checkpoint import frozen_digest

    assert frozen_digest(model) is None


# --------------------------------------------------------------------------- stream rewriting
class Rewrite(Head):
    """Rewrites the RGB stream after stage 0 (as CMX's FRM) and records what stage 1 sees."""

    def __init__(self, dim: int, rewrite: bool) -> None:
        super().__init__(dim)
        self.rewrite, self.seen, self.outputs = rewrite, {}, {}

    def before_stage(self, stage, r, x):
        self.seen[stage] = (r, x)
        return r, x

    def after_stage(self, stage, r, x):
        self.outputs[stage] = (r, x)
        if stage == 0 and self.rewrite:
            return StageOutput(r + x, rgb=r + 1.5, x=None)
        return r + x


def test_a_rewritten_stream_continues_into_the_next_stage_tokens_backbone():
    img, xin = torch.rand(1, 3, 28, 42), torch.rand(1, 3, 28, 42)
    plain, rewritten = Rewrite(32, False), Rewrite(32, True)
    with torch.no_grad():
        DualStreamEngine(tiny_vit(), plain).eval()(img, xin)
        DualStreamEngine(tiny_vit(), rewritten).eval()(img, xin)
    r0, x0 = plain.seen[1]
    r1, x1 = rewritten.seen[1]
    # ViT's next stage reads the raw tokens: the rewrite's change (+1.5) lands on the patches
    torch.testing.assert_close(r1.patches(), r0.patches() + 1.5)
    assert torch.equal(r1.data[:, : r1.prefix], r0.data[:, : r0.prefix])
    assert torch.equal(x1.data, x0.data)  # the X stream was not rewritten
    assert not torch.allclose(rewritten.outputs[2][0], plain.outputs[2][0])  # and it carries on


def test_a_rewritten_stream_continues_from_the_map_on_a_backbone_that_reads_its_output():
    torch.manual_seed(0)
    backbone = TimmCNNBackbone("efficientnet_lite0", out_indices=(0, 1, 2))
    recipe = Rewrite(backbone.stages[-1].channels, True)
    with torch.no_grad():
        DualStreamEngine(backbone, recipe).eval()(
            torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        )
        r_out = recipe.outputs[0][0]
        expected = backbone.next_stage(0, StreamState(r_out + 1.5, r_out.shape[-2:]))
    assert torch.equal(recipe.seen[1][0].data, expected.data)


# --------------------------------------------------------------------------- metadata
class Prepared(Head):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.metas: list[SampleMeta] = []

    def prepare(self, rgb, x, meta):
        self.metas.append(meta)
        assert rgb.shape[0] == len(meta)
        return rgb, x * 0  # the hook sees (and may change) the raw inputs


def test_metadata_arrives_per_sample_in_the_recipe_and_defaults_from_the_spec():
    recipe = Prepared(32)
    engine = DualStreamEngine(tiny_vit(), recipe, default_meta=("vaihingen", "dsm"))
    rgb = torch.rand(3, 3, 28, 28)
    meta = SampleMeta(("nyudepthv2", "mfnet", "vaihingen"), ("depth", "thermal", "dsm"))
    engine(rgb, torch.rand(3, 3, 28, 28), meta=meta)
    engine(rgb, torch.rand(3, 3, 28, 28))
    assert recipe.metas[0] is meta
    assert recipe.metas[1] == SampleMeta.repeat(3, "vaihingen", "dsm")
    # X zeroed in prepare: both calls see the same embedded X whatever the X input
    built = build_model(_spec("frozen", dataset="vaihingen", modality="dsm"))
    assert built.default_meta == ("vaihingen", "dsm")


def test_the_task_hands_batch_metadata_to_the_engine(monkeypatch):
    from rsfusion.training.task import SegmentationTask

    spec = _spec("frozen", drop=None).__dict__
    task = SegmentationTask(
        model=spec, optim={}, ignore_index=255, metric_classes=[0, 1, 2],
        class_names=["a", "b", "c"], meta={},
    )  # fmt: skip
    seen: list[SampleMeta] = []
    monkeypatch.setattr(MoBaNet, "prepare", lambda self, r, x, m: (seen.append(m), (r, x))[1])
    monkeypatch.setattr(SegmentationTask, "log", lambda *a, **k: None)
    batch = {
        "image": torch.rand(2, 3, 28, 28),
        "image_x": torch.rand(2, 1, 28, 28),
        "mask": torch.zeros(2, 28, 28).long(),
        "dataset": ["nyudepthv2", "sunrgbd"],
        "modality": ["depth", "hha"],
    }
    task.train().training_step(batch, 0)
    task.eval().validation_step(batch, 0)
    assert seen == [SampleMeta(("nyudepthv2", "sunrgbd"), ("depth", "hha"))] * 2


def test_datasets_put_metadata_in_every_sample_and_collate_it(tmp_path):
    from torch.utils.data import default_collate

    from rsfusion.data.natural.base import dataset_class_for
    from tests.data.nyudepthv2.data import generate

    generate(tmp_path)
    ds = dataset_class_for("nyudepthv2")(tmp_path, split="train", x="depth")
    batch = default_collate([ds[0], ds[1]])
    assert SampleMeta.from_batch(batch) == SampleMeta.repeat(2, "nyudepthv2", "depth")


# --------------------------------------------------------------------------- layer depths
def test_recipe_parts_take_their_stage_or_block_depth():
    torch.manual_seed(0)
    backbone = tiny_vit()
    engine = DualStreamEngine(
        backbone, MoBaNet(backbone, 3, cpia="adapter", cpia_scope="stage", proj_dim=8)
    )
    depths, total = engine.parameter_depths()
    assert total == 6  # stages (0-1), (2-3), (4-5): blocks 1..6
    assert depths["recipe.x_embed.proj.weight"] == 0
    assert depths["backbone.vit.patch_embed.proj.weight"] == 0
    assert depths["backbone.vit.cls_token"] == 0
    assert [depths[f"recipe.prompts.{i}.up.weight"] for i in range(3)] == [1, 3, 5]  # first block
    assert [depths[f"recipe.dgfm.{i}.norm.weight"] for i in range(3)] == [2, 4, 6]  # last block
    assert depths["recipe.adapters.x.1.1.up.weight"] == 4  # stage 1, block 1 = block 4
    assert depths["recipe.head.classifier.weight"] == total + 1  # heads on top
    assert depths["backbone.vit.blocks.3.attn.qkv.weight"] == 4
    from rsfusion.training.optim import param_groups

    groups = param_groups(engine, 0.0, lr=1.0, layer_decay=0.5)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr[id(engine.recipe.prompts[1].up.weight)] == pytest.approx(0.5 ** (7 - 3))
    assert lr[id(engine.recipe.head.classifier.weight)] == pytest.approx(1.0)


def test_ktb_declares_its_parts_and_dscf_sits_at_the_stage_end():
    from tests.models.test_ktb import _swin

    model = _swin()
    depths, total = model.parameter_depths()
    blocks = model.backbone.block_depths()
    assert [depths[f"recipe.prompts.{i}.up.weight"] for i in range(4)] == [b[0] for b in blocks]
    dscf = [n for n in depths if n.startswith("recipe.dscf.2.")]
    assert dscf and {depths[n] for n in dscf} == {blocks[2][-1]}
    assert depths["backbone.swin.layers.2.downsample.reduction.weight"] == blocks[1][-1]
    assert depths["recipe.head_x.classifier.weight"] == total + 1


# --------------------------------------------------------------------------- the hook table
def _readme_hooks() -> list[str]:
    text = README.read_text()
    section = text[text.index("### The engine's hook table") :]
    section = section[: section.index("\n## ", 1) if "\n## " in section else len(section)]
    return re.findall(r"^\| `(\w+)\(", section, flags=re.M)


def test_the_readme_hook_table_is_the_recipe_api_and_recipes_use_only_it():
    hooks = _readme_hooks()
    assert hooks == ["prepare", "embed_x", "before_stage", "in_block", "after_stage", "decode"]
    api = {n for n, v in vars(Recipe).items() if callable(v) and not n.startswith("_")} - {
        "embed_x_copy",
        "copy_embedding",
    }  # helpers for embed_x, not hooks
    assert api == set(hooks)
    from rsfusion.models.cpal import CPAL

    for recipe in (MoBaNet, KTB, CPAL):
        public = {n for n, v in vars(recipe).items() if inspect.isfunction(v) and n[0] != "_"}
        assert public <= set(hooks), f"{recipe.__name__} defines {public - set(hooks)}"
    # the backbone calls the table names exist on the protocol
    for call in ("embed", "run_block", "mixer", "mlp", "stage_output", "next_stage"):
        assert call in vars(Backbone)


# --------------------------------------------------------------------------- block halves
class Interleaved(Head):
    """CPAL's four interleaved residual updates (authors' code) on the block halves:
    mixer of RGB, of X, MLP of RGB, of X, each adding a prompt of the other stream's updated
    tokens (here a fixed scale ``p`` of them)."""

    def __init__(self, dim: int, p: float) -> None:
        super().__init__(dim)
        self.p, self.reads = p, []

    def in_block(self, backbone, stage, index, r, x):
        def prompted(state, other):
            self.reads.append(other.patches())
            return state.with_patches(state.patches() + self.p * other.patches())

        r = prompted(backbone.mixer(stage, index, r, "rgb"), x)
        x = prompted(backbone.mixer(stage, index, x, "x"), r)
        r = prompted(backbone.mlp(stage, index, r, "rgb"), x)
        x = prompted(backbone.mlp(stage, index, x, "x"), r)
        return r, x


def test_cpal_style_interleaved_halves_read_the_other_streams_updated_tokens():
    rgb, x = torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        plain = DualStreamEngine(tiny_vit(), Head(32)).eval()(rgb, x)
        zero = DualStreamEngine(tiny_vit(), Interleaved(32, 0.0)).eval()(rgb, x)
        recipe = Interleaved(32, 0.1)
        DualStreamEngine(tiny_vit(), recipe).eval()(rgb, x)
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-6)  # zero prompts: the blocks
    backbone = tiny_vit()
    with torch.no_grad():  # the first block by hand: X's mixer update reads the prompted RGB
        r0, x0 = backbone.embed(rgb), backbone.embed(x, stream="x")
        r1 = backbone.mixer(0, 0, r0)
        r1 = r1.with_patches(r1.patches() + 0.1 * x0.patches())
    torch.testing.assert_close(recipe.reads[1], r1.patches())


def test_drop_path_is_active_in_lightning_training_steps_and_off_in_validation(tmp_path):
    """Lightning keeps submodules in the mode they were built in (it never calls .train() at
    fit start): the backbone must come out of the builder in its training-time state, also a
    Swin that puts itself in eval mode while it is built (KTB's paper configs)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from rsfusion.training.task import SegmentationTask
    from tests.models.test_ktb import HEADS, SWIN, TINY_SWIN

    spec = ModelSpec(
        "ktb", 3, 3, 1, backbone=SWIN, kwargs={"backbone_kwargs": TINY_SWIN, **HEADS},
        backbone_mode="stochastic_depth", drop_path_rate=0.5,
    )  # fmt: skip
    task = SegmentationTask(
        model=spec.__dict__, optim={"lr": 1e-3},
        ignore_index=255, metric_classes=[0, 1, 2], class_names=["a", "b", "c"], meta={},
    )  # fmt: skip
    seen: dict[str, list[bool]] = {"train": [], "val": []}

    class Spy(L.Callback):
        def _flags(self, module) -> list[bool]:
            return [m.training for m in module.model.backbone.modules() if isinstance(m, DropPath)]

        def on_train_batch_start(self, trainer, module, batch, idx):
            seen["train"] += self._flags(module)

        def on_validation_batch_start(self, trainer, module, batch, idx, dataloader_idx=0):
            seen["val"] += self._flags(module)

    gen = torch.Generator().manual_seed(0)
    data = [
        {
            "image": torch.rand(3, 28, 28, generator=gen),
            "image_x": torch.rand(1, 28, 28, generator=gen),
            "mask": torch.randint(0, 3, (28, 28), generator=gen),
        }
        for _ in range(4)
    ]
    loader = DataLoader(data, batch_size=2)
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Spy()],
    )  # fmt: skip
    trainer.fit(task, loader, loader)
    assert seen["train"] and all(seen["train"])
    assert seen["val"] and not any(seen["val"])


def test_a_random_init_backbone_hash_does_not_depend_on_what_was_built_before():
    """``ModelSpec.seed`` seeds the RNGs right before the backbone is built: prediction and
    evaluation rebuild a randomly initialised frozen backbone bit for bit, whatever ran first."""
    import dataclasses

    from rsfusion.models.checkpoint import frozen_digest

    spec = dataclasses.replace(_spec("frozen", drop=None), seed=7)
    first = frozen_digest(build_model(spec))
    torch.rand(1000)  # the RNG moved on ...
    build_model(_spec("frozen", drop=None))  # ... and another model was built before
    assert frozen_digest(build_model(spec)) == first
    assert frozen_digest(build_model(dataclasses.replace(spec, seed=8))) != first


def test_checkpoints_written_before_a_part_was_renamed_still_load():
    """MoBaNet's CPIA prompts and aux heads took the names KTB uses for the same roles
    (``prompts``, ``head_rgb``, ``head_x``); older checkpoints load under the new names."""
    from rsfusion.models.engine import migrate_state_dict

    model = build_model(_spec("frozen", drop=None))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    old = {}
    for key, value in state.items():
        for was, now in MoBaNet.renamed.items():
            key = key.replace(f"model.recipe.{now}", f"model.recipe.{was}")
        old[key] = value
    assert any(k.startswith("model.recipe.cpia.") for k in old)
    assert migrate_state_dict(model, old, prefix="model.") > 0
    assert old.keys() == state.keys()
    assert all(torch.equal(old[k], state[k]) for k in state)
