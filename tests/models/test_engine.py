"""The dual-stream engine: hook order, freezing, padding and cropping."""

import pytest
import torch
from torch import Tensor

from rsfusion.models.backbones.vit import ViTBackbone, default_taps
from rsfusion.models.engine import DualStreamEngine, Recipe
from rsfusion.models.mobanet import MoBaNet

TINY = dict(depth=6, embed_dim=32, num_heads=2, img_size=56)


def tiny_vit(**kw) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone("vit_small_patch14_dinov2", taps=(1, 3, 5), **{**TINY, **kw})


class Recording(Recipe):
    """Records every hook call; sums the streams; a 1x1 conv as head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.cls = torch.nn.Conv2d(dim, 2, 1)

    def embed_x(self, backbone, x):
        self.calls.append(("embed_x",))
        return super().embed_x(backbone, x)

    def before_stage(self, stage, r, x):
        self.calls.append(("before", stage))
        return r, x

    def in_block(self, backbone, stage, index, r, x):
        self.calls.append(("block", stage, index))
        return super().in_block(backbone, stage, index, r, x)

    def after_stage(self, stage, r: Tensor, x: Tensor) -> Tensor:
        self.calls.append(("after", stage, tuple(r.shape), tuple(x.shape)))
        return r + x

    def decode(self, fused, rgb, x, size):
        self.calls.append(("decode", len(fused), size))
        return torch.nn.functional.interpolate(self.cls(fused[-1]), size=size)


def test_hooks_are_called_in_the_table_order_with_padded_grid():
    backbone = tiny_vit()
    recipe = Recording(32)
    engine = DualStreamEngine(backbone, recipe)
    out = engine(torch.rand(1, 3, 40, 50), torch.rand(1, 3, 40, 50))
    expected = [("embed_x",)]
    for stage, (start, end) in enumerate([(0, 2), (2, 4), (4, 6)]):
        expected.append(("before", stage))
        expected += [("block", stage, j) for j in range(end - start)]
        expected.append(("after", stage, (1, 32, 3, 4), (1, 32, 3, 4)))  # 42x56 padded / 14
    expected.append(("decode", 3, (42, 56)))
    assert recipe.calls == expected
    assert out.shape == (1, 2, 40, 50)  # cropped back to the input


def test_x_stream_runs_the_same_frozen_blocks():
    class Keep(Recording):
        def after_stage(self, stage, r, x):
            self.maps = getattr(self, "maps", []) + [(r, x)]
            return r + x

    backbone = tiny_vit()
    recipe = Keep(32)
    engine = DualStreamEngine(backbone, recipe).eval()
    img = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        engine(img, img)  # same input, shared embedding and blocks: identical streams
        assert all(torch.equal(r, x) for r, x in recipe.maps)
        r = backbone.embed(img)
        for j in range(2):
            r = backbone.run_block(0, j, r)
        assert torch.allclose(recipe.maps[0][0], backbone.stage_output(0, r))
        engine(img, img.flip(-1))
        assert not torch.allclose(recipe.maps[-1][0], recipe.maps[-1][1])


def test_freezing_is_explicit_frozen_identical_trainable_moved():
    backbone = tiny_vit()
    recipe = MoBaNet(backbone, num_classes=3, proj_dim=16, head_channels=8)
    engine = DualStreamEngine(backbone, recipe).train()
    assert not backbone.training  # a frozen backbone stays in eval mode (dropout off)
    before = {n: p.detach().clone() for n, p in engine.named_parameters()}
    trainable = [p for p in engine.parameters() if p.requires_grad]
    assert all(n.startswith("recipe.") for n, p in engine.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    rgb, x = torch.rand(2, 3, 28, 28), torch.rand(2, 1, 28, 28)
    target = torch.randint(0, 3, (2, 28, 28))
    for _ in range(2):  # the up projections start at 0: a second step moves what follows them
        out = engine(rgb, x)
        loss = torch.nn.functional.cross_entropy(out["out"], target)
        loss = loss + sum(torch.nn.functional.cross_entropy(v, target) for v in out["aux"].values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in engine.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"trainable {name} did not move"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


@pytest.mark.parametrize(
    ("depth", "taps"),
    [(12, (2, 5, 8, 11)), (24, (5, 11, 17, 23)), (40, (9, 19, 29, 39)), (8, (1, 3, 5, 7))],
)
def test_default_taps_follow_the_paper(depth, taps):
    assert default_taps(depth) == taps


class Peek(Recording):
    """Records the patch tokens entering stage 0."""

    def before_stage(self, stage, r, x):
        if stage == 0:
            self.tokens = (r.data.clone(), x.data.clone(), r.prefix)
        return r, x


def test_token_drop_zeroes_whole_token_maps_after_embedding():
    backbone = tiny_vit()
    engine = DualStreamEngine(backbone, Peek(32)).eval()
    rgb, x = torch.randn(3, 3, 28, 28), torch.randn(3, 3, 28, 28)
    drop = (torch.tensor([True, False, False]), torch.tensor([False, False, True]))
    engine(rgb, x, token_drop=drop)
    r, s, prefix = engine.recipe.tokens
    assert r[0, prefix:].eq(0).all() and s[2, prefix:].eq(0).all()  # whole maps zeroed
    assert r[0, :prefix].abs().sum() > 0  # the class token stays
    assert r[1:, prefix:].abs().sum() > 0 and s[:2, prefix:].abs().sum() > 0
    # an input of zeros is not the same: it embeds to the patch bias plus position embedding
    engine(torch.zeros_like(rgb), x)
    assert engine.recipe.tokens[0][0, prefix:].abs().sum() > 0


def test_the_task_hands_mmst_on_tokens_to_the_engine(monkeypatch):
    from rsfusion.models.base import SegmentationModel
    from rsfusion.training.task import SegmentationTask

    task = SegmentationTask(
        model={"name": "mobanet", "num_classes": 2, "rgb_channels": 3, "x_channels": 1,
               "backbone": "vit_small_patch14_dinov2",
               "kwargs": {"backbone_kwargs": TINY, "proj_dim": 8, "head_channels": 8}},
        optim={}, ignore_index=255, metric_classes=[0, 1], class_names=["a", "b"], meta={},
        masking={"mode": "mmst", "fraction": 0.5, "where": "tokens"},
    )  # fmt: skip
    seen = {}

    class Spy(SegmentationModel):
        masks_tokens = True

        def forward(self, rgb, x=None, token_drop=None):
            seen.update(rgb=rgb, token_drop=token_drop)
            return torch.zeros(rgb.shape[0], 2, *rgb.shape[-2:], requires_grad=True)

    task.model = Spy()
    monkeypatch.setattr(SegmentationTask, "log", lambda *a, **k: None)
    rgb = torch.randn(4, 3, 28, 28) + 5
    batch = {
        "image": rgb,
        "image_x": torch.randn(4, 1, 28, 28),
        "mask": torch.zeros(4, 28, 28).long(),
    }
    task.train()
    task.training_step(batch, 0)
    r_drop, x_drop = seen["token_drop"]
    assert int(r_drop.sum()) == 2 and int(x_drop.sum()) == 2 and not (r_drop & x_drop).any()
    assert torch.equal(seen["rgb"], rgb)  # the inputs themselves are not zeroed


@pytest.mark.parametrize("fp32_stages", [0, 1, 2])
def test_first_stages_run_in_float32_under_autocast(fp32_stages):
    """``fp32_stages``: a convolution in those stages' hooks computes in float32 under bf16
    autocast, in later ones in bfloat16; without autocast everything is float32."""
    dtypes: list[torch.dtype] = []

    class Dtypes(Recording):
        def after_stage(self, stage, r, x):
            dtypes.append(self.cls(r).dtype)  # autocast runs convolutions in bfloat16
            return r + x

    engine = DualStreamEngine(tiny_vit(), Dtypes(32))
    engine.fp32_stages = fp32_stages
    rgb, x = torch.rand(1, 3, 28, 28), torch.rand(1, 3, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        engine(rgb, x)
    assert dtypes == [torch.float32] * fp32_stages + [torch.bfloat16] * (3 - fp32_stages)
    dtypes.clear()
    engine(rgb, x)
    assert dtypes == [torch.float32] * 3
