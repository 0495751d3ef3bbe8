"""Error-aware auxiliary supervision: MoBaNet hard pixels and KTB self-teaching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from rsfusion.training.losses import (
    AuxSupervision,
    SegmentationLoss,
    aux_target,
    cross_entropy,
    split_output,
)

IGNORE = 255


def _onehot(labels: Tensor, k: int = 3, scale: float = 20.0) -> Tensor:
    """Logits (B, K, H, W) confidently predicting ``labels``."""
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float() * scale


def _example() -> tuple[Tensor, Tensor, Tensor]:
    """2x2 labels with one ignored pixel; main logits right on (0,0) and (1,1), wrong on (0,1)."""
    y = torch.tensor([[[0, 1], [IGNORE, 2]]])
    main = torch.tensor(
        [[[[2.0, 0.5], [0.1, 0.0]], [[0.0, 0.2], [0.3, 0.1]], [[1.0, 0.1], [0.2, 1.5]]]]
    )
    aux = torch.tensor(
        [[[[0.3, 1.0], [0.0, 0.2]], [[0.1, 2.0], [0.5, 0.4]], [[0.6, 0.0], [0.1, 0.9]]]]
    )
    return main, aux, y


def _ce_by_hand(logits: Tensor, y: Tensor, pixels: list[tuple[int, int]]) -> float:
    """Mean of -log softmax at the listed pixels, written out."""
    total = 0.0
    for i, j in pixels:
        z = logits[0, :, i, j].tolist()
        total -= z[int(y[0, i, j])] - math.log(sum(math.exp(v) for v in z))
    return total / len(pixels)


@pytest.mark.parametrize(
    ("mode", "aux_pixels"), [("hard", [(0, 1)]), ("self_teaching", [(0, 0), (1, 1)])]
)
def test_equals_hand_computed_cross_entropy(mode: str, aux_pixels: list) -> None:
    main, aux, y = _example()
    pred = main.argmax(1)[0]
    assert (pred[0, 0], pred[0, 1], pred[1, 1]) == (0, 0, 2)  # right, wrong, right
    parts = AuxSupervision(mode, weight=0.5, ignore_index=IGNORE)(main, {"rgb": aux}, y)
    main_ce = _ce_by_hand(main, y, [(0, 0), (0, 1), (1, 1)])
    aux_ce = _ce_by_hand(aux, y, aux_pixels)
    assert parts["main"].item() == pytest.approx(main_ce, rel=1e-6)
    assert parts["aux_rgb"].item() == pytest.approx(aux_ce, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(main_ce + 0.5 * aux_ce, rel=1e-6)


def _split_case() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Labels, a main head right on the left half only, and aux heads perfect on one half each."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2, 4, 6), generator=g)
    left = torch.zeros_like(y, dtype=torch.bool)
    left[..., :3] = True
    wrong = (y + 1) % 3
    main = _onehot(torch.where(left, y, wrong))
    aux_left = _onehot(torch.where(left, y, wrong))  # perfect where main is right
    aux_right = _onehot(torch.where(left, wrong, y))  # perfect where main is wrong
    return y, main, aux_left, aux_right


def test_hard_learns_only_where_the_main_head_is_wrong() -> None:
    y, main, aux_left, aux_right = _split_case()
    parts = AuxSupervision("hard")(main, {"a": aux_left, "b": aux_right}, y)
    assert parts["aux_a"].item() > 10  # wrong on exactly the supervised (hard) pixels
    assert parts["aux_b"].item() < 1e-6  # perfect on them; its errors are on ignored pixels


def test_self_teaching_learns_only_where_the_main_head_is_right() -> None:
    y, main, aux_left, aux_right = _split_case()
    parts = AuxSupervision("self_teaching")(main, {"a": aux_left, "b": aux_right}, y)
    assert parts["aux_a"].item() < 1e-6
    assert parts["aux_b"].item() > 10


def test_aux_target_keeps_ignored_pixels_ignored() -> None:
    main, _, y = _example()
    assert aux_target(main, y, "hard", IGNORE).tolist() == [[[IGNORE, 1], [IGNORE, IGNORE]]]
    assert aux_target(main, y, "self_teaching", IGNORE).tolist() == [[[0, IGNORE], [IGNORE, 2]]]


@pytest.mark.parametrize("mode", ["hard", "self_teaching"])
def test_no_nan_when_no_pixel_is_selected(mode: str) -> None:
    y = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(1))
    main = _onehot(y if mode == "hard" else (y + 1) % 3).requires_grad_()
    aux = torch.randn(2, 3, 5, 5, requires_grad=True)
    parts = AuxSupervision(mode, weight=1.0)(main, {"rgb": aux}, y)
    assert parts["aux_rgb"].item() == 0.0
    assert torch.isfinite(parts["loss"]) and parts["loss"].item() == parts["main"].item()
    parts["loss"].backward()
    assert torch.equal(aux.grad, torch.zeros_like(aux))
    assert torch.isfinite(main.grad).all()


@pytest.mark.parametrize("mode", ["hard", "self_teaching"])
def test_no_gradient_into_main_through_the_selection(mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (2, 6, 6), generator=g)
    main = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True)
    aux = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    AuxSupervision(mode, weight=1.0)(main, {"rgb": aux}, y)["loss"].backward()
    alone = main.detach().clone().requires_grad_()
    F.cross_entropy(alone, y).backward()
    assert torch.allclose(main.grad, alone.grad, atol=1e-7)
    assert aux.grad.abs().sum() > 0


def test_weight_scales_the_aux_part_linearly() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (2, 8, 8), generator=g)
    main, aux = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    heads = {"rgb": aux, "x": aux.flip(-1)}
    out = {w: AuxSupervision("hard", weight=w)(main, heads, y) for w in (0.0, 0.01, 0.03)}
    assert out[0.0]["loss"].item() == pytest.approx(out[0.0]["main"].item())
    extra = {w: out[w]["loss"].item() - out[w]["main"].item() for w in out}
    assert extra[0.01] > 0
    assert extra[0.03] == pytest.approx(3 * extra[0.01], rel=1e-4)
    assert extra[0.01] == pytest.approx(
        0.01 * (out[0.01]["aux_rgb"] + out[0.01]["aux_x"]).item(), rel=1e-4
    )


def test_low_resolution_aux_is_upsampled_bilinearly() -> None:
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 3, (1, 8, 8), generator=g)
    main, aux = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    parts = AuxSupervision("self_teaching")(main, {"rgb": aux}, y)
    up = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, aux_target(main, y, "self_teaching"), ignore_index=IGNORE)
    assert parts["aux_rgb"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_segmentation_loss_matches_cross_entropy_and_is_zero_when_all_ignored() -> None:
    main, _, y = _example()
    loss = SegmentationLoss(IGNORE)
    assert loss(main, y).item() == pytest.approx(F.cross_entropy(main, y, ignore_index=IGNORE))
    assert loss(main, torch.full_like(y, IGNORE)).item() == 0.0
    assert cross_entropy(main, torch.full_like(y, IGNORE)).item() == 0.0


def test_without_aux_heads_the_loss_is_the_main_loss() -> None:
    main, _, y = _example()
    for aux in (None, {}):
        parts = AuxSupervision("hard")(main, aux, y)
        assert set(parts) == {"loss", "main"} and parts["loss"] is parts["main"]
    logits, heads = split_output({"out": main, "aux": {"rgb": main}})
    assert logits is main and set(heads) == {"rgb"}
    assert split_output(main) == (main, {})


def test_rejects_unknown_mode_and_negative_weight() -> None:
    with pytest.raises(ValueError, match="self_teaching"):
        AuxSupervision("easy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        AuxSupervision("hard", weight=-1.0)


def test_remap_loss_equals_a_hand_computation():
    """Eq. 8 on two samples of two datasets: unified CE over all valid pixels plus the CE of
    each sample's own classes (unified classes its dataset lacks are ignored), pooled."""
    import math

    from rsfusion.data.labelspace import UnifiedLabelSpace
    from rsfusion.training.losses import RemapLoss

    space = UnifiedLabelSpace(
        ["road", "car", "sky", "wall"],
        {"a": [("road", "road"), ("sky", "sky")], "b": [("wall", "wall"), ("car", "car")]},
    )
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 1, 3)
    y = torch.tensor([[[0, 2, 1]], [[3, 1, 255]]])  # sample 0 (a): road, sky, car (not in a)

    def ce(scores, k):
        return -(scores[k] - math.log(sum(math.exp(v) for v in scores)))

    unified = [ce(logits[b, :, 0, i].tolist(), int(y[b, 0, i])) for b, i in
               [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]]  # fmt: skip
    own_a = [0, 2]  # a's classes road, sky as unified ids; b's wall, car
    own_b = [3, 1]
    remap = [
        ce([logits[0, u, 0, 0].item() for u in own_a], 0),  # road -> a's 0
        ce([logits[0, u, 0, 1].item() for u in own_a], 1),  # sky -> a's 1
        ce([logits[1, u, 0, 0].item() for u in own_b], 0),  # wall -> b's 0
        ce([logits[1, u, 0, 1].item() for u in own_b], 1),  # car -> b's 1
    ]
    parts = RemapLoss(space)(logits, y, ["a", "b"])
    assert float(parts["unified"]) == pytest.approx(sum(unified) / 5, rel=1e-5)
    assert float(parts["remap"]) == pytest.approx(sum(remap) / 4, rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(sum(unified) / 5 + sum(remap) / 4, rel=1e-5)
