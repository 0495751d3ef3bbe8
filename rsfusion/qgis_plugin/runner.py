"""Run rsfusion's prediction in its own Python; report its progress; stop it on Cancel.

Standard library only: QGIS's Python imports this module and must never import torch. The
prediction runs as ``PYTHON -m rsfusion.cli.predict ...`` in a child process. Its output is read
line by line (``\\r`` ends a progress-bar update, ``\\n`` a line):

* stderr ``N pair(s), ...`` gives the number of pairs, ``STEM: ... MPix in ... s`` and
  ``STEM: outputs complete, skipped`` mark a finished pair, a progress bar's ``42%|`` the share
  of the pair in progress, and ``error: ...`` the one line saying why an input was refused;
* stdout ``classes: PATH`` (``probs``, ``confidence``, ``vector``) names a written output.

Cancel sends SIGINT (the prediction removes its temporary files and leaves nothing under a final
name), SIGTERM after a grace period, and SIGKILL as a last resort.

Example:
    >>> request = PredictRequest("model.ckpt", "ortho.tif", "dsm.tif", "out", window=512)
    >>> request.argv()
    ['--ckpt', 'model.ckpt', '--rgb', 'ortho.tif', '--x', 'dsm.tif', '--out', 'out', '--window', '512']
    >>> parse_stderr("top_area1: 0.1 MPix in 2.6 s, 0.04 MPix/s")
    ('done', 'top_area1')
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "OUTPUT_NAMES",
    "Feedback",
    "PredictRequest",
    "PredictRun",
    "RunError",
    "RunResult",
    "check_result",
    "child_environment",
    "existing_outputs",
    "parse_stderr",
    "predict_command",
]

#: the outputs predict.py names on stdout, in the order it writes them
OUTPUT_NAMES = ("classes", "probs", "confidence", "vector")
#: variables of QGIS's own Python and GDAL/PROJ that would mislead the rsfusion environment's
#: Python (its rasterio wheel brings its own GDAL and PROJ data)
_FOREIGN_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)
_TAG = r"(?:rank \d+/\d+: )?"
_PAIRS = re.compile(rf"^{_TAG}(\d+) pair\(s\)")
_DONE = re.compile(rf"^{_TAG}(.+?): [\d.]+ MPix in [\d.]+ s")
_SKIPPED = re.compile(rf"^{_TAG}(.+?): outputs complete, skipped$")
_PERCENT = re.compile(r"(\d{1,3})%\|")
_OUTPUT = re.compile(rf"^({'|'.join(OUTPUT_NAMES)}): (.+)$")
_SIGKILL = getattr(signal, "SIGKILL", 9)  # not on Windows (there: Popen.kill)


class Feedback(Protocol):
    """What the runner uses of ``QgsProcessingFeedback`` (a stub does for tests)."""

    def isCanceled(self) -> bool: ...

    def setProgress(self, progress: float) -> None: ...

    def pushInfo(self, info: str) -> None: ...

    def pushConsoleInfo(self, info: str) -> None: ...

    def reportError(self, error: str, fatalError: bool = False) -> None: ...


class RunError(Exception):
    """The prediction refused an input, failed or was cancelled (the message says which)."""


@dataclass
class PredictRequest:
    """The options of one ``predict.py`` call, as the Processing algorithms collect them.

    ``rgb`` and ``x`` are files, or folders for the folder mode; ``None`` leaves an option at
    predict.py's default.
    """

    checkpoint: str
    rgb: str
    x: str | None
    out: str
    dataset: str | None = None
    modality: str | None = None
    window: int | None = None
    overlap: int | None = None
    precision: str = "auto"
    probs: bool = False
    confidence: bool = False
    vector: bool = False
    min_area: float = 0.0
    simplify: float = 0.0
    cog: bool = False
    align: bool = False
    device: str = "auto"
    redo: bool = False

    def argv(self) -> list[str]:
        """predict.py's arguments (options at their default are left out)."""
        args = ["--ckpt", self.checkpoint, "--rgb", self.rgb]
        args += ["--x", self.x] if self.x else []
        args += ["--out", self.out]
        for flag, value in (("--dataset", self.dataset), ("--modality", self.modality)):
            args += [flag, value] if value else []
        for flag, number in (("--window", self.window), ("--overlap", self.overlap)):
            args += [flag, str(int(number))] if number is not None else []
        args += ["--precision", self.precision] if self.precision != "auto" else []
        args += ["--device", self.device] if self.device != "auto" else []
        for flag, on in (("--probs", self.probs), ("--confidence", self.confidence),
                         ("--vector", self.vector), ("--cog", self.cog), ("--align", self.align),
                         ("--redo", self.redo)):  # fmt: skip
            args += [flag] if on else []
        if self.vector and self.min_area > 0:
            args += ["--min-area", repr(float(self.min_area))]
        if self.vector and self.simplify > 0:
            args += ["--simplify", repr(float(self.simplify))]
        return args


def predict_command(python: str, request: PredictRequest) -> list[str]:
    """The child's command line: the rsfusion environment's Python running the predict CLI."""
    return [python, "-m", "rsfusion.cli.predict", *request.argv()]


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: QGIS's, less its Python and GDAL/PROJ paths, unbuffered output
    and progress lines asked for (``RSFUSION_PROGRESS=1``; ignored by a predict.py without)."""
    env = dict(os.environ if base is None else base)
    for name in _FOREIGN_ENV:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RSFUSION_PROGRESS"] = "1"
    return env


def parse_stderr(line: str) -> tuple[str, Any] | None:
    """What one stderr line says: ``("pairs", n)``, ``("done", stem)``, ``("skipped", stem)``,
    ``("percent", p)``, ``("error", line)``, ``("interrupted", line)`` or ``None``."""
    text = line.strip()
    if text.startswith("error: "):
        return "error", text
    if text.startswith("interrupted: "):
        return "interrupted", text
    if m := _PAIRS.match(text):
        return "pairs", int(m.group(1))
    if m := _DONE.match(text):
        return "done", m.group(1)
    if m := _SKIPPED.match(text):
        return "skipped", m.group(1)
    if m := _PERCENT.search(text):
        return "percent", min(100, int(m.group(1)))
    return None


@dataclass
class RunResult:
    """How a prediction ended: exit code, the outputs written (one dict per pair), the stems of
    the pairs finished (``skipped``: complete already, nothing written) and the lines that
    matter."""

    returncode: int
    cancelled: bool = False
    error: str | None = None
    interrupted: str | None = None
    outputs: list[dict[str, Path]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


class PredictRun:
    """One child process: started, read, reported to ``feedback``, stopped on Cancel.

    Args:
        command: the command line (see :func:`predict_command`).
        cwd: the child's working directory (the repository, so ``-m`` also finds an rsfusion
            that is not installed).
        env: the child's environment (default :func:`child_environment`).
        grace: seconds between SIGINT and SIGTERM, and between SIGTERM and SIGKILL.
        poll: seconds between checks of ``feedback.isCanceled()``.
    """

    def __init__(
        self,
        command: list[str],
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        grace: float = 15.0,
        poll: float = 0.1,
    ) -> None:
        self.command = [str(c) for c in command]
        self.cwd = str(cwd) if cwd else None
        self.env = child_environment() if env is None else env
        self.grace, self.poll = grace, poll
        self.signals_sent: list[int] = []

    def run(self, feedback: Feedback) -> RunResult:
        """Run to the end (or until cancelled), reporting lines and progress as they come."""
        lines: queue.Queue[tuple[str, str | None, str]] = queue.Queue()
        try:
            proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            )  # fmt: skip
        except OSError as err:
            raise RunError(
                f"cannot start {self.command[0]}: {err}; point the rsfusion provider's Python "
                "setting (or RSFUSION_PYTHON) at the Python of the rsfusion environment"
            ) from err
        readers = [
            threading.Thread(target=_read, args=(proc.stdout, "out", lines), daemon=True),
            threading.Thread(target=_read, args=(proc.stderr, "err", lines), daemon=True),
        ]
        for reader in readers:
            reader.start()
        result = RunResult(returncode=0)
        state = _Progress(feedback)
        tail: deque[str] = deque(maxlen=30)
        stop_since: float | None = None
        open_streams = 2
        while open_streams or proc.poll() is None:
            if feedback.isCanceled() and stop_since is None:
                result.cancelled = True
                stop_since = time.monotonic()
                feedback.pushInfo("Cancel: stopping the prediction (SIGINT)")
                self._signal(proc, signal.SIGINT)
            if stop_since is not None:
                self._escalate(proc, time.monotonic() - stop_since, feedback)
            if not open_streams:  # both pipes closed: only the exit is left to wait for
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.poll)
                continue
            try:
                stream, end, text = lines.get(timeout=self.poll)
            except queue.Empty:
                continue
            if end is None:
                open_streams -= 1
                continue
            self._take(stream, end, text, result, state, feedback, tail)
        for reader in readers:
            reader.join(timeout=5)
        result.returncode = proc.returncode
        result.tail = list(tail)
        if result.returncode == 0:
            feedback.setProgress(100.0)
        return result

    def _take(
        self,
        stream: str,
        end: str,
        text: str,
        result: RunResult,
        state: _Progress,
        feedback: Feedback,
        tail: deque[str],
    ) -> None:
        """Act on one line (or progress-bar update) of the child's output."""
        if stream == "out":
            if m := _OUTPUT.match(text.strip()):
                name, path = m.group(1), Path(m.group(2))
                if name == "classes" or not result.outputs:
                    result.outputs.append({})
                result.outputs[-1][name] = path
            if text.strip():
                feedback.pushConsoleInfo(text)
            return
        said = parse_stderr(text)
        if end == "\n" and text.strip():
            tail.append(text)
            if said is None or said[0] not in ("error", "percent"):
                feedback.pushConsoleInfo(text)
        if said is None:
            return
        kind, value = said
        if kind == "error":
            result.error = value
        elif kind == "interrupted":
            result.interrupted = value
        elif kind == "pairs":
            state.total = max(1, value)
            state.show(0.0)
        elif kind in ("done", "skipped"):
            result.finished.append(value)
            if kind == "skipped":
                result.skipped.append(value)
            state.done += 1
            state.show(0.0)
        elif kind == "percent":
            state.show(value / 100.0)

    def _escalate(self, proc: subprocess.Popen[bytes], waited: float, feedback: Feedback) -> None:
        """SIGTERM after one grace period, SIGKILL after two, while the child still runs."""
        if proc.poll() is not None:
            return
        if waited >= 2 * self.grace and signal.SIGTERM in self.signals_sent:
            if _SIGKILL not in self.signals_sent:
                feedback.reportError("the prediction did not stop on SIGTERM: killed (SIGKILL)")
                self._signal(proc, _SIGKILL)
        elif waited >= self.grace and signal.SIGTERM not in self.signals_sent:
            feedback.pushInfo("the prediction is still running: SIGTERM")
            self._signal(proc, signal.SIGTERM)

    def _signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        self.signals_sent.append(sig)
        try:
            if sys.platform == "win32" and sig == _SIGKILL:
                proc.kill()
            elif sys.platform == "win32":  # no SIGINT for another process there
                proc.terminate()
            else:
                proc.send_signal(sig)
        except ProcessLookupError:  # already gone
            pass


class _Progress:
    """Progress in percent: finished pairs plus the share of the pair in progress."""

    def __init__(self, feedback: Feedback) -> None:
        self.feedback, self.total, self.done = feedback, 1, 0

    def show(self, share: float) -> None:
        pct = 100.0 * min(self.total, self.done + share) / self.total
        self.feedback.setProgress(min(100.0, pct))


def _read(pipe: Any, stream: str, lines: queue.Queue[tuple[str, str | None, str]]) -> None:
    """Put ``(stream, end, text)`` for every ``\\n``-ended line and ``\\r``-ended update of a
    pipe on ``lines`` (``end`` is None once the pipe is closed)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    fd = pipe.fileno()
    while True:
        chunk = os.read(fd, 65536)
        buffer += decoder.decode(chunk, final=not chunk)
        while True:
            cut = min((i for i in (buffer.find("\r"), buffer.find("\n")) if i >= 0), default=-1)
            if cut < 0 or (buffer[cut] == "\r" and cut == len(buffer) - 1 and chunk):
                break  # no line end yet, or a "\r" that may be the start of "\r\n"
            end = "\n" if buffer[cut] == "\n" or buffer[cut : cut + 2] == "\r\n" else "\r"
            lines.put((stream, end, buffer[:cut]))
            buffer = buffer[cut + (2 if buffer[cut : cut + 2] == "\r\n" else 1) :]
        if not chunk:
            break
    if buffer:
        lines.put((stream, "\n", buffer))
    pipe.close()
    lines.put((stream, None, ""))


def existing_outputs(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The outputs of pair ``stem`` that are in ``out_dir`` (named as predict.py names them)."""
    names = {"classes": f"{stem}_classes.tif", "probs": f"{stem}_probs.tif",
             "confidence": f"{stem}_confidence.tif", "vector": f"{stem}.gpkg"}  # fmt: skip
    return {k: Path(out_dir) / v for k, v in names.items() if (Path(out_dir) / v).is_file()}


def check_result(result: RunResult, feedback: Feedback) -> None:
    """Raise :class:`RunError` unless the prediction succeeded; its ``error:`` line goes to
    ``feedback.reportError`` first (what QGIS shows in red in the log)."""
    if result.cancelled and result.returncode != 0:
        message = result.interrupted or (
            "interrupted: outputs completed before the cancel are kept, nothing half-written "
            "is left; rerun to complete"
        )
        raise RunError(f"cancelled ({message})")
    if result.returncode == 0:
        return
    if result.error:
        feedback.reportError(result.error, True)
        raise RunError(result.error)
    last = "\n".join(result.tail[-15:]) or "(no output)"
    message = f"the prediction failed with exit code {result.returncode}:\n{last}"
    feedback.reportError(message, True)
    raise RunError(message)
