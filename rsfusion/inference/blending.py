"""Weight maps for blending overlapping sliding-window predictions.

A window plan with ``stride = window - overlap`` (see
:func:`~rsfusion.data.windows.plan_windows`) makes neighbouring windows share ``overlap``
pixels. :func:`weight_map` gives each window a weight that fades towards its edges, where the
network sees least context, and :func:`edge_aware` lifts that fade on the sides of a window that
touch the raster border, where no neighbour exists.

Modes:
    * ``"cosine"``: separable raised-cosine ramps of length ``overlap`` at each edge. Ramp values
      are sampled at pixel centres, ``0.5 * (1 - cos(pi * (i + 0.5) / overlap))``, so they start
      at a small positive value (never exactly 0) and the ramps of two windows overlapping by
      exactly ``overlap`` pixels sum to 1 (partition of unity).
    * ``"linear"``: the same with linear ramps, ``(i + 0.5) / overlap``.
    * ``"none"``: centre crop. Weight 1 on the central region, ``ceil(overlap / 2)`` pixels in
      from the leading edge and ``floor(overlap / 2)`` from the trailing edge, 0 elsewhere. With
      ``stride = window - overlap`` the central regions of neighbouring windows tile the raster
      without gaps, except in the outer margin of the raster, which only the border windows see
      and only through their cropped-away edge. :func:`edge_aware` sets those edges to 1, so with
      it every raster pixel is covered (it is required, not optional, in this mode).

Ramps longer than half the window are shortened to ``window // 2``. Profiles are scaled to peak
at exactly 1; this changes nothing when ``2 * overlap < window`` (the interior is already 1), and
otherwise only breaks the partition of unity, which does not matter because blended values are
divided by the summed weights.
"""

import math
from typing import Literal

import numpy as np
from rasterio.windows import Window

from rsfusion.errors import UserError

BlendMode = Literal["cosine", "linear", "none"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """Return ``value`` as a ``(rows, cols)`` pair of ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise UserError(f"{name} must be an int or a (rows, cols) pair of ints, got {value!r}")
    return pair[0], pair[1]


def profile_1d(size: int, overlap: int, mode: BlendMode) -> np.ndarray:
    """One-dimensional weight profile along one window axis.

    Args:
        size: Window length on this axis (> 0).
        overlap: Overlap between neighbouring windows, ``0 <= overlap < size``.
        mode: ``"cosine"``, ``"linear"`` or ``"none"`` (see the module docstring).

    Returns:
        A float32 array of length ``size``, symmetric for cosine/linear, with maximum 1.

    Raises:
        ValueError: On a bad size, overlap or mode.
    """
    if size <= 0:
        raise UserError(f"window size must be > 0, got {size}")
    if not 0 <= overlap < size:
        raise UserError(f"overlap must satisfy 0 <= overlap < window ({size}), got {overlap}")
    profile = np.ones(size, dtype=np.float64)
    if mode == "none":
        lead, trail = math.ceil(overlap / 2), overlap // 2
        profile[:lead] = 0.0
        profile[size - trail :] = 0.0
        return profile.astype(np.float32)
    if mode not in ("cosine", "linear"):
        raise UserError(f"mode must be 'cosine', 'linear' or 'none', got {mode!r}")
    ramp_len = min(overlap, size // 2)
    if ramp_len == 0:
        return profile.astype(np.float32)
    t = (np.arange(ramp_len) + 0.5) / ramp_len
    ramp = 0.5 * (1.0 - np.cos(np.pi * t)) if mode == "cosine" else t
    profile[:ramp_len] = ramp
    profile[size - ramp_len :] = ramp[::-1]
    return (profile / profile.max()).astype(np.float32)


def weight_map(
    window: int | tuple[int, int],
    overlap: int | tuple[int, int],
    mode: BlendMode = "cosine",
) -> np.ndarray:
    """Separable 2-D blending weights for one window.

    Args:
        window: Window size, an int or ``(rows, cols)``.
        overlap: Overlap between neighbouring windows (``window - stride``), an int or
            ``(rows, cols)``; ``0 <= overlap < window`` on each axis.
        mode: ``"cosine"``, ``"linear"`` or ``"none"`` (see the module docstring).

    Returns:
        A float32 array of shape ``(rows, cols)``: the outer product of the two axis profiles.
        Maximum 1; minimum > 0 for cosine and linear.

    Raises:
        ValueError: On a bad window, overlap or mode.
    """
    win_h, win_w = _pair(window, "window")
    ov_h, ov_w = _pair(overlap, "overlap")
    rows = profile_1d(win_h, ov_h, mode)
    cols = profile_1d(win_w, ov_w, mode)
    return np.outer(rows, cols).astype(np.float32)


def _lift_side(weights: np.ndarray, axis: int, leading: bool) -> None:
    """In place: running max from the centre out to one edge along ``axis``."""
    centre = weights.shape[axis] // 2
    view = np.moveaxis(weights, axis, 0)
    if leading:
        seg = view[: centre + 1][::-1]
        view[: centre + 1] = np.maximum.accumulate(seg, axis=0)[::-1]
    else:
        view[centre:] = np.maximum.accumulate(view[centre:], axis=0)


def edge_aware(weights: np.ndarray, win: Window, height: int, width: int) -> np.ndarray:
    """Remove the fade on the sides of a window that touch the raster border.

    A side touches the border when the window starts at row/column 0 or reaches (or runs past)
    the last row/column. On such a side the weights are replaced, from the window centre out to
    that edge, by their running maximum, which for a :func:`weight_map` (values rising
    monotonically from each edge to the centre) sets the ramp to 1 while keeping the other
    axis's profile. Raster border pixels are then not down-weighted, and in ``"none"`` mode they
    are covered at all.

    Args:
        weights: ``(rows, cols)`` weights of the window, e.g. from :func:`weight_map`.
        win: The window, in raster pixel coordinates.
        height: Raster height in pixels.
        width: Raster width in pixels.

    Returns:
        A new float32 array; ``weights`` is not modified.

    Raises:
        ValueError: If ``weights`` does not match the window size.
    """
    row_off, col_off = int(win.row_off), int(win.col_off)
    win_h, win_w = int(win.height), int(win.width)
    if weights.shape != (win_h, win_w):
        raise ValueError(f"weights have shape {weights.shape}, window is {(win_h, win_w)}")
    out = np.array(weights, dtype=np.float32, copy=True)
    if row_off <= 0:
        _lift_side(out, axis=0, leading=True)
    if row_off + win_h >= height:
        _lift_side(out, axis=0, leading=False)
    if col_off <= 0:
        _lift_side(out, axis=1, leading=True)
    if col_off + win_w >= width:
        _lift_side(out, axis=1, leading=False)
    return out
