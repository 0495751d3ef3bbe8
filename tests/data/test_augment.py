"""Tests for rsfusion.data.augment (CPU, small batches)."""

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from rsfusion.data.augment import (
    IMAGENET_MEAN_255,
    BatchTransform,
    Normalise,
    PairedAugment,
    build_eval_transform,
    build_train_augment,
)


def coord_batch(b: int, h: int, w: int, ignore_index: int) -> dict[str, torch.Tensor]:
    """RGB = (row, col, 7), X = row*W+col, mask = row*W+col (a unique class per pixel)."""
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, h, w)
    ids = rows * w + cols
    assert ignore_index >= h * w
    return {
        "image": torch.cat([rows, cols, torch.full_like(rows, 7.0)], 1).contiguous(),
        "image_x": ids.clone(),
        "mask": ids[:, 0].long(),
    }


def source_ids(out: dict[str, torch.Tensor], w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source pixel id per output pixel as read from RGB and from X."""
    rgb = out["image"]
    return rgb[:, 0] * w + rgb[:, 1], out["image_x"][:, 0]


@pytest.mark.parametrize(("h", "w"), [(32, 32), (24, 40)])
def test_alignment_nearest_is_exact(h: int, w: int) -> None:
    """One draw moves RGB, X and mask identically: all three name the same source pixel."""
    torch.manual_seed(0)
    ignore = 10_000
    aug = PairedAugment(0.5, 0.5, True, (0.5, 2.0), 0.0, ignore, resample="nearest")
    batch = coord_batch(4, h, w, ignore)
    moved = 0
    for _ in range(15):
        out = aug(batch)
        valid = out["mask"] != ignore
        from_rgb, from_x = source_ids(out, w)
        mask = out["mask"].float()
        assert valid.float().mean() > 0.1
        assert torch.equal(from_rgb[valid], mask[valid])
        assert torch.equal(from_x[valid], mask[valid])
        assert (out["image"][:, 2][valid] == 7).all()
        # Padding: images are zero where the mask is ignore.
        assert (out["image"][:, 2][~valid] == 0).all() and (out["image_x"][:, 0][~valid] == 0).all()
        moved += int(not torch.equal(out["mask"], batch["mask"]))
    assert moved >= 10


def test_alignment_bilinear_within_interpolation_tolerance() -> None:
    """Bilinear RGB/X sample where the nearest mask samples, up to half a pixel."""
    torch.manual_seed(1)
    h = w = 32
    ignore = 10_000
    aug = PairedAugment(0.5, 0.5, True, (0.5, 2.0), 0.0, ignore)
    batch = coord_batch(4, h, w, ignore)
    for _ in range(15):
        out = aug(batch)
        valid = (out["mask"] != ignore).float().unsqueeze(1)
        # Bilinear blends in zero padding next to any border, including the frame when a slight
        # zoom-out samples just outside it while nearest still rounds inside: keep pixels 2 px in.
        interior = (-F.max_pool2d(-F.pad(valid, (2, 2, 2, 2)), 5, stride=1))[:, 0].bool()
        assert interior.float().mean() > 0.1
        mask = out["mask"]
        rgb = out["image"]
        assert (rgb[:, 0][interior] - (mask // w)[interior].float()).abs().max() <= 0.5 + 1e-3
        assert (rgb[:, 1][interior] - (mask % w)[interior].float()).abs().max() <= 0.5 + 1e-3
        from_rgb, from_x = source_ids(out, w)
        assert torch.allclose(from_x[interior], from_rgb[interior], atol=1e-2)


def test_flips_and_rot90_reach_all_eight_orientations_uniformly() -> None:
    """Kornia rounds a continuous `times`; our range gives each quarter turn about 1/4."""
    torch.manual_seed(2)
    h = w = 4
    ignore = 255
    batch = coord_batch(400, h, w, ignore)
    out = PairedAugment(0.5, 0.5, True, None, 0.0, ignore)(batch)
    assert (out["mask"] != ignore).all()  # square patch: no padding
    corners = out["mask"][:, 0, 0]  # which source corner lands top-left, with the next pixel
    orientation = corners * 100 + out["mask"][:, 0, 1]
    counts = torch.unique(orientation, return_counts=True)[1]
    assert len(counts) == 8
    assert counts.min() >= 25 and counts.max() <= 80  # 50 expected each


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": (0.5, 0.6)},  # zoom out: borders on all sides
        {"rot90": True, "size": (16, 32)},  # a quarter turn of a non-square patch
    ],
)
def test_geometric_padding_is_ignore_never_zero(kwargs: dict) -> None:
    torch.manual_seed(3)
    ignore = 255
    h, w = kwargs.pop("size", (32, 32))
    opts = {"rot90": False, "scale": None} | kwargs
    aug = PairedAugment(0.0, 0.0, opts["rot90"], opts["scale"], 0.0, ignore)
    mask = torch.zeros(4, h, w, dtype=torch.long)  # class 0 everywhere, no ignore in the input
    batch = {
        "image": torch.full((4, 3, h, w), 100.0),
        "image_x": torch.ones(4, 1, h, w),
        "mask": mask,
    }
    seen_border = False
    for _ in range(5):
        out = aug(batch)["mask"]
        assert set(out.unique().tolist()) <= {0, ignore}
        seen_border |= bool((out == ignore).any())
        assert (out[:, 0, 0] == ignore).all() or opts["rot90"]
    assert seen_border


def test_kornia_alone_pads_masks_with_zero() -> None:
    """The pitfall PairedAugment works around: plain Kornia fills mask borders with class 0."""
    seq = K.AugmentationSequential(
        K.RandomAffine(degrees=0.0, scale=(0.5, 0.5), p=1.0), data_keys=["input", "mask"]
    )
    mask = torch.full((1, 1, 16, 16), 3, dtype=torch.long)
    _, out = seq(torch.rand(1, 3, 16, 16), mask)
    assert out[0, 0, 0, 0] == 0


def test_kornia_dict_mode_skips_unknown_keys() -> None:
    """The other pitfall: an unrecognised dict key is returned untransformed."""
    seq = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), data_keys=None)
    x = torch.arange(4.0).view(1, 1, 1, 4)
    out = seq({"image": x, "dsm": x})
    assert torch.equal(out["image"].flatten(), x.flip(-1).flatten())
    assert torch.equal(out["dsm"], x)


def test_photometric_changes_rgb_only() -> None:
    torch.manual_seed(4)
    batch = coord_batch(4, 16, 16, 1000)
    batch["image"] = torch.rand(4, 3, 16, 16) * 255
    batch["mask"] = torch.randint(0, 6, (4, 16, 16))
    out = PairedAugment(0.0, 0.0, False, None, 0.5, 255)(batch)
    assert not torch.allclose(out["image"], batch["image"])
    assert out["image"].min() >= 0 and out["image"].max() <= 255
    assert out["image"].max() > 1  # still in 0-255 units, not 0-1
    assert torch.equal(out["image_x"], batch["image_x"])
    assert torch.equal(out["mask"], batch["mask"])


def test_photometric_with_geometry_leaves_x_aligned_to_mask() -> None:
    torch.manual_seed(5)
    ignore = 10_000
    out = PairedAugment(0.5, 0.5, True, None, 0.5, ignore)(coord_batch(4, 16, 16, ignore))
    assert torch.allclose(out["image_x"][:, 0], out["mask"].float(), atol=1e-3)


def test_shapes_dtypes_and_extra_keys_preserved() -> None:
    torch.manual_seed(6)
    batch = {
        "image": torch.rand(3, 3, 24, 40) * 255,
        "image_x": torch.rand(3, 2, 24, 40, dtype=torch.float64),
        "mask": torch.randint(0, 6, (3, 24, 40)),
        "bounds": torch.arange(12.0).view(3, 4),
    }
    snapshot = {k: v.clone() for k, v in batch.items()}
    out = build_train_augment(255, color_jitter=0.3)(batch)
    assert out.keys() == batch.keys()
    for key, value in batch.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype, key
        assert torch.equal(value, snapshot[key]), f"input {key} was modified"
    assert torch.equal(out["bounds"], batch["bounds"])
    assert set(out["mask"].unique().tolist()) <= set(range(6)) | {255}


def test_rgb_only_batch_without_mask() -> None:
    out = PairedAugment(1.0, 0.0, False, None, 0.0, 255)(
        {"image": torch.arange(4.0).view(1, 1, 1, 4)}
    )
    assert torch.equal(out["image"].flatten(), torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_all_off_is_identity() -> None:
    batch = coord_batch(2, 16, 16, 1000)
    for aug in (
        PairedAugment(0.0, 0.0, False, None, 0.0, 255),
        PairedAugment(0.0, 0.0, False, (0.5, 2.0), 0.4, 255, p_scale=0.0, p_color=0.0),
    ):
        out = aug(batch)
        assert all(torch.equal(out[k], batch[k]) for k in batch)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="hflip"):
        PairedAugment(hflip=1.5)
    with pytest.raises(ValueError, match="scale"):
        PairedAugment(scale=(2.0, 0.5))
    with pytest.raises(ValueError, match="color_jitter"):
        PairedAugment(color_jitter=-0.1)
    with pytest.raises(ValueError, match="std"):
        Normalise(std=(1.0, 0.0, 1.0))


def test_normalise_gives_zero_mean_unit_std() -> None:
    torch.manual_seed(7)
    mean, std = (100.0, 50.0, 20.0), (30.0, 10.0, 5.0)
    x_mean, x_std = (3.0,), (2.0,)
    image = torch.randn(4, 3, 64, 64) * torch.tensor(std).view(1, 3, 1, 1)
    image = image + torch.tensor(mean).view(1, 3, 1, 1)
    image_x = torch.randn(4, 1, 64, 64) * 2.0 + 3.0
    mask = torch.randint(0, 6, (4, 64, 64))
    out = Normalise(mean, std, x_mean, x_std)({"image": image, "image_x": image_x, "mask": mask})
    for t in (out["image"], out["image_x"]):
        dims = (0, 2, 3)
        assert torch.allclose(t.mean(dims), torch.zeros(t.shape[1]), atol=0.02)
        assert torch.allclose(t.std(dims), torch.ones(t.shape[1]), atol=0.02)
    assert torch.equal(out["mask"], mask)
    # Default: ImageNet RGB in 0-255 units, X untouched.
    plain = Normalise()(
        {"image": torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1), "image_x": image_x}
    )
    assert torch.allclose(plain["image"], torch.zeros(1, 3, 1, 1), atol=1e-5)
    assert torch.equal(plain["image_x"], image_x)
    assert Normalise().describe()["x_mean"] is None
    # Buffers follow the batch's device (the datamodule does not move its transforms).
    on_meta = Normalise()({"image": torch.zeros(1, 3, 2, 2, device="meta")})["image"]
    assert on_meta.device.type == "meta"
    with pytest.raises(ValueError, match="channels"):
        Normalise()({"image": torch.zeros(1, 4, 2, 2)})


def test_batch_transform_composes_augment_then_normalise() -> None:
    batch = {"image": torch.arange(4.0).view(1, 1, 1, 4), "mask": torch.arange(4).view(1, 1, 4)}
    transform = BatchTransform(
        PairedAugment(1.0, 0.0, False, None, 0.0, 255), Normalise((1.0,), (2.0,))
    )
    out = transform(batch)
    assert torch.equal(out["image"].flatten(), (torch.tensor([3.0, 2.0, 1.0, 0.0]) - 1) / 2)
    assert torch.equal(out["mask"].flatten(), torch.tensor([3, 2, 1, 0]))
    evaluated = build_eval_transform(Normalise((1.0,), (2.0,)))(batch)
    assert torch.equal(evaluated["mask"], batch["mask"])
    assert torch.equal(evaluated["image"], (batch["image"] - 1) / 2)


def test_gaussian_blur_touches_the_rgb_only():
    from rsfusion.data.augment import PairedAugment

    aug = PairedAugment(hflip=0.0, vflip=0.0, rot90=False, gaussian_blur=1.0)
    batch = {"image": torch.rand(2, 3, 16, 16) * 255, "image_x": torch.rand(2, 1, 16, 16),
             "mask": torch.randint(0, 6, (2, 16, 16))}  # fmt: skip
    out = aug(batch)
    assert not torch.allclose(out["image"], batch["image"])
    assert torch.equal(out["image_x"], batch["image_x"]) and torch.equal(out["mask"], batch["mask"])

    # a blur smooths: neighbouring pixels differ less
    def rough(t):
        return (t[..., 1:] - t[..., :-1]).abs().mean()

    assert rough(out["image"]) < rough(batch["image"])
    with pytest.raises(ValueError, match="gaussian_blur"):
        PairedAugment(gaussian_blur=1.5)
