"""GPU-side batch augmentation and normalisation for RGB+X segmentation batches.

Batches are dicts ``{"image": (B,3,H,W) float RGB in 0-255, "image_x": (B,C,H,W) float X,
"mask": (B,H,W) long}``, as torchgeo's ``GeoDataModule.on_after_batch_transfer`` passes to
``train_aug`` / ``val_aug``. Other keys pass through untouched.

Kornia 0.9 pitfalls, checked by hand on 0.9.0 and (the first three) in tests/data/test_augment.py:

- Geometric ops pad masks with 0, a real class here. We encode the mask as ``ignore -> 0``,
  ``class -> class + 1`` before the warp and decode ``0 -> ignore`` after, so every pixel created
  by rotation or zoom-out is the ignore index whatever Kornia's own fill rules are (they differ by
  op and by fill size, and per-key ``extra_args`` replaces rather than merges the defaults).
- Dict mode silently passes unknown keys through untransformed; we call
  ``AugmentationSequential`` in list mode with ``data_keys=["input", "input", "mask"]``, so RGB, X
  and mask share one geometric draw (masks nearest, dtype kept, ``keepdim`` keeps ``(B,H,W)``).
- ``RandomRotation90(times=(0, 3))`` rounds a continuous uniform draw, so 0 and 3 quarter turns
  come half as often as 1 and 2; we draw from ``(-2.499, 1.499)``, which rounds to -2..1 (all
  four rotations) about uniformly. It is an affine warp: a non-square patch keeps its ``(H, W)``
  and gets padded corners, and bilinear images carry float noise (about 1e-4 on values ~30).
- ``ColorJitter`` expects 0-1 and clamps to it, and its saturation step refuses anything but 1 or
  3 channels: we scale RGB to 0-1 and back, and drop saturation for other channel counts.
"""

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

IMAGENET_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)
"""ImageNet RGB mean in 0-255 units."""
IMAGENET_STD_255: tuple[float, float, float] = (58.395, 57.12, 57.375)
"""ImageNet RGB standard deviation in 0-255 units."""

_ROT90_TIMES = (-2.499, 1.499)  # rounds to -2, -1, 0, 1 with about equal probability


def encode_mask(mask: Tensor, ignore_index: int) -> Tensor:
    """Map ``ignore_index -> 0`` and ``c -> c + 1`` so that zero padding means "ignore"."""
    return torch.where(mask == ignore_index, torch.zeros_like(mask), mask + 1)


def decode_mask(encoded: Tensor, ignore_index: int) -> Tensor:
    """Inverse of :func:`encode_mask`; 0 (including padding added in between) becomes ignore."""
    return torch.where(encoded <= 0, torch.full_like(encoded, ignore_index), encoded - 1)


class PairedAugment(nn.Module):
    """One random geometric draw applied to RGB, X and mask alike, plus RGB-only colour jitter.

    Example:
        >>> aug = PairedAugment(hflip=0.5, vflip=0.5, rot90=True, scale=(0.5, 2.0),
        ...                     color_jitter=0.2, ignore_index=255)
        >>> batch = {"image": torch.rand(2, 3, 32, 32) * 255, "image_x": torch.rand(2, 1, 32, 32),
        ...          "mask": torch.randint(0, 6, (2, 32, 32))}
        >>> out = aug(batch)
        >>> out["mask"].dtype, out["image_x"].shape
        (torch.int64, torch.Size([2, 1, 32, 32]))
    """

    def __init__(
        self,
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: bool = True,
        scale: tuple[float, float] | None = None,
        color_jitter: float = 0.0,
        ignore_index: int = 255,
        *,
        gaussian_blur: float = 0.0,
        p_scale: float = 1.0,
        p_color: float = 1.0,
        resample: str = "bilinear",
    ) -> None:
        """Build the augmentation.

        Args:
            hflip: Probability of a horizontal flip.
            vflip: Probability of a vertical flip.
            rot90: Whether to rotate by a random multiple of 90 degrees (uniform over 0-3 turns).
            scale: Zoom range ``(min, max)`` of a centred affine scale that keeps the output size
                (< 1 zooms out and pads, > 1 zooms in and crops); ``None`` disables it.
            color_jitter: Brightness/contrast/saturation strength for RGB only; 0 disables it.
            ignore_index: Mask value for ignored pixels, also used for all geometric padding.
            p_scale: Probability of applying the scale step.
            p_color: Probability of applying the colour jitter.
            resample: Interpolation for RGB and X ("bilinear" or "nearest"); masks use nearest.
            gaussian_blur: Probability of a 3x3 Gaussian blur (sigma 0.1-2) of the RGB image
                (SegRGB-X's "random Gaussian blur"; CMNeXt's pipeline blurs the RGB only).

        Raises:
            ValueError: On probabilities outside [0, 1], a bad scale range or a negative jitter.
        """
        super().__init__()
        for name, p in (
            ("hflip", hflip),
            ("vflip", vflip),
            ("p_scale", p_scale),
            ("p_color", p_color),
            ("gaussian_blur", gaussian_blur),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {p}")
        if scale is not None and not 0.0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        self.ignore_index = ignore_index

        ops: list[nn.Module] = []
        if hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip))
        if vflip > 0:
            ops.append(K.RandomVerticalFlip(p=vflip))
        if rot90:
            ops.append(K.RandomRotation90(times=_ROT90_TIMES, resample=resample, p=1.0))
        if scale is not None and p_scale > 0:
            ops.append(K.RandomAffine(degrees=0.0, scale=scale, resample=resample, p=p_scale))
        self.geometric = (
            K.AugmentationSequential(*ops, data_keys=["input", "input", "mask"], keepdim=True)
            if ops
            else None
        )

        self.jitter: nn.Module | None = None
        self.jitter_no_saturation: nn.Module | None = None
        if color_jitter > 0 and p_color > 0:
            s = color_jitter
            self.jitter = K.ColorJitter(s, s, s, p=p_color, keepdim=True)
            self.jitter_no_saturation = K.ColorJitter(s, s, 0.0, p=p_color, keepdim=True)

        self.blur: nn.Module | None = None
        if gaussian_blur > 0:
            self.blur = K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=gaussian_blur, keepdim=True)

    def _photometric(self, image: Tensor) -> Tensor:
        """Colour-jitter an RGB batch in 0-255 units (Kornia works in 0-1 and clamps)."""
        jitter = self.jitter if image.shape[1] in (1, 3) else self.jitter_no_saturation
        assert jitter is not None
        return (jitter(image.float() / 255.0) * 255.0).to(image.dtype)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Augment a batch.

        Args:
            batch: Dict with "image" and optionally "image_x" and "mask"; other keys pass through.

        Returns:
            A new dict with the same keys, shapes and dtypes.
        """
        out = dict(batch)
        if self.jitter is not None:
            out["image"] = self._photometric(batch["image"])
        if self.blur is not None:
            out["image"] = self.blur(out["image"].float()).to(batch["image"].dtype)
        if self.geometric is None:
            return out

        keys = [k for k in ("image", "image_x", "mask") if k in batch]
        tensors = [out[k] for k in keys]
        if "mask" in batch:
            tensors[-1] = encode_mask(batch["mask"], self.ignore_index)
        data_keys = ["mask" if k == "mask" else "input" for k in keys]
        result = self.geometric(*tensors, data_keys=data_keys)
        results = result if isinstance(result, list | tuple) else [result]
        for key, before, after in zip(keys, tensors, results, strict=True):
            after = after.reshape(before.shape).to(before.dtype)
            out[key] = decode_mask(after, self.ignore_index) if key == "mask" else after
        return out


def _as_buffer(values: Sequence[float] | float, name: str) -> Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)
    if tensor.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return tensor


class Normalise(nn.Module):
    """Per-modality normalisation ``(x - mean) / std`` of "image" and optionally "image_x".

    Example:
        >>> norm = Normalise()  # ImageNet statistics in 0-255 units, X left as is
        >>> out = norm({"image": torch.full((1, 3, 2, 2), 123.675), "image_x": torch.ones(1, 1, 2, 2)})
        >>> out["image"][0, 0, 0, 0].item(), out["image_x"].unique().item()
        (0.0, 1.0)
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN_255,
        std: Sequence[float] = IMAGENET_STD_255,
        x_mean: Sequence[float] | None = None,
        x_std: Sequence[float] | None = None,
    ) -> None:
        """Store the statistics.

        Args:
            mean: RGB mean per channel, in the image's units (0-255), or one value for all.
            std: RGB standard deviation per channel (> 0), or one value for all.
            x_mean: X mean per channel; ``None`` with ``x_std=None`` leaves X unchanged.
            x_std: X standard deviation per channel (> 0); defaults to 1 when only a mean is set.

        Raises:
            ValueError: On an empty or non-positive standard deviation.
        """
        super().__init__()
        self.register_buffer("mean", _as_buffer(mean, "mean"))
        self.register_buffer("std", _as_buffer(std, "std"))
        self.normalise_x = x_mean is not None or x_std is not None
        self.register_buffer("x_mean", _as_buffer(0.0 if x_mean is None else x_mean, "x_mean"))
        self.register_buffer("x_std", _as_buffer(1.0 if x_std is None else x_std, "x_std"))
        for name in ("std", "x_std"):
            if (getattr(self, name) <= 0).any():
                raise ValueError(
                    f"{name} must be > 0, got {getattr(self, name).flatten().tolist()}"
                )

    @staticmethod
    def _apply(x: Tensor, mean: Tensor, std: Tensor, key: str) -> Tensor:
        for name, stat in (("mean", mean), ("std", std)):
            if stat.shape[1] not in (1, x.shape[1]):
                raise ValueError(
                    f"{key} has {x.shape[1]} channels but its {name} has {stat.shape[1]} values"
                )
        mean = mean.to(device=x.device, dtype=x.dtype)
        std = std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return a new batch dict with "image" (and "image_x" if configured) normalised."""
        out = dict(batch)
        out["image"] = self._apply(batch["image"], self.mean, self.std, "image")
        if self.normalise_x and "image_x" in batch:
            out["image_x"] = self._apply(batch["image_x"], self.x_mean, self.x_std, "image_x")
        return out

    def describe(self) -> dict[str, list[float] | None]:
        """Statistics as plain lists, for checkpoints and outputs that describe themselves."""
        return {
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "x_mean": self.x_mean.flatten().tolist() if self.normalise_x else None,
            "x_std": self.x_std.flatten().tolist() if self.normalise_x else None,
        }


class BatchTransform(nn.Module):
    """Augment (optional) then normalise a batch dict; set as a datamodule's ``train_aug``/``val_aug``."""

    def __init__(
        self, augment: nn.Module | None = None, normalise: nn.Module | None = None
    ) -> None:
        """Compose the steps.

        Args:
            augment: Batch augmentation such as :class:`PairedAugment`, or ``None``.
            normalise: Batch normalisation such as :class:`Normalise`, or ``None``.
        """
        super().__init__()
        self.augment = augment
        self.normalise = normalise

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Apply augment then normalise; returns a new dict."""
        if self.augment is not None:
            batch = self.augment(batch)
        if self.normalise is not None:
            batch = self.normalise(batch)
        return batch


def build_train_augment(
    ignore_index: int = 255,
    *,
    hflip: float = 0.5,
    vflip: float = 0.5,
    rot90: bool = True,
    scale: tuple[float, float] | None = (0.5, 2.0),
    color_jitter: float = 0.2,
    normalise: Normalise | None = None,
) -> BatchTransform:
    """Training transform: :class:`PairedAugment` then ``normalise`` (ImageNet RGB by default).

    Args:
        ignore_index: Mask ignore value, also used for geometric padding.
        hflip: Horizontal flip probability.
        vflip: Vertical flip probability.
        rot90: Random quarter turns.
        scale: Zoom range, or ``None``.
        color_jitter: RGB colour jitter strength (0 = off).
        normalise: Normalisation step; defaults to ``Normalise()``.

    Returns:
        A :class:`BatchTransform`.
    """
    augment = PairedAugment(hflip, vflip, rot90, scale, color_jitter, ignore_index)
    return BatchTransform(augment, normalise if normalise is not None else Normalise())


def build_eval_transform(normalise: Normalise | None = None) -> BatchTransform:
    """Validation/test/predict transform: normalisation only (ImageNet RGB by default)."""
    return BatchTransform(None, normalise if normalise is not None else Normalise())
