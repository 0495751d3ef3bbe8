"""Batching samples of varying size (the papers' recipes rescale and crop per sample, done on
the CPU before batching): padding to a common size, and per-sample resize, random
rescale and random crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

Sample = dict[str, Tensor]


def pad_sample(sample: Sample, height: int, width: int, ignore_index: int) -> Sample:
    """Pad bottom/right to ``(height, width)``: images and X with 0, the mask with ignore."""
    h, w = sample["image"].shape[-2:]
    pad = (0, max(width - w, 0), 0, max(height - h, 0))
    if pad == (0, 0, 0, 0):
        return sample
    out = dict(sample)
    for key in ("image", "image_x"):
        if key in sample:
            out[key] = F.pad(sample[key], pad, value=0.0)
    out["mask"] = F.pad(sample["mask"], pad, value=ignore_index)
    return out


def pad_collate(samples: list[Sample], multiple: int = 32, ignore_index: int = 255) -> Sample:
    """Stack samples of any sizes: pad each to the batch's largest size rounded up to
    ``multiple`` (models with strided stages need it), masks with the ignore index."""
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    height, width = (-(-v // multiple) * multiple for v in (height, width))
    return default_collate([pad_sample(s, height, width, ignore_index) for s in samples])


class SampleResizeCrop:
    """Per-sample CPU resize, random rescale and random crop, for releases whose images differ
    in size (the papers' recipes: resize .5-2, then crop, e.g. KTB's SUN-RGBD 480x480).

    Args:
        size: fixed ``(h, w)`` every sample is resized to first, or None.
        scale_range: ``(min, max)`` random rescale factor, or None.
        crop: ``(h, w)`` random crop; smaller images are padded (X 0, mask ignore) first.
        ignore_index: mask value of padding.
        cat_max: mmseg's ``cat_max_ratio`` (CPAL: 0.75): a crop in which one class covers more
            than this fraction of the labelled pixels is drawn again, up to 10 times (the last
            draw is kept); 1.0 keeps the first draw.
    """

    def __init__(
        self,
        size: Sequence[int] | None = None,
        scale_range: Sequence[float] | None = None,
        crop: Sequence[int] | None = None,
        ignore_index: int = 255,
        cat_max: float = 1.0,
    ) -> None:
        if not 0 < cat_max <= 1:
            raise ValueError(f"cat_max must lie in (0, 1], got {cat_max}")
        self.cat_max = cat_max
        if scale_range is not None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max), 0 < min <= max: {scale_range}")
        for name, pair in (("size", size), ("crop", crop)):
            if pair is not None and (len(pair) != 2 or min(pair) < 1):
                raise ValueError(f"{name} must be [height, width] >= 1, got {pair}")
        self.size = tuple(size) if size else None
        self.scale_range = tuple(scale_range) if scale_range else None
        self.crop = tuple(crop) if crop else None
        self.ignore_index = ignore_index

    def _balanced(self, mask: Tensor) -> bool:
        """No class covers more than ``cat_max`` of the crop's labelled pixels (mmseg's rule:
        a crop with a single labelled class is also refused)."""
        labels = mask[mask != self.ignore_index]
        counts = torch.bincount(labels.flatten()) if labels.numel() else labels.new_zeros(0)
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        th, tw = self.size or (h, w)
        if self.scale_range is not None:
            lo, hi = self.scale_range
            s = lo + (hi - lo) * float(torch.rand(()))
            th, tw = max(1, round(th * s)), max(1, round(tw * s))
        out = dict(sample)
        if (th, tw) != (h, w):
            for key in ("image", "image_x"):
                if key in sample:
                    out[key] = F.interpolate(
                        sample[key][None], (th, tw), mode="bilinear", antialias=True
                    )[0]
            out["mask"] = F.interpolate(sample["mask"][None, None].float(), (th, tw))[0, 0].long()
        if self.crop is None:
            return out
        ch, cw = self.crop
        out = pad_sample(out, ch, cw, self.ignore_index)
        for _ in range(10 if self.cat_max < 1 else 1):
            top = int(torch.randint(0, out["image"].shape[-2] - ch + 1, ()))
            left = int(torch.randint(0, out["image"].shape[-1] - cw + 1, ()))
            if self.cat_max >= 1 or self._balanced(out["mask"][top : top + ch, left : left + cw]):
                break
        return {
            k: (
                v[..., top : top + ch, left : left + cw] if k in ("image", "image_x", "mask") else v
            )
            for k, v in out.items()
        }
