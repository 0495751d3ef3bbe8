"""Train-time modality masking: MoBaNet's MCRM holes and KTB's MMST whole-modality zeroing.

Both methods hide part of one modality of a few samples during training, so the fused head cannot
lean on a single stream (MoBaNet, arXiv 2026; KTB, Cai et al., CVPR 2025):

- ``mcrm`` (MoBaNet, modality-conditional random masking): ``n = n_masked(fraction, B)`` samples;
  the first ``ceil(n / 2)`` of them get ``count`` holes zeroed in RGB, the rest in X. With
  ``shape="rect"`` (the default, and what MoBaNet's released training code does: one block per
  sample) each hole is a rectangle covering an area fraction drawn uniformly in ``area``, with an
  aspect ratio (width / height) drawn log-uniformly in ``aspect``; with ``shape="squares"`` each
  hole is a square of such an area (the several square holes the paper's overview figure draws).
  Every hole lies at a uniform position inside the map, independently of the others (holes may
  overlap, so ``count`` holes cover at most ``count`` times the drawn area).
- ``mmst`` (KTB, named MMST in the authors' code): ``n`` samples get their whole RGB zeroed and
  ``n`` *other* samples their whole X. The authors zero one sample per modality (batch 4, i.e.
  fraction .25); ``n`` is capped at ``B // 2`` so the two sets are equal and disjoint.

Decisions for small batches: ``n = floor(fraction * B + 0.5)`` (half-up, not Python's banker's
rounding), at least 1 when ``fraction > 0``. When a single modality can be masked (MCRM with
``n == 1``, MMST with ``B == 1``) it is chosen by a fair coin from the generator. MoBaNet's
released code instead masks ``floor(fraction * B)`` samples, the first ``n // 2`` in RGB and the
rest in the DSM: the same split at its batch of 24 (3 + 3), but with fraction .25 it masks
nothing below batch 4 and only the DSM from 4 to 7. No sample ever has both modalities masked.

Where the zeros go: MoBaNet masks the normalised inputs; KTB masks the token maps after patch
embedding. These differ: a zero input patch becomes the patch embedding's bias (plus, in Swin, its
LayerNorm of that bias, and later the position embedding), not a zero token. Both are offered by
one module: pass image-like maps (B, C, H, W), or token maps (B, N, C) with ``tokens_hw=(h, w)``
(``N == h * w``; split off cls/register tokens first). Rectangles are then drawn on the token grid.

Parameters are drawn apart from their application (as in Kornia), so one draw can be replayed on
another tensor with :meth:`ModalityMasking.apply`. Draws use ``generator`` (or torch's global RNG)
and are deterministic given it; masking is out of place and keeps the device and dtype.

Example:
    >>> masking = ModalityMasking(MaskingConfig(mode="mmst", fraction=0.25))
    >>> rgb, x = torch.ones(4, 3, 8, 8), torch.ones(4, 1, 8, 8)
    >>> r, s, info = masking(rgb, x, generator=torch.Generator().manual_seed(0))
    >>> int(info.rgb.sum()), int(info.x.sum()), bool((info.rgb & info.x).any())
    (1, 1, False)
    >>> float(r.sum() + s.sum()) == float(rgb.sum() + x.sum()) - 3 * 64 - 64
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

MaskingMode = Literal["none", "mcrm", "mmst"]
MaskingShape = Literal["rect", "squares"]
_MODES = ("none", "mcrm", "mmst")
_SHAPES = ("rect", "squares")


@dataclass
class MaskingConfig:
    """Train-time modality masking (MoBaNet MCRM / KTB MMST).

    Args:
        mode: ``"none"``, ``"mcrm"`` (holes in one modality) or ``"mmst"`` (whole modality).
        fraction: share of the batch masked (MCRM: in total; MMST: per modality).
        area: MCRM area of each hole as a fraction of the map, drawn uniformly in this range.
        aspect: MCRM rectangle width / height, drawn log-uniformly in this range (``rect``).
        shape: MCRM hole shape, ``"rect"`` (default) or ``"squares"``.
        count: MCRM holes per masked sample (default 1), each drawn on its own.
        where: ``"input"`` zeroes the normalised inputs (MoBaNet); ``"tokens"`` zeroes the token
            maps right after patch embedding (KTB's MMST), in models that accept a masking draw
            (the dual-stream engine); others fall back to the inputs.
    """

    mode: MaskingMode = "none"
    fraction: float = 0.25
    area: tuple[float, float] = (0.1, 0.3)
    aspect: tuple[float, float] = (0.5, 2.0)
    where: Literal["input", "tokens"] = "input"
    shape: MaskingShape = "rect"
    count: int = 1

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"masking mode must be one of {_MODES}, got {self.mode!r}")
        if self.shape not in _SHAPES:
            raise ValueError(f"masking shape must be one of {_SHAPES}, got {self.shape!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"masking count must be an integer >= 1, got {self.count!r}")
        if self.mode == "mmst" and (self.shape, self.count) != ("rect", 1):
            raise ValueError(
                "masking shape and count shape MCRM's holes; mode mmst zeroes whole maps: "
                "leave them at rect and 1"
            )
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"masking fraction must lie in [0, 1], got {self.fraction}")
        self.area = _range(self.area, "area")
        self.aspect = _range(self.aspect, "aspect")
        if self.area[1] > 1.0:
            raise ValueError(f"masking area must lie in (0, 1], got {self.area}")
        if self.where not in ("input", "tokens"):
            raise ValueError(f"masking where must be 'input' or 'tokens', got {self.where!r}")
        if self.where == "tokens" and self.mode == "mcrm":
            raise ValueError("masking where='tokens' is for whole-modality mmst; mcrm is 'input'")


def _range(value: tuple[float, float] | list[float], name: str) -> tuple[float, float]:
    """A validated (low, high) pair with 0 < low <= high (lists from YAML are accepted)."""
    if len(value) != 2:
        raise ValueError(f"masking {name} must be a (low, high) pair, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not 0.0 < lo <= hi:
        raise ValueError(f"masking {name} needs 0 < low <= high, got {value!r}")
    return lo, hi


@dataclass
class MaskingInfo:
    """What one draw masked; all tensors on the CPU.

    Attributes:
        mode: the masking mode of the draw.
        rgb: (B,) bool, samples whose RGB is masked.
        x: (B,) bool, samples whose X is masked (never together with ``rgb``).
        holes: (B, K, 4) long, ``(top, left, height, width)`` of each masked sample's K zeroed
            holes on the drawn grid (K = 1 and the whole grid for MMST); zeros where nothing
            is masked.
        size: (height, width) of the grid the holes refer to.
    """

    mode: MaskingMode
    rgb: Tensor
    x: Tensor
    holes: Tensor
    size: tuple[int, int] = (0, 0)

    @property
    def boxes(self) -> Tensor:
        """(B, 4): each sample's first hole (its only one with ``count=1``)."""
        return self.holes[:, 0]

    @property
    def masked(self) -> Tensor:
        """(B,) bool: samples with any modality masked."""
        return self.rgb | self.x

    def counts(self) -> dict[str, int]:
        """Numbers of masked samples per modality, for logging."""
        return {"rgb": int(self.rgb.sum()), "x": int(self.x.sum())}

    @staticmethod
    def empty(batch_size: int, mode: MaskingMode = "none", holes: int = 1) -> MaskingInfo:
        """A draw that masks nothing (room for ``holes`` holes per sample)."""
        no = torch.zeros(batch_size, dtype=torch.bool)
        boxes = torch.zeros(batch_size, holes, 4, dtype=torch.long)
        return MaskingInfo(mode, no, no.clone(), boxes)


def n_masked(fraction: float, batch_size: int) -> int:
    """Samples to mask: ``fraction * B`` rounded half-up, at least 1 when ``fraction > 0``."""
    if fraction <= 0 or batch_size < 1:
        return 0
    return min(batch_size, max(1, math.floor(fraction * batch_size + 0.5)))


def _rand(generator: torch.Generator | None, *shape: int) -> Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device).cpu()


def _randperm(generator: torch.Generator | None, n: int) -> list[int]:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=device).tolist()


def _rectangle(area: float, aspect: float, height: int, width: int) -> tuple[int, int]:
    """(h, w) of a rectangle with ``area`` (fraction) and ``aspect`` (w / h) that fits the map.

    A side longer than the map is clipped and the other side lengthened to keep the area.
    """
    pixels = area * height * width
    h = min(height, max(1, round(math.sqrt(pixels / aspect))))
    w = max(1, round(pixels / h))
    if w > width:  # too wide: clip the width, lengthen the height
        w = width
        h = min(height, max(1, round(pixels / width)))
    return h, w


def _square(area: float, height: int, width: int) -> int:
    """Side of a square with ``area`` (fraction of the map), clipped to the map."""
    return min(height, width, max(1, round(math.sqrt(area * height * width))))


class ModalityMasking(nn.Module):
    """Train-time modality masking (MoBaNet MCRM / KTB MMST), see :class:`MaskingConfig`.

    A parameter-free module: it masks only in training mode (``module.train()``); in eval mode
    and for ``mode="none"`` it returns its inputs unchanged. Without an X input (RGB-only models)
    nothing is masked: both modes are about the balance of two modalities.

    Args:
        cfg: the masking config (a dict is accepted too).
    """

    def __init__(self, cfg: MaskingConfig | dict | None = None) -> None:
        super().__init__()
        if cfg is None:
            cfg = MaskingConfig()
        self.cfg = cfg if isinstance(cfg, MaskingConfig) else MaskingConfig(**cfg)

    def extra_repr(self) -> str:
        c = self.cfg
        holes = f", shape={c.shape}, count={c.count}" if c.mode == "mcrm" else ""
        return f"mode={c.mode}, fraction={c.fraction}, area={c.area}, aspect={c.aspect}{holes}"

    def forward(
        self,
        rgb: Tensor,
        x: Tensor | None,
        generator: torch.Generator | None = None,
        tokens_hw: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor | None, MaskingInfo]:
        """Mask ``rgb`` and ``x`` (both (B, C, H, W), or (B, N, C) token maps with ``tokens_hw``).

        Returns:
            The masked (new) tensors, or the inputs themselves when nothing is masked, and the
            :class:`MaskingInfo` of the draw.
        """
        batch = rgb.shape[0]
        if not self.training or self.cfg.mode == "none" or x is None:
            return rgb, x, MaskingInfo.empty(batch, self.cfg.mode)
        if x.shape[0] != batch:
            raise ValueError(f"rgb and x batch sizes differ: {batch} vs {x.shape[0]}")
        size = _grid(rgb, tokens_hw)
        if _grid(x, tokens_hw) != size:
            raise ValueError(f"rgb and x maps differ in size: {size} vs {_grid(x, tokens_hw)}")
        info = self.draw(batch, size[0], size[1], generator)
        return (*self.apply(rgb, x, info, tokens_hw), info)

    def draw(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
    ) -> MaskingInfo:
        """Draw which samples and modalities to mask, and where, on a ``height x width`` grid."""
        mode = self.cfg.mode
        count = self.cfg.count if mode == "mcrm" else 1
        info = MaskingInfo.empty(batch_size, mode, count)
        info.size = (height, width)
        if mode == "none":
            return info
        n = n_masked(self.cfg.fraction, batch_size)
        if mode == "mmst" and batch_size >= 2:
            n = min(n, batch_size // 2)
        if n == 0:
            return info
        order = _randperm(generator, batch_size)
        if mode == "mmst":
            rgb_ids, x_ids = order[:n], order[n : 2 * n]
        else:
            rgb_ids, x_ids = order[: math.ceil(n / 2)], order[math.ceil(n / 2) : n]
        single = (mode == "mcrm" and n == 1) or (mode == "mmst" and batch_size == 1)
        if single and _rand(generator, 1).item() < 0.5:  # fair coin: which modality
            rgb_ids, x_ids = x_ids, rgb_ids
        info.rgb[rgb_ids] = True
        info.x[x_ids] = True
        if mode == "mmst":
            info.holes[info.masked] = torch.tensor([0, 0, height, width])
            return info
        lo_a, hi_a = self.cfg.area
        lo_r, hi_r = (math.log(v) for v in self.cfg.aspect)
        # 4 numbers per hole, one row per sample: replayable by index (one rectangle per
        # sample draws exactly what it drew before shapes and counts existed)
        u = _rand(generator, batch_size, 4 * count).double()
        for i in rgb_ids + x_ids:
            for j in range(count):
                a, r, t, left_u = (u[i, 4 * j + k].item() for k in range(4))
                area = lo_a + (hi_a - lo_a) * a
                if self.cfg.shape == "rect":
                    h, w = _rectangle(area, math.exp(lo_r + (hi_r - lo_r) * r), height, width)
                else:
                    h = w = _square(area, height, width)
                top = min(height - h, int(t * (height - h + 1)))
                left = min(width - w, int(left_u * (width - w + 1)))
                info.holes[i, j] = torch.tensor([top, left, h, w])
        return info

    @staticmethod
    def apply(
        rgb: Tensor,
        x: Tensor | None,
        info: MaskingInfo,
        tokens_hw: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Zero what ``info`` says in ``rgb`` and ``x`` (out of place; a replay of one draw).

        An MMST draw replays on maps of any size (e.g. drawn on the input, applied to tokens);
        an MCRM draw only on maps of the grid size it was drawn for.
        """
        rgb = _zero(rgb, info.rgb, info, tokens_hw)
        if x is not None:
            x = _zero(x, info.x, info, tokens_hw)
        return rgb, x


def _grid(t: Tensor, tokens_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) grid of a (B, C, H, W) map or a (B, N, C) token map."""
    if tokens_hw is None:
        if t.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) maps, got shape {tuple(t.shape)}")
        return int(t.shape[-2]), int(t.shape[-1])
    h, w = tokens_hw
    if t.ndim != 3 or t.shape[1] != h * w:
        raise ValueError(
            f"expected (B, N={h * w}, C) tokens for tokens_hw={tokens_hw}, got shape "
            f"{tuple(t.shape)} (split off cls/register tokens first)"
        )
    return h, w


def _zero(
    t: Tensor, selected: Tensor, info: MaskingInfo, tokens_hw: tuple[int, int] | None
) -> Tensor:
    """``t`` with each selected sample's box set to 0 (all channels); ``t`` itself if none."""
    if not bool(selected.any()):
        return t
    h, w = _grid(t, tokens_hw)
    if selected.shape[0] != t.shape[0]:
        raise ValueError(f"masking draw is for batch {selected.shape[0]}, got {t.shape[0]}")
    if info.mode == "mmst":  # whole maps, whatever their size
        inside = torch.ones(1, h, w, dtype=torch.bool)
    elif info.size != (h, w):
        raise ValueError(f"masking draw is for a {info.size} grid, got a {(h, w)} grid")
    else:
        rows = torch.arange(h).view(1, 1, h, 1)
        cols = torch.arange(w).view(1, 1, 1, w)
        top, left, bh, bw = (info.holes[..., k, None, None] for k in range(4))  # (B, K, 1, 1)
        inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        inside = inside.any(1)  # (B, h, w): inside any of the sample's holes
    mask = (inside & selected.view(-1, 1, 1)).to(t.device)  # (B, h, w)
    mask = mask.view(-1, h * w, 1) if tokens_hw is not None else mask.unsqueeze(1)
    return t.masked_fill(mask, 0)
