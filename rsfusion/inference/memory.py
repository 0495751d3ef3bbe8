"""The memory a prediction needs, checked against what the machine has before any work.

Prediction's memory does not grow with a raster's height, but it does with its width (the band
of blended logits and the writers' tile rows span the whole width) and with the window (the
batches of windows in flight, their logits, the blending weights). A file only *declares* its
size (a VRT of a few hundred bytes can declare 10^6 x 10^6 pixels), so the sizes are checked
first, and a prediction that cannot fit is refused with the numbers instead of failing with a
MemoryError (or the machine swapping) part-way.

Example:
    >>> need = prediction_memory(width=2048, height=2048, window=512, stride=384, batch=4,
    ...                          bands=4, classes=6)
    >>> sorted(need), round(sum(need.values()) / 2**20)
    (['blending weights', 'logits', 'output rows', 'row band', 'windows in flight'], 222)
"""

from __future__ import annotations

import math

from rsfusion.errors import PredictionError
from rsfusion.hostmem import cpu_budget

GIB = 1 << 30


def available_memory() -> int:
    """Bytes this process may still allocate: the kernel's MemAvailable, capped by the room
    left under a cgroup (container) limit (:func:`rsfusion.hostmem.cpu_budget`); very large
    when neither can be read."""
    budget = cpu_budget()
    return budget.bytes if budget is not None else 1 << 62


def prediction_memory(
    *,
    width: int,
    height: int,
    window: int,
    stride: int,
    batch: int,
    bands: int,
    classes: int,
    output_bytes: int = 1,
    prefetch: int = 2,
) -> dict[str, int]:
    """Bytes the parts of a streamed prediction hold at once (the model's own memory aside).

    Args:
        width, height: the raster's size in pixels.
        window, stride: the window plan (``stride = window - overlap``).
        batch: windows per batch.
        bands: input bands (RGB and X together).
        classes: the model's classes.
        output_bytes: bytes per pixel of the output rasters together (classes 1, probabilities
            ``classes``, confidence 1).
        prefetch: batches the reader keeps ready.
    """
    rows = band_rows(height, width, window, stride, batch)  # window rows one batch can span
    return {
        # blended values and weights, and the finished block taken out of them (softmax, argmax)
        "row band": 2 * (classes + 1) * rows * width * 4,
        # one tile row (512) of every output, and the orthophoto's mask rows
        "output rows": min(512, height) * width * (output_bytes + 1),
        # batches being read, run and blended: float32 inputs
        "windows in flight": (prefetch + 2) * batch * bands * window * window * 4,
        # the model's float32 logits of a batch, and the batch being blended
        "logits": 2 * batch * classes * window * window * 4,
        # one weight map per combination of raster sides a window touches
        "blending weights": 10 * window * window * 4,
    }


def check_memory(need: dict[str, int], what: str, fix: str, available: int | None = None) -> None:
    """Refuse (with the numbers) a prediction whose parts need more than the memory available.

    Raises:
        PredictionError: ``what`` needs more than ``available`` (default:
            :func:`available_memory`) bytes; the message lists the parts and ``fix``.
    """
    total = sum(need.values())
    available = available_memory() if available is None else available
    if total <= available:
        return
    parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in need.items() if size)
    raise PredictionError(
        f"{what} needs at least {total / GIB:.1f} GiB of memory ({parts} GiB), the model aside, "
        f"and {available / GIB:.1f} GiB are available: {fix}"
    )


#: windows per forward pass when none is given and no GPU's memory decides (CPUs, ONNX Runtime)
DEFAULT_BATCH = 4
#: the share of the GPU's free memory an automatic batch may take (the rest: fragmentation,
#: cuDNN workspaces, the allocator's rounding)
GPU_BATCH_SHARE = 0.8
#: the largest automatic batch: more windows per forward pass no longer speed up a GPU, and the
#: reader must fill every batch
MAX_AUTO_BATCH = 64


def band_rows(height: int, width: int, window: int, stride: int, batch: int) -> int:
    """Rows of the blending band a batch of ``batch`` windows can need (see
    :func:`prediction_memory`)."""
    cols = 1 if width <= window else math.ceil((width - window) / stride) + 1
    rows_touched = 1 + math.ceil((batch - 1) / cols)
    return min(max(height, window), window + (rows_touched - 1) * stride)


def choose_batch(
    free: int, per_window: int, reserved: int = 0, windows: int | None = None,
    cap: int = MAX_AUTO_BATCH,
) -> int:  # fmt: skip
    """The largest batch whose windows fit in :data:`GPU_BATCH_SHARE` of ``free`` bytes after
    ``reserved`` ones (e.g. the blending band), at least 1, at most ``cap`` and ``windows``.

    ``per_window`` is the peak memory one more window in a forward pass takes (measured by
    :meth:`~rsfusion.inference.runner.ModelRunner.window_memory`).

    >>> choose_batch(free=80 * GIB, per_window=2 * GIB, reserved=GIB)
    31
    >>> choose_batch(free=GIB, per_window=2 * GIB), choose_batch(10 * GIB, 1, windows=3)
    (1, 3)
    """
    room = int(free * GPU_BATCH_SHARE) - reserved
    batch = room // max(per_window, 1)
    return int(max(1, min(batch, cap, windows if windows is not None else cap)))
