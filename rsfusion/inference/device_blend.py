"""Blending, argmax and softmax on the model's device: only what is written comes back.

On a GPU the host-side path (float32 logits of every window copied back, blended in numpy,
argmax and softmax on the CPU) costs more than the model itself: a batch of 8 windows of 512 px
and 6 classes is 50 MB of float32 logits per forward pass. Here the windows are blended into a
:class:`DeviceBandAccumulator` that lives on the device, each finished band of rows is turned
into its outputs there (:func:`band_outputs`: uint8 classes, and uint8 probabilities and
confidence when asked), and only those bytes travel, into pinned host buffers with non-blocking
copies (:class:`HostCopies`), while the model already runs on the next batch.

The arithmetic is the host path's, operation for operation (:class:`RowBandAccumulator` and
:func:`~rsfusion.inference.predict.class_map`): ``sum(w * logits) / sum(w)``, then the first of
tied maxima, so the classes are the same pixels; probabilities may differ by one level of 255
where the two ``exp`` implementations round differently.

It also plans a GPU run for :func:`~rsfusion.inference.predict.predict_pair`:
:func:`device_plan` (where to blend, and the batch from the GPU's free memory),
:func:`check_device_memory` and :func:`run_on_device` (one batch run, blended and its finished
rows' copies started).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor

from rsfusion.errors import PredictionError
from rsfusion.inference.accumulator import check_window
from rsfusion.inference.memory import (
    DEFAULT_BATCH,
    MAX_AUTO_BATCH,
    band_rows,
    check_memory,
    choose_batch,
)
from rsfusion.inference.runner import ModelRunner

if TYPE_CHECKING:
    from rsfusion.inference.predict import PredictOptions
    from rsfusion.inference.reader import InputNorm
    from rsfusion.models.checkpoint import CheckpointMeta

DeviceBlock = tuple[int, Tensor, Tensor]


class DeviceBandAccumulator:
    """:class:`~rsfusion.inference.accumulator.RowBandAccumulator` on a torch device.

    Same contract (``add`` row-major, ``flush(next_row_off)``, ``finish()``), same memory bound
    (``2 * band_rows * width * channels`` float32 values), tensors instead of arrays. Every
    operation is queued on the device's stream: nothing waits for the GPU.

    Args:
        height: Raster height in pixels (> 0).
        width: Raster width in pixels (> 0).
        channels: Channels per pixel (classes) (> 0).
        window_rows: Window height in pixels; the initial band height (clipped to ``height``).
        device: Where the band lives.
    """

    def __init__(
        self, height: int, width: int, channels: int, window_rows: int, device: torch.device
    ) -> None:
        if min(height, width, channels, window_rows) <= 0:
            raise ValueError(
                f"height, width, channels and window_rows must be > 0, got "
                f"{(height, width, channels, window_rows)}"
            )
        self.height, self.width, self.channels = height, width, channels
        self.device = torch.device(device)
        self._start = 0
        self._alloc(min(window_rows, height))

    def _alloc(self, rows: int) -> None:
        self._values = torch.zeros(self.channels, rows, self.width, device=self.device)
        self._weights = torch.zeros(rows, self.width, device=self.device)

    @staticmethod
    def nbytes_for(width: int, channels: int, rows: int) -> int:
        """Bytes of a band of ``rows`` rows: values, weights and one flushed block."""
        return 4 * rows * width * (2 * channels + 2)

    @property
    def band_rows(self) -> int:
        """Rows currently held in the band."""
        return self._weights.shape[0]

    @property
    def next_row(self) -> int:
        """First raster row that has not been flushed yet."""
        return self._start

    def add(self, win: Window, values: Tensor, weights: Tensor) -> None:
        """Accumulate ``values * weights`` and ``weights`` (device tensors) over a window.

        Raises:
            ValueError: as :meth:`RowBandAccumulator.add`.
        """
        row_end, col_end = check_window(
            win, tuple(values.shape), tuple(weights.shape), self.channels,
            self.height, self.width, self._start,
        )  # fmt: skip
        if row_end - self._start > self.band_rows:
            old_values, old_weights = self._values, self._weights
            self._alloc(row_end - self._start)
            self._values[:, : old_weights.shape[0]] = old_values
            self._weights[: old_weights.shape[0]] = old_weights
        row_off, col_off = int(win.row_off), int(win.col_off)
        h, w = row_end - row_off, col_end - col_off
        rows = slice(row_off - self._start, row_end - self._start)
        wts = weights[:h, :w]
        self._values[:, rows, col_off:col_end] += values[:, :h, :w] * wts
        self._weights[rows, col_off:col_end] += wts

    def flush(self, up_to_row: int) -> Iterator[DeviceBlock]:
        """Release the rows above ``up_to_row`` as ``(row, block, weight_sum)`` device tensors:
        weighted means (channels, n, width), 0 where no window reached."""
        stop = min(up_to_row, self.height)
        if stop <= self._start:
            return iter(())
        start, band = self._start, self.band_rows
        n = min(stop - start, band)
        wsum = self._weights[:n].clone()
        block = torch.where(wsum > 0, self._values[:, :n] / wsum, 0.0)
        keep = band - n
        self._values[:, :keep] = self._values[:, n:].clone()
        self._weights[:keep] = self._weights[n:].clone()
        self._values[:, keep:] = 0
        self._weights[keep:] = 0
        self._start = stop
        return self._blocks((start, block, wsum), start + n, stop, band)

    def _blocks(self, first: DeviceBlock, empty_from: int, stop: int, chunk: int):
        yield first
        for row in range(empty_from, stop, chunk):
            n = min(chunk, stop - row)
            yield (
                row,
                torch.zeros(self.channels, n, self.width, device=self.device),
                torch.zeros(n, self.width, device=self.device),
            )

    def finish(self) -> Iterator[DeviceBlock]:
        """Release all remaining rows; call after the last window."""
        return self.flush(self.height)


def band_outputs(block: Tensor, probs: bool, confidence: bool) -> dict[str, Tensor]:
    """The written outputs of a blended (K, n, W) block, computed on its device.

    ``classes`` (1, n, W): the first of tied maxima (``torch.argmax`` returns the first index),
    uint8 up to 256 classes, else int32 (cast by the writer); ``probs`` (K, n, W) and
    ``confidence`` (1, n, W): ``rint(255 * softmax)`` and its maximum, uint8.
    """
    k = block.shape[0]
    classes = block.argmax(0, keepdim=True).to(torch.uint8 if k <= 256 else torch.int32)
    out = {"classes": classes}
    if probs or confidence:
        # the host path's softmax: exp(l - max) / sum, in float32
        p = torch.exp(block - block.amax(0, keepdim=True))
        p = p / p.sum(0, keepdim=True)
        if confidence:
            out["confidence"] = torch.round(p.amax(0, keepdim=True) * 255).to(torch.uint8)
        if probs:
            out["probs"] = torch.round(p * 255).to(torch.uint8)
    return out


class HostCopies:
    """Device tensors copied to the host without blocking the caller.

    On a GPU each tensor goes into a pinned (page-locked) buffer with a non-blocking copy and a
    CUDA event records the copies' completion; :meth:`wait` (called by the writing thread)
    waits for that event only. The pinned buffers are fresh per band: the caching host
    allocator reuses freed ones, so no copy can overwrite a band still being written. On a CPU
    the tensors are the arrays already.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.event: torch.cuda.Event | None = None
        if tensors and next(iter(tensors.values())).device.type == "cuda":
            self.host = {}
            for name, t in tensors.items():
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                self.host[name] = buf
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = {name: t.cpu() for name, t in tensors.items()}

    def wait(self) -> dict[str, np.ndarray]:
        """The outputs as numpy arrays, once their copies have landed."""
        if self.event is not None:
            self.event.synchronize()
        return {name: t.numpy() for name, t in self.host.items()}


def run_on_device(
    runner: ModelRunner,
    rgb: np.ndarray,
    x: np.ndarray | None,
    norm: InputNorm,
    batch: Sequence[Window],
    acc: DeviceBandAccumulator,
    next_row: int,
    extra: tuple[bool, bool],
    weights: Callable[[Window], Tensor],
) -> list[tuple[int, HostCopies]]:
    """Run a batch, blend it on the device and start copying back the finished rows' outputs
    (``weights``: a window's blending weights on the device); nothing here waits for the GPU."""
    with out_of_memory(runner, rgb):
        logits = runner.run(rgb, x, norm)
        for wn, lg in zip(batch, logits):
            acc.add(wn, lg, weights(wn))
        return [
            (row, HostCopies(band_outputs(block, *extra))) for row, block, _ in acc.flush(next_row)
        ]


@contextlib.contextmanager
def out_of_memory(runner: ModelRunner, rgb: np.ndarray) -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise PredictionError(
            f"out of memory on {runner.device} running the model on {len(rgb)} window(s) of "
            f"{rgb.shape[-1]} px: use a smaller --batch-size or --window ({err})"
        ) from err


def device_plan(
    opts: PredictOptions,
    runner: ModelRunner,
    meta: CheckpointMeta,
    window: int,
    overlap: int,
    size: tuple[int, int],
    windows: int,
) -> tuple[int, bool]:
    """The batch size and whether to blend on the device, for a raster of ``size`` (w, h).

    On a GPU (a PyTorch model): the band of blended rows goes on the device when it takes at
    most :data:`DEVICE_BAND_SHARE` of the free memory (``blend_on="auto"``), and an automatic
    batch is the most windows that fit in the rest
    (:func:`~rsfusion.inference.memory.choose_batch`, from the runner's measured
    :meth:`~rsfusion.inference.runner.ModelRunner.window_memory`, cached per window size).
    Elsewhere: :data:`DEFAULT_BATCH` and the host, unless ``blend_on="device"``.
    """
    gpu = runner.device.type == "cuda" and not callable(getattr(runner.model, "describe", None))
    if not gpu:
        return opts.batch_size or DEFAULT_BATCH, opts.blend_on == "device"
    width, height = size
    k, stride = len(meta.classes), window - overlap
    free = gpu_free_memory(runner.device)
    rows = band_rows(height, width, window, stride, opts.batch_size or MAX_AUTO_BATCH)
    band = DeviceBandAccumulator.nbytes_for(width, k, rows)
    on_device = opts.blend_on == "device" or (
        opts.blend_on == "auto" and band <= DEVICE_BAND_SHARE * free
    )
    if opts.batch_size is not None:
        return opts.batch_size, on_device
    with out_of_memory(runner, np.zeros((1, 1, window))):  # measured once per window size
        fixed, per_window = runner.window_memory(len(meta.rgb_bands), len(meta.x_bands), window)
    free = gpu_free_memory(runner.device)
    reserved = fixed + (band if on_device else 0)
    return choose_batch(free, per_window, reserved, windows), on_device


#: the most of a GPU's free memory the band of blended rows may take (else blended on the host)
DEVICE_BAND_SHARE = 0.25


def gpu_free_memory(device: torch.device) -> int:
    """Bytes free on a GPU, counting what torch's caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def check_device_memory(
    runner: ModelRunner, window: int, bands: int, classes: int, batch: int
) -> None:
    """Refuse a batch whose inputs and logits alone exceed the GPU's free memory."""
    if runner.device.type != "cuda":
        return
    free = gpu_free_memory(runner.device)
    views = len(runner.scales) * (2 if runner.flip else 1)
    need = {"inputs": batch * bands * window * window * 4}
    need["logits"] = 2 * views * batch * classes * window * window * 4
    check_memory(
        need, f"running the model on {runner.device} (window {window}, batch {batch})",
        "use a smaller --window or --batch-size", available=free,
    )  # fmt: skip
