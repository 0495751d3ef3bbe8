"""The model side of prediction: device, precision, memory format and test-time augmentation.

:class:`ModelRunner` turns batches of windows (numpy) into float32 logits (numpy): normalised
on the device when they come raw from the reader, optionally with one input zeroed (the missing-modality table), under bfloat16 / float16 autocast
with channels_last where the hardware supports it, and with flip and multi-scale test-time
augmentation (logits of every view resized back and summed, as in mmsegmentation's aug_test).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.errors import UserError
from rsfusion.inference.fold import fold_batchnorm
from rsfusion.models.base import SegmentationModel
from rsfusion.models.peft.lora import fold_lora

if TYPE_CHECKING:
    from rsfusion.inference.reader import InputNorm

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str = "auto") -> torch.device:
    """'auto': this rank's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU.

    Raises:
        UserError: a device name torch does not know, or a GPU that is not there.
    """
    if name != "auto":
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as err:
            raise UserError(
                f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N"
            ) from err
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise UserError(
                    f"--device {name}: no CUDA GPU is visible to torch here (torch "
                    f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu "
                    "or auto (the GPU when there is one, else the CPU)"
                )
            if device.index is not None and device.index >= count:
                raise UserError(
                    f"--device {name}: there are {count} GPU(s), cuda:0..cuda:{count - 1}"
                )
        elif device.type not in ("cpu", "mps", "xpu"):
            raise UserError(f"--device {name}: use auto, cpu, cuda or cuda:N")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """'auto': bf16 on GPUs that support it (else fp16) and on CPUs with AMX/AVX512-BF16."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UserError("fp16 autocast is for GPUs; use --precision bf16 or fp32 on a CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


class ModelRunner:
    """Run a segmentation model on numpy batches and return float32 numpy logits.

    Args:
        model: takes ``(rgb, x)`` tensors (x may be None) and returns logits or ``{"out": ...}``.
        device: 'auto', 'cpu', 'cuda', 'cuda:1', ...
        precision: 'auto', 'fp32', 'bf16' or 'fp16' (autocast; logits come back as float32).
        channels_last: NHWC memory format (default: with bf16/fp16).
        flip: add the horizontally flipped view (test-time augmentation).
        scales: input scales; each view's logits are resized back to the window and summed.
        drop: 'rgb' or 'x' zeroes that input after normalisation (as training's masking does).
        pad_multiple: zero-pad every view right/bottom to a multiple of this before the forward
            pass (models with strided stages), and crop the logits back.
        fp32_stages: with bf16/fp16, the embeddings and this many first stages of a dual-stream
            engine model run in float32 (default 1; MoBaNet-Lite0 on the demo scene: 99.17 ->
            99.79 % of pixels equal to fp32, at 2.66x -> 2.25x fp32's speed on one machine, and
            within run-to-run noise, 0.23-0.27 s per batch either way, on an AMD Zen 4 with
            freed memory kept). Set on the model.
        fold_bn: fold eval BatchNorms into the convolutions feeding them, once the first batch
            has shown which feeds which (:func:`~rsfusion.inference.fold.fold_batchnorm`), and
            on CPUs fuse the ReLU / ReLU6 after them into the convolutions as oneDNN post-ops.
            Like channels_last, this changes ``model`` in place. LoRA layers are always folded
            into their weights (:func:`~rsfusion.models.peft.lora.fold_lora`).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: Precision = "auto",
        channels_last: bool | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        drop: str | None = None,
        pad_multiple: int = 1,
        fp32_stages: int = 1,
        fold_bn: bool = True,
    ) -> None:
        self.pad_multiple = max(1, pad_multiple)
        self._window_memory: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.fold_pending = fold_bn
        self.folded = 0
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = (self.precision != "fp32") if channels_last is None else channels_last
        self.flip, self.scales, self.drop = flip, tuple(scales), drop
        if drop not in (None, "rgb", "x"):
            raise ValueError(f"drop must be None, 'rgb' or 'x', got {drop!r}")
        if not self.scales or min(self.scales) <= 0:
            raise UserError(f"scales must be positive, got {self.scales}")
        self.model = model.eval().to(self.device)
        self.lora_folded = fold_lora(self.model)  # W + (alpha / r) B A, one matmul per layer
        if isinstance(self.model, SegmentationModel) and self.model.has_fp32_stages:
            self.model.fp32_stages = fp32_stages if self.precision != "fp32" else 0
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def describe(self) -> str:
        tta = f", flip={self.flip}, scales={list(self.scales)}" if self.augmented else ""
        own = getattr(self.model, "describe", None)  # a model run by another runtime (ONNX)
        if callable(own):
            return f"{own()}{tta}"
        return f"{self.device} {self.precision} channels_last={self.channels_last}{tta}"

    @property
    def augmented(self) -> bool:
        return self.flip or self.scales != (1.0,)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _tensor(self, array: np.ndarray | None) -> Tensor | None:
        """The array on the device; to a GPU through pinned memory with a non-blocking copy
        (the caching host allocator reuses a pinned block only once its copy has finished)."""
        if array is None:
            return None
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def inputs(
        self, rgb: np.ndarray, x: np.ndarray | None, norm: InputNorm | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Model inputs on the device: normalised (when ``norm`` is given), dropped, laid out."""
        r, s = self._tensor(rgb), self._tensor(x)
        assert r is not None
        if norm is not None:
            r, s = norm(r, s)
        if self.drop == "rgb":
            r = torch.zeros_like(r)
        if self.drop == "x" and s is not None:
            s = torch.zeros_like(s)
        if self.channels_last:
            r = r.contiguous(memory_format=torch.channels_last)
            s = None if s is None else s.contiguous(memory_format=torch.channels_last)
        return r, s

    def _forward(self, rgb: Tensor, x: Tensor | None) -> Tensor:
        h, w = rgb.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        if ph or pw:
            rgb = F.pad(rgb, (0, pw, 0, ph))
            x = None if x is None else F.pad(x, (0, pw, 0, ph))
        out = self.model(rgb, x)
        return (out["out"] if isinstance(out, dict) else out).float()[..., :h, :w]

    def logits(self, rgb: Tensor, x: Tensor | None) -> Tensor:
        """Summed logits of every view (scales x flips) at the input size, float32."""
        size = rgb.shape[-2:]
        total: Tensor | None = None
        for scale in self.scales:
            r, s = rgb, x
            if scale != 1.0:
                new = [max(1, round(v * scale)) for v in size]
                r = F.interpolate(rgb, size=new, mode="bilinear", align_corners=False)
                s = None if x is None else F.interpolate(x, size=new, mode="bilinear")
            for flipped in (False, True) if self.flip else (False,):
                rr, ss = (r.flip(-1), None if s is None else s.flip(-1)) if flipped else (r, s)
                out = self._forward(rr, ss)
                out = out.flip(-1) if flipped else out
                if out.shape[-2:] != size:
                    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                total = out if total is None else total + out
        assert total is not None
        return total

    def __call__(
        self, rgb: np.ndarray, x: np.ndarray | None = None, norm: InputNorm | None = None
    ) -> np.ndarray:
        """Logits (B, K, H, W) float32 for inputs (B, C, H, W): normalised ones, or raw ones
        from :class:`~rsfusion.inference.reader.WindowReader` with their ``norm``."""
        return self.run(rgb, x, norm).cpu().numpy()

    def window_memory(self, rgb_bands: int, x_bands: int, window: int) -> tuple[int, int]:
        """``(fixed, per_window)``: the GPU memory a forward pass of this runner takes beyond
        what is allocated already, as ``fixed + batch * per_window`` bytes at its peak.

        Measured with forward passes of one and two zero windows (after a first pass that
        also folds the BatchNorms), once per window size and bands, so it includes the views of
        test-time augmentation, the precision and the memory format;
        :func:`~rsfusion.inference.memory.choose_batch` turns it into a batch size.
        """
        if self.device.type != "cuda":
            raise ValueError(f"window_memory measures a GPU, not {self.device}")
        key = (rgb_bands, x_bands, window)
        if key in self._window_memory:  # measured already
            return self._window_memory[key]
        peaks = []
        for batch in (1, 1, 2):
            rgb = np.zeros((batch, rgb_bands, window, window), np.float32)
            x = np.zeros((batch, x_bands, window, window), np.float32) if x_bands else None
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.run(rgb, x)
            torch.cuda.synchronize(self.device)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - base)
        per_window = max(peaks[2] - peaks[1], 1)
        self._window_memory[key] = (max(peaks[1] - per_window, 0), per_window)
        return self._window_memory[key]

    @torch.inference_mode()
    def run(
        self, rgb: np.ndarray, x: np.ndarray | None = None, norm: InputNorm | None = None
    ) -> Tensor:
        """:meth:`__call__`'s logits left on the device (queued there, not waited for)."""
        r, s = self.inputs(rgb, x, norm)
        with self._autocast():
            if self.fold_pending:  # this batch's forward shows which convolution feeds which BN
                self.fold_pending = False
                out, self.folded = fold_batchnorm(
                    self.model, lambda: self.logits(r, s), fuse_act=self.device.type == "cpu"
                )
                if self.channels_last:
                    self.model.to(memory_format=torch.channels_last)
            else:
                out = self.logits(r, s)
        return out
