"""Will a training step fit in memory? Measured on the real model before training starts.

A training step (forward, loss, backward) is run on the model as built, on the device training
uses, with a synthetic batch of the configured window, and the memory it adds is measured: on
CUDA torch's peak allocated bytes; on CPU the process's peak resident memory, which is what the
kernel's out-of-memory killer counts (Linux: freed heap memory is returned to the system with
glibc's ``malloc_trim``, the peak counter ``VmHWM`` of ``/proc/self/status`` is reset through
``/proc/self/clear_refs``, and read after the step). If the batch-1 cost times the configured
batch fits, that is enough; otherwise a batch-2 step separates the per-sample cost from the
fixed part (gradients of the trainable weights) and the two are extrapolated linearly to the
configured batch. An unmeasured step at 64 px runs first, so that what a process's first step
keeps for good (thread pools, kernel caches) does not hide in the batch-1 cost. The optimiser's state is added (AdamW: two float32 copies of the trainable
weights; SGD with momentum: one). What is free: ``MemAvailable`` and the container's cgroup
limit on CPU, the GPU's free memory on CUDA; 10 % of it is kept for data-loading workers,
validation and allocator slack.

The trial steps leave the model as they found it: RNG states, train/eval modes, buffers (batch
norms run in eval mode during them, which also lets a batch of one through), gradients, device.

Example:
    >>> step = StepMemory(at1=300 * MiB, at2=500 * MiB, seconds=0.1)
    >>> step.per_sample // MiB, step.fixed // MiB, step.at(8) // MiB
    (200, 100, 1700)
    >>> check = MemoryCheck(8, step, 0, Budget(GiB, "test"), "cpu")
    >>> check.fits, check.largest_batch()
    (False, 4)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rsfusion.hostmem import Budget, cgroup_budget, cpu_budget  # noqa: F401 (re-exported)

MiB = 2**20
GiB = 2**30

#: share of the free memory a training must leave free (data-loading workers, validation,
#: allocator slack)
HEADROOM = 0.10


@dataclass(frozen=True)
class StepMemory:
    """Memory a training step adds (bytes) at batch 1 and 2 (``at2`` None: not measured, the
    batch-1 cost is then taken as all per-sample, an upper bound), and the batch-1 step's
    duration."""

    at1: int
    at2: int | None
    seconds: float

    @property
    def per_sample(self) -> int:
        return self.at1 if self.at2 is None else max(self.at2 - self.at1, 0)

    @property
    def fixed(self) -> int:
        return max(self.at1 - self.per_sample, 0)

    def at(self, batch: int) -> int:
        """The step's memory at ``batch``, extrapolated linearly."""
        return self.fixed + batch * self.per_sample


@dataclass(frozen=True)
class MemoryCheck:
    """A measured step against a budget.

    Attributes:
        batch: the configured batch size (per device).
        step: the measured step.
        optimiser: bytes of optimiser state (not allocated by a single step).
        budget: what is free.
        device: the device, in words.
        processes: training processes sharing the budget (CPU DDP).
        note: extra words on the measurement (precision).
    """

    batch: int
    step: StepMemory
    optimiser: int
    budget: Budget
    device: str
    processes: int = 1
    note: str = ""

    @property
    def usable(self) -> int:
        return int(self.budget.bytes * (1 - HEADROOM))

    def need(self, batch: int) -> int:
        return self.processes * (self.step.at(batch) + self.optimiser)

    @property
    def fits(self) -> bool:
        return self.need(self.batch) <= self.usable

    def largest_batch(self) -> int:
        """The largest batch whose step fits (0: not even 1)."""
        room = self.usable // self.processes - self.optimiser - self.step.fixed
        if room < self.step.per_sample:
            return 0
        return room // max(self.step.per_sample, 1)

    def measured(self) -> str:
        """What was measured, in words."""
        one = f"{size(self.step.at1)} at batch 1, a {self.step.seconds:.1f} s step"
        if self.step.at2 is None:
            return one
        return (
            f"{one}, and {size(self.step.at2)} at batch 2: {size(self.step.per_sample)} per sample"
        )

    def summary(self) -> str:
        """One line for the log of a run that fits."""
        bound = "at most " if self.step.at2 is None else "about "
        times = f" x {self.processes} processes" if self.processes > 1 else ""
        return (
            f"memory check: a training step at batch {self.batch} needs {bound}"
            f"{size(self.need(self.batch))} on {self.device}{times} (measured "
            f"{self.measured()}{self.note}; optimiser state {size(self.optimiser)}); "
            f"{size(self.budget.bytes)} available ({self.budget.source}): fits"
        )

    def refusal(self, window: str, accumulate: int = 1) -> str:
        """The error message of a run that does not fit: the numbers and the settings that fit.

        Args:
            window: the input size in words with its key, e.g. ``256x256 px (data.window)``.
            accumulate: the configured ``trainer.accumulate_grad_batches``.
        """
        times = f" x {self.processes} processes" if self.processes > 1 else ""
        head = (
            f"a training step does not fit in memory: data.batch_size={self.batch} at "
            f"{window} on {self.device}{self.note} needs about {size(self.need(self.batch))}"
            f"{times} beyond the built model (measured {self.measured()}, plus {size(self.optimiser)} of optimiser "
            f"state), but {size(self.budget.bytes)} is available ({self.budget.source}), "
            f"{size(self.usable)} of it usable ({HEADROOM:.0%} kept free for data loading "
            "and validation)."
        )
        best = self.largest_batch()
        skip = " --no-memory-check trains anyway."
        if best == 0:
            key = window.rsplit("(", 1)[-1].rstrip(")") if "(" in window else "data.window"
            return (
                f"{head} Fix: even data.batch_size=1 needs about {size(self.need(1))}: use "
                f"smaller inputs ({key}; memory grows with their area), a smaller "
                "model.backbone, or a machine with more memory (or a GPU: "
                f"trainer.accelerator=gpu).{skip}"
            )
        fix = f"--set data.batch_size={best} (about {size(self.need(best))})"
        steps = math.ceil(self.batch / best)
        if steps > 1:
            per = math.ceil(self.batch / steps)
            same = "the same" if per * steps == self.batch else f"{per * steps} >="
            fix += (
                f", or data.batch_size={per} trainer.accumulate_grad_batches="
                f"{steps * accumulate} for {same} {self.batch} samples per optimiser step"
            )
        return f"{head} Fix: {fix}.{skip}"


def size(n: int) -> str:
    """Bytes in words: ``1.50 GiB``, ``12 MiB``."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


# ---------------------------------------------------------------- what is free
def available_memory(device: torch.device) -> Budget | None:
    """What is free for training on ``device`` (None: unknown on this system)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        name = torch.cuda.get_device_name(device)
        return Budget(free + cached, f"free memory of {device} ({name})")
    if device.type == "cpu":
        return cpu_budget()
    return None


# ---------------------------------------------------------------- measuring a step
class PeakUnavailable(RuntimeError):
    """This system cannot measure a CPU step's peak memory (not Linux, or /proc is closed)."""


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``; else nothing), so the
    resident memory is the memory in use."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise PeakUnavailable(f"no {field} in {_STATUS}")
    return int(match[1]) * 1024


@contextlib.contextmanager
def cpu_peak() -> Iterator[list[int]]:
    """Measure the resident memory a block adds at its peak (bytes, in the yielded list).

    Raises:
        PeakUnavailable: the peak counter cannot be read or reset here.
    """
    gc.collect()  # garbage freed during the block would lower its peak
    release_freed_memory()
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak resident set size (VmHWM) only
        base = _status_bytes("VmRSS")
    except OSError as err:
        raise PeakUnavailable(f"{_CLEAR_REFS}: {err.strerror or err}") from None
    out: list[int] = []
    yield out
    out.append(max(_status_bytes("VmHWM") - base, 0))


def step_bytes(run: Callable[[], None], device: torch.device) -> int:
    """The memory ``run`` (one training step) adds at its peak on ``device``, in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with cpu_peak() as peak:
        run()
    return peak[0]


@contextlib.contextmanager
def trial(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Run trial training steps on ``module`` (moved to ``device``, train mode, batch norms in
    eval mode) and leave it as it was: RNG states, modes, buffers, gradients, device."""
    modes = [(m, m.training) for m in module.modules()]
    buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
    home = next((p.device for p in module.parameters()), torch.device("cpu"))
    python, numpy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() without a trainer, etc.
            module.to(device)
            module.train()
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            yield
    finally:
        clear_grads(module)
        module.to(home)
        with torch.no_grad():
            for key, buffer in module.named_buffers():
                if key in buffers:
                    buffer.copy_(buffers[key])
        for m, mode in modes:
            m.training = mode
        random.setstate(python)
        np.random.set_state(numpy)
        if cuda:
            torch.cuda.empty_cache()
        release_freed_memory()


def clear_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def autocast_of(precision: str) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of a Lightning precision setting, and a note where the measurement
    is only an estimate for it (true half precision is measured in float32, an upper bound)."""
    text = str(precision)
    if text in ("bf16-mixed", "bf16"):
        return torch.bfloat16, ", bf16-mixed"
    if text in ("16-mixed", "16"):
        return torch.float16, ", 16-mixed"
    if text in ("32-true", "32"):
        return None, ""
    return None, f", measured in float32 for precision {text}"


def measure(
    step: Callable[[int], Tensor],
    module: nn.Module,
    device: torch.device,
    enough: Callable[[StepMemory, Budget], bool],
    warmup: Callable[[], Tensor] | None = None,
) -> tuple[StepMemory, Budget | None]:
    """Measure ``step`` (batch size -> loss) at batch 1, then at batch 2 unless ``enough``
    says the batch-1 upper bound already fits; with the budget read after the last step (on
    the device the model sits on; None: unknown here).

    ``warmup`` (a small step, e.g. at 64 px) runs first and unmeasured: the memory that the
    first step of a process keeps for good (thread pools, kernel caches, library handles)
    would otherwise count towards batch 1 only and make the per-sample cost look smaller.
    """

    def run(n: int) -> Callable[[], None]:
        def go() -> None:
            step(n).backward()

        return go

    with trial(module, device):
        if warmup is not None:
            # too small for this model (RuntimeError, ValueError): measured cold then
            with contextlib.suppress(RuntimeError, ValueError):
                warmup().backward()
            clear_grads(module)
        start = time.perf_counter()
        at1 = step_bytes(run(1), device)
        seconds = time.perf_counter() - start
        first = StepMemory(at1, None, seconds)
        budget = _budget(module, device)
        if budget is None or enough(first, budget):
            return first, budget
        at2 = step_bytes(run(2), device)
        return StepMemory(at1, at2, seconds), _budget(module, device)


def _budget(module: nn.Module, device: torch.device) -> Budget | None:
    """What is free now, with the step's gradients dropped and freed heap memory returned."""
    clear_grads(module)
    release_freed_memory()
    return available_memory(device)


def optimiser_bytes(model: nn.Module, name: str, momentum: float) -> int:
    """Bytes of optimiser state for ``model``'s trainable weights (AdamW: 2 per weight; SGD:
    1 with momentum)."""
    states = 2 if name == "adamw" else int(momentum != 0)
    return states * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- a config's training step
def train_size(data: Any) -> tuple[tuple[int, int], str] | None:
    """The (height, width) of a training batch of a config's ``data`` section and the key that
    sets it; None where images keep their varying sizes."""
    from rsfusion.catalog import load_card

    if data.joint is not None:
        from rsfusion.data.joint import joint_sources

        sizes = [train_size(src) for _, src, _ in joint_sources(data)]
        if any(s is None for s in sizes):
            return None
        return max((s for s in sizes if s is not None), key=lambda s: s[0][0] * s[0][1])
    card = load_card(data.card)
    if card.kind != "natural":
        return (data.window, data.window), "data.window"
    hw = data.crop or data.resize or card.image_size
    if hw is None:
        return None
    m = max(data.pad_multiple, 1)
    return (math.ceil(hw[0] / m) * m, math.ceil(hw[1] / m) * m), "data.crop"


def synthetic_step(
    task: Any, datamodule: Any, data: Any, hw: tuple[int, int], device: torch.device,
    dtype: torch.dtype | None,
) -> Callable[[int], Tensor]:  # fmt: skip
    """A training step of ``task`` on a random batch of ``n`` samples of size ``hw`` (as the
    datamodule delivers them: normalised RGB and X, labels, dataset and modality names)."""
    spec = task.spec
    if getattr(datamodule, "cards", None):  # a joint run: the first source's names
        dataset, modality = datamodule.cards[0], datamodule.source_cfgs[0].x or ""
    else:
        dataset, modality = datamodule.card.name, data.x or ""

    def step(n: int) -> Tensor:
        batch: dict[str, Any] = {
            "image": torch.randn(n, spec.rgb_channels, *hw, device=device),
            "mask": torch.randint(0, spec.num_classes, (n, *hw), device=device),
            "dataset": [dataset] * n,
            "modality": [modality] * n,
        }
        if spec.x_channels:
            batch["image_x"] = torch.randn(n, spec.x_channels, *hw, device=device)
        if dtype is None:
            return task.training_step(batch, 0)
        with torch.autocast(device.type, dtype=dtype):
            return task.training_step(batch, 0)

    return step


def check_training_memory(
    cfg: Any, task: Any, datamodule: Any, trainer: Any, log: Callable[[str], None] = print
) -> MemoryCheck | None:
    """Measure a training step of ``task`` and refuse a run that does not fit.

    Args:
        cfg: the experiment config (batch size, window, optimiser, trainer settings).
        task: the :class:`~rsfusion.training.task.SegmentationTask`, built.
        datamodule: its datamodule (not set up: only names are read).
        trainer: the ``lightning.Trainer`` that will train (device, precision, processes).
        log: where the progress and result lines go.

    Returns:
        The check, or None where it cannot be made here (the reason is logged).

    Raises:
        ConfigError: the step does not fit; the message gives the numbers and the
            ``data.batch_size`` (and gradient accumulation) that fit.
    """
    from rsfusion.errors import ConfigError

    try:
        device = torch.device(trainer.strategy.root_device)
    except Exception:  # an exotic strategy: nothing to measure on
        device = torch.device("meta")
    if device.type not in ("cpu", "cuda"):
        log(f"memory check skipped: it measures on CPU or CUDA, not {device.type}")
        return None
    found = train_size(cfg.data)
    if found is None:
        log("memory check skipped: the training images keep their varying sizes (data.crop "
            "sets one)")  # fmt: skip
        return None
    hw, key = found
    dtype, note = autocast_of(getattr(trainer, "precision", "32-true"))
    processes = int(trainer.num_devices) if device.type == "cpu" else 1
    batch = cfg.data.batch_size
    optimiser = optimiser_bytes(task.model, cfg.optim.name, cfg.optim.momentum)
    where = f"{device.type}" if device.type == "cpu" else str(device)

    def check_of(step: StepMemory, budget: Budget) -> MemoryCheck:
        return MemoryCheck(batch, step, optimiser, budget, where, processes, note)

    log(f"memory check: measuring a training step on {where} (--no-memory-check skips it)")
    step = synthetic_step(task, datamodule, cfg.data, hw, device, dtype)
    small = synthetic_step(task, datamodule, cfg.data, (min(hw[0], 64), min(hw[1], 64)), device,
                           dtype)  # fmt: skip
    try:
        measured, budget = measure(
            step, task, device, lambda s, b: check_of(s, b).fits, warmup=lambda: small(1)
        )
    except PeakUnavailable as err:
        log(f"memory check skipped: this system cannot measure peak memory ({err})")
        return None
    if budget is None:
        log("memory check skipped: the free memory cannot be read on this system")
        return None
    check = check_of(measured, budget)
    if not check.fits:
        accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
        accumulate = accumulate if isinstance(accumulate, int) and accumulate > 0 else 1
        raise ConfigError(check.refusal(f"{hw[0]}x{hw[1]} px ({key})", accumulate))
    log(check.summary())
    return check
