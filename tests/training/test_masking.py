"""Train-time modality masking: MCRM rectangles (MoBaNet) and MMST whole maps (KTB)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rsfusion.training.masking import MaskingConfig, ModalityMasking, n_masked

H, W = 48, 64


def _inputs(batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """RGB and 2-band X with no zero anywhere, so every zero was put there by the masking."""
    g = torch.Generator().manual_seed(seed)
    rgb = (torch.rand(batch, 3, H, W, generator=g) + 1).to(dtype)
    x = (torch.rand(batch, 2, H, W, generator=g) - 2).to(dtype)
    return rgb, x


def _run(mode: str, batch: int, seed: int, **kw):
    masking = ModalityMasking(MaskingConfig(mode=mode, **kw))
    rgb, x = _inputs(batch)
    r, s, info = masking(rgb, x, generator=torch.Generator().manual_seed(seed))
    return rgb, x, r, s, info


def _zeroed(before: Tensor, after: Tensor) -> Tensor:
    """(H, W) bool: pixels zeroed in all channels; asserts nothing else changed."""
    zero = (after == 0).all(0)
    assert torch.equal(after[:, ~zero], before[:, ~zero])
    return zero


def _bbox(zero: Tensor) -> tuple[int, int, int, int]:
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


@pytest.mark.parametrize("batch", [1, 2, 7, 10, 24])
def test_mcrm_counts_split_and_single_rectangles(batch: int) -> None:
    for seed in range(3):
        rgb, x, r, s, info = _run("mcrm", batch, seed)
        n = n_masked(0.25, batch)
        assert n == max(1, math.floor(0.25 * batch + 0.5))
        assert int(info.masked.sum()) == n
        assert not (info.rgb & info.x).any()
        if n >= 2:  # first half (rounded up) RGB, the rest X
            assert int(info.rgb.sum()) == math.ceil(n / 2)
            assert int(info.x.sum()) == n // 2
        for i in range(batch):
            if not info.masked[i]:
                assert torch.equal(r[i], rgb[i]) and torch.equal(s[i], x[i])
                continue
            before, after, other, other_after = (
                (rgb[i], r[i], x[i], s[i]) if info.rgb[i] else (x[i], s[i], rgb[i], r[i])
            )
            assert torch.equal(other_after, other)  # the other modality is bit-identical
            zero = _zeroed(before, after)
            top, left, h, w = _bbox(zero)
            assert int(zero.sum()) == h * w  # one solid axis-aligned rectangle
            assert info.boxes[i].tolist() == [top, left, h, w]
            slack = max(H, W)  # one row / column of rounding
            assert 0.1 * H * W - slack <= h * w <= 0.3 * H * W + slack
            assert 0.5 / 1.1 <= w / h <= 2.0 * 1.1


def test_mcrm_single_sample_masks_either_modality() -> None:
    seen = set()
    for seed in range(20):
        _, _, _, _, info = _run("mcrm", 1, seed)
        assert int(info.masked.sum()) == 1
        seen.add("rgb" if info.rgb[0] else "x")
    assert seen == {"rgb", "x"}


def test_mcrm_rectangles_cover_the_drawn_ranges() -> None:
    masking = ModalityMasking(MaskingConfig(mode="mcrm", fraction=1.0))
    g = torch.Generator().manual_seed(3)
    areas, aspects, tops = [], [], []
    for _ in range(20):
        info = masking.draw(16, 100, 100, g)
        top, _, h, w = info.boxes.T.tolist()
        areas += [a * b / 1e4 for a, b in zip(h, w)]
        aspects += [b / a for a, b in zip(h, w)]
        tops += top
    assert 0.099 <= min(areas) < 0.13 and 0.27 < max(areas) <= 0.301
    assert min(aspects) < 0.6 and max(aspects) > 1.7  # both ends of the log-uniform range
    assert min(tops) < 5 and max(tops) > 60  # placed anywhere that fits


@pytest.mark.parametrize("batch", [1, 2, 7, 12])
def test_mmst_whole_maps_never_both_modalities(batch: int) -> None:
    for seed in range(3):
        rgb, x, r, s, info = _run("mmst", batch, seed)
        assert not (info.rgb & info.x).any()
        if batch == 1:
            assert int(info.masked.sum()) == 1
        else:
            n = min(n_masked(0.25, batch), batch // 2)
            assert int(info.rgb.sum()) == int(info.x.sum()) == n >= 1
        for i in range(batch):
            for masked, before, after in ((info.rgb[i], rgb[i], r[i]), (info.x[i], x[i], s[i])):
                if masked:
                    assert (after == 0).all()
                else:
                    assert torch.equal(after, before)


def test_mmst_large_fraction_keeps_sets_disjoint_and_equal() -> None:
    _, _, _, _, info = _run("mmst", 7, 0, fraction=1.0)
    assert int(info.rgb.sum()) == int(info.x.sum()) == 3
    assert not (info.rgb & info.x).any()


def test_mmst_single_sample_masks_either_modality() -> None:
    seen = {bool(_run("mmst", 1, seed)[4].rgb[0]) for seed in range(20)}
    assert seen == {True, False}


@pytest.mark.parametrize("mode", ["mcrm", "mmst"])
def test_deterministic_given_generator_and_inputs_untouched(mode: str) -> None:
    rgb, x = _inputs(8)
    rgb0, x0 = rgb.clone(), x.clone()
    masking = ModalityMasking(MaskingConfig(mode=mode, fraction=0.5))
    outs = [masking(rgb, x, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2, 3)]
    assert torch.equal(rgb, rgb0) and torch.equal(x, x0)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][2].boxes, outs[1][2].boxes)
    for other in outs[2:]:  # a different seed draws different masks
        assert not (torch.equal(other[0], outs[0][0]) and torch.equal(other[1], outs[0][1]))


def test_replay_applies_the_same_draw_to_other_tensors() -> None:
    masking = ModalityMasking(MaskingConfig(mode="mcrm", fraction=0.5))
    rgb, x = _inputs(4)
    r, s, info = masking(rgb, x, generator=torch.Generator().manual_seed(5))
    r2, s2 = masking.apply(rgb * 2, x * 2, info)
    assert torch.equal(r2 == 0, r == 0) and torch.equal(s2 == 0, s == 0)
    with pytest.raises(ValueError, match="grid"):  # boxes belong to the grid they were drawn on
        masking.apply(rgb[..., :32], x[..., :32], info)


def test_mmst_draw_on_inputs_replays_on_tokens() -> None:
    masking = ModalityMasking(MaskingConfig(mode="mmst", fraction=0.25))
    rgb, x = _inputs(4)
    _, _, info = masking(rgb, x, generator=torch.Generator().manual_seed(0))
    tokens = torch.ones(4, 12, 7)
    rt, xt = masking.apply(tokens, tokens, info, tokens_hw=(3, 4))
    assert torch.equal((rt == 0).all((1, 2)), info.rgb)
    assert torch.equal((xt == 0).all((1, 2)), info.x)


def test_mcrm_on_an_elongated_map_keeps_the_area() -> None:
    masking = ModalityMasking(MaskingConfig(mode="mcrm", fraction=1.0))
    info = masking.draw(64, 6, 300, torch.Generator().manual_seed(0))
    top, left, h, w = info.boxes.T
    assert (top >= 0).all() and (top + h <= 6).all() and (left + w <= 300).all()
    area = (h * w).double() / (6 * 300)
    assert area.min() >= 0.1 - 0.002 and area.max() <= 0.3 + 0.002  # h * w within h / 2 px
    assert (h == 6).any()  # a side was clipped to the map and the other lengthened


@pytest.mark.parametrize("mode", ["mcrm", "mmst"])
def test_token_maps_mask_the_same_grid_cells(mode: str) -> None:
    hw, c = (6, 8), 5
    g = torch.Generator().manual_seed(0)
    rt, xt = torch.rand(4, 48, c, generator=g) + 1, torch.rand(4, 48, c, generator=g) + 1
    masking = ModalityMasking(MaskingConfig(mode=mode, fraction=0.5))
    r, s, info = masking(rt, xt, generator=torch.Generator().manual_seed(1), tokens_hw=hw)
    grid = (r.transpose(1, 2).reshape(4, c, *hw), s.transpose(1, 2).reshape(4, c, *hw))
    ref = masking.apply(
        rt.transpose(1, 2).reshape(4, c, *hw), xt.transpose(1, 2).reshape(4, c, *hw), info
    )  # the same draw on the (B, C, h, w) view
    assert torch.equal(grid[0], ref[0]) and torch.equal(grid[1], ref[1])
    assert int((r == 0).all(2).sum() + (s == 0).all(2).sum()) > 0
    with pytest.raises(ValueError, match="N=48"):
        masking(rt[:, :40], xt[:, :40], tokens_hw=hw)


def test_identity_in_eval_mode_for_none_and_without_x() -> None:
    rgb, x = _inputs(4)
    masking = ModalityMasking(MaskingConfig(mode="mmst")).eval()
    r, s, info = masking(rgb, x)
    assert r is rgb and s is x and not info.masked.any()
    r, s, _ = ModalityMasking(MaskingConfig(mode="none"))(rgb, x)
    assert r is rgb and s is x
    r, s, info = ModalityMasking({"mode": "mcrm"})(rgb, None)
    assert r is rgb and s is None and not info.masked.any()


def test_keeps_dtype_and_device() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rgb, x = (t.to(device) for t in _inputs(4, dtype=torch.bfloat16))
        g = torch.Generator(device=device).manual_seed(0)
        r, s, info = ModalityMasking(MaskingConfig(mode="mcrm", fraction=1.0))(rgb, x, g)
        assert r.dtype == s.dtype == torch.bfloat16 and r.device == rgb.device
        assert int((r == 0).all(1).sum() + (s == 0).all(1).sum()) == int(
            info.boxes[:, 2:].prod(1).sum()
        )


def test_the_default_draw_is_the_one_from_before_shapes_and_counts() -> None:
    """One rectangle per sample (the default) draws what it drew before ``shape`` and
    ``count`` existed, so configs that do not set them train to the same weights."""
    masking = ModalityMasking(MaskingConfig(mode="mcrm", fraction=0.5))
    assert (masking.cfg.shape, masking.cfg.count) == ("rect", 1)
    info = masking.draw(8, 48, 64, torch.Generator().manual_seed(11))
    assert info.boxes.tolist() == [
        [0, 0, 0, 0], [7, 31, 33, 24], [12, 36, 33, 19], [19, 25, 22, 35],
        [0, 0, 0, 0], [13, 38, 28, 21], [0, 0, 0, 0], [0, 0, 0, 0],
    ]  # fmt: skip
    assert info.rgb.tolist() == [False, True, False, True, False, False, False, False]
    assert info.x.tolist() == [False, False, True, False, False, True, False, False]
    assert info.holes.shape == (8, 1, 4)


@pytest.mark.parametrize(("shape", "count"), [("squares", 6), ("rect", 3), ("squares", 1)])
def test_several_holes_per_masked_image(shape: str, count: int) -> None:
    area = (0.01, 0.03) if shape == "squares" else (0.05, 0.1)
    for seed in range(3):
        rgb, x, r, s, info = _run("mcrm", 8, seed, fraction=0.5, shape=shape, count=count,
                                  area=area)  # fmt: skip
        assert info.holes.shape == (8, count, 4)
        for i in range(8):
            if not info.masked[i]:
                assert torch.equal(r[i], rgb[i]) and torch.equal(s[i], x[i])
                assert not info.holes[i].any()
                continue
            before, after = (rgb[i], r[i]) if info.rgb[i] else (x[i], s[i])
            zero = _zeroed(before, after)  # nothing but the holes changed
            union = torch.zeros(H, W, dtype=torch.bool)
            for top, left, h, w in info.holes[i].tolist():
                assert top >= 0 and top + h <= H and left >= 0 and left + w <= W
                if shape == "squares":
                    assert h == w
                    side = (area[0] * H * W) ** 0.5 - 0.5, (area[1] * H * W) ** 0.5 + 0.5
                    assert side[0] <= h <= side[1]
                union[top : top + h, left : left + w] = True
            assert torch.equal(zero, union)  # exactly the union of the sample's holes


def test_squares_spread_over_the_map_and_replay_on_tokens() -> None:
    cfg = MaskingConfig(mode="mcrm", fraction=1.0, shape="squares", count=8, area=(0.02, 0.02))
    masking = ModalityMasking(cfg)
    info = masking.draw(16, 40, 40, torch.Generator().manual_seed(0))
    tops, lefts = info.holes[..., 0], info.holes[..., 1]
    assert tops.min() < 5 and tops.max() > 25 and lefts.min() < 5 and lefts.max() > 25
    assert (info.holes[..., 2] == 6).all()  # sqrt(.02 * 1600) = 5.7 -> 6
    tokens = torch.ones(16, 1600, 3)
    rt, xt = masking.apply(tokens, tokens, info, tokens_hw=(40, 40))
    grid_r, grid_x = masking.apply(torch.ones(16, 3, 40, 40), torch.ones(16, 3, 40, 40), info)
    assert torch.equal(rt.transpose(1, 2).reshape(16, 3, 40, 40), grid_r)
    assert torch.equal(xt.transpose(1, 2).reshape(16, 3, 40, 40), grid_x)
    assert "shape=squares, count=8" in repr(masking)


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "drop"},
        {"fraction": 1.5},
        {"area": (0.3, 0.1)},
        {"area": (0.1, 1.2)},
        {"aspect": (0, 2)},
        {"shape": "circles"},
        {"count": 0},
        {"count": 2.5},
        {"mode": "mmst", "shape": "squares"},
        {"mode": "mmst", "count": 4},
    ],
)
def test_config_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(ValueError):
        MaskingConfig(**kw)


def test_config_accepts_yaml_lists() -> None:
    assert MaskingConfig(area=[0.2, 0.4]).area == (0.2, 0.4)  # type: ignore[arg-type]
