"""The plugin's runner (standard library only): predict.py's options, its output read as
progress, outputs and the ``error:`` line, and Cancel (SIGINT, then SIGTERM, then SIGKILL)."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rsfusion.cli.predict import build_parser
from rsfusion.qgis_plugin.runner import (
    PredictRequest,
    PredictRun,
    RunError,
    check_result,
    child_environment,
    existing_outputs,
    parse_stderr,
    predict_command,
)


class StubFeedback:
    """What QgsProcessingFeedback records, with Cancel pressed ``cancel_after`` seconds after a
    console line containing ``cancel_on`` arrived; ``watch``: a folder listed at that moment."""

    def __init__(
        self, cancel_on: str | None = None, cancel_after: float = 0.0, watch: Path | None = None
    ) -> None:
        self.console: list[str] = []
        self.info: list[str] = []
        self.errors: list[str] = []
        self.progress: list[float] = []
        self.cancel_on, self.cancel_after = cancel_on, cancel_after
        self.seen_at: float | None = None
        self.watch, self.listed_at_cancel = watch, None

    def isCanceled(self) -> bool:  # noqa: N802
        pressed = self.seen_at is not None and time.monotonic() - self.seen_at >= self.cancel_after
        if pressed and self.watch is not None and self.listed_at_cancel is None:
            self.listed_at_cancel = sorted(p.name for p in self.watch.glob("*"))
        return pressed

    def setProgress(self, progress: float) -> None:  # noqa: N802
        self.progress.append(progress)

    def pushInfo(self, info: str) -> None:  # noqa: N802
        self.info.append(info)

    def pushConsoleInfo(self, info: str) -> None:  # noqa: N802
        self.console.append(info)
        if self.cancel_on and self.cancel_on in info and self.seen_at is None:
            self.seen_at = time.monotonic()

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
        self.errors.append(error)


def fake_child(tmp_path: Path, body: str) -> list[str]:
    """A command running ``body`` (Python) as the child, in place of predict.py."""
    script = tmp_path / "child.py"
    head = "import os, signal, sys, time\n"
    script.write_text(head + textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_every_option_is_one_predict_py_accepts():
    request = PredictRequest(
        "m.ckpt", "rgb.tif", "dsm.tif", "out", dataset="vaihingen", modality="dsm", window=256,
        overlap=0, precision="bf16", probs=True, confidence=True, vector=True, min_area=2.5,
        simplify=0.5, cog=True, align=True, device="cpu", redo=True,
    )  # fmt: skip
    args = build_parser().parse_args(request.argv())
    assert (args.ckpt, args.rgb, args.x, args.out) == ("m.ckpt", "rgb.tif", "dsm.tif", "out")
    assert (args.dataset, args.modality, args.window, args.overlap) == ("vaihingen", "dsm", 256, 0)
    assert (args.precision, args.device, args.min_area, args.simplify) == ("bf16", "cpu", 2.5, 0.5)
    assert args.probs and args.confidence and args.vector and args.cog and args.align and args.redo
    plain = build_parser().parse_args(PredictRequest("m.ckpt", "rgb", None, "o").argv())
    defaults = build_parser().parse_args(["--ckpt", "m.ckpt", "--rgb", "rgb", "--out", "o"])
    assert vars(plain) == vars(defaults)
    command = predict_command("/venv/bin/python", request)
    assert command[:3] == ["/venv/bin/python", "-m", "rsfusion.cli.predict"]


def test_stderr_lines_are_read_as_progress_errors_and_pairs():
    assert parse_stderr("3 pair(s), cpu fp32 channels_last=False") == ("pairs", 3)
    assert parse_stderr("rank 1/2: 2 pair(s), cuda bf16") == ("pairs", 2)
    assert parse_stderr("a_b: 1.2 MPix in 3.4 s, 0.35 MPix/s") == ("done", "a_b")
    assert parse_stderr("a_b: outputs complete, skipped") == ("skipped", "a_b")
    assert parse_stderr("area1:  42%|####      | 0.1/0.3 MPix [00:01<00:02]") == ("percent", 42)
    assert parse_stderr("error: --x d.tif: no such file") == (
        "error",
        "error: --x d.tif: no such file",
    )
    assert parse_stderr("interrupted: nothing was left")[0] == "interrupted"
    assert parse_stderr("weights loaded from x") is None


def test_child_environment_drops_qgis_python_and_gdal_paths():
    env = child_environment({"PYTHONPATH": "/qgis", "PROJ_LIB": "/p", "PATH": "/bin", "A": "1"})
    assert env["PATH"] == "/bin" and env["A"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert "PYTHONPATH" not in env and "PROJ_LIB" not in env


def test_outputs_progress_and_lines_reach_the_feedback(tmp_path):
    (tmp_path / "b_classes.tif").write_bytes(b"")
    command = fake_child(
        tmp_path,
        r"""
        sys.stderr.write("2 pair(s), cpu fp32\n"); sys.stderr.flush()
        print("classes: /o/a_classes.tif"); print("vector: /o/a.gpkg")
        sys.stderr.write("a: 50%|#####     |\r"); sys.stderr.flush()
        sys.stderr.write("a: 0.1 MPix in 1.0 s, 0.10 MPix/s\n")
        sys.stderr.write("b: outputs complete, skipped\n")
    """,
    )
    feedback = StubFeedback()
    result = PredictRun(command, grace=1.0).run(feedback)
    check_result(result, feedback)  # no exception: it succeeded
    assert result.returncode == 0 and not result.cancelled
    assert result.outputs == [{"classes": Path("/o/a_classes.tif"), "vector": Path("/o/a.gpkg")}]
    assert result.finished == ["a", "b"] and result.skipped == ["b"]
    assert feedback.progress == [0.0, 25.0, 50.0, 100.0, 100.0]
    assert (
        "2 pair(s), cpu fp32" in feedback.console
        and "classes: /o/a_classes.tif" in feedback.console
    )
    assert not any("%|" in line for line in feedback.console)  # bar updates are not logged
    assert existing_outputs(tmp_path, "b") == {"classes": tmp_path / "b_classes.tif"}


def test_the_error_line_is_reported_and_raised(tmp_path):
    command = fake_child(
        tmp_path,
        r"""
        sys.stderr.write("error: --x dsm.tif: no such file\n"); sys.exit(2)
    """,
    )
    feedback = StubFeedback()
    result = PredictRun(command).run(feedback)
    assert result.returncode == 2 and result.error == "error: --x dsm.tif: no such file"
    with pytest.raises(RunError, match="^error: --x dsm.tif: no such file$"):
        check_result(result, feedback)
    assert feedback.errors == ["error: --x dsm.tif: no such file"]


def test_a_crash_reports_its_last_lines(tmp_path):
    command = fake_child(
        tmp_path,
        r"""
        raise RuntimeError("a bug")
    """,
    )
    feedback = StubFeedback()
    with pytest.raises(RunError, match="(?s)exit code 1.*RuntimeError: a bug"):
        check_result(PredictRun(command).run(feedback), feedback)


def test_a_python_that_does_not_exist_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="cannot start .*nowhere/python"):
        PredictRun([str(tmp_path / "nowhere" / "python"), "-V"]).run(StubFeedback())


@pytest.mark.parametrize(
    ("ignore", "signals"),
    [
        ("", [signal.SIGINT]),
        ("signal.signal(signal.SIGINT, signal.SIG_IGN)", [signal.SIGINT, signal.SIGTERM]),
        (
            "signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
            [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
        ),
    ],
)
def test_cancel_sends_sigint_then_sigterm_then_sigkill(tmp_path, ignore, signals):
    command = fake_child(
        tmp_path,
        f"""
        {ignore}
        try:  # SIGINT may land right as the line is flushed
            print("started", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: nothing was left under a final name\\n")
            sys.exit(130)
    """,
    )
    feedback = StubFeedback(cancel_on="started")
    start = time.monotonic()
    run = PredictRun(command, grace=0.5)
    result = run.run(feedback)
    assert time.monotonic() - start < 15
    assert result.cancelled and run.signals_sent == signals
    assert result.returncode == {1: 130, 2: -signal.SIGTERM, 3: -signal.SIGKILL}[len(signals)]
    with pytest.raises(RunError, match="^cancelled"):
        check_result(result, feedback)


def test_cancel_stops_predict_py_with_nothing_under_a_final_name(ckpt, slow_pair, tmp_path):
    """The real prediction on a job of minutes, cancelled 1.5 s after it started predicting."""
    rgb, x = slow_pair
    out = tmp_path / "out"
    request = PredictRequest(str(ckpt), str(rgb), str(x), str(out), window=32, overlap=24,
                             probs=True, vector=True, redo=True)  # fmt: skip
    feedback = StubFeedback(cancel_on="pair(s)", cancel_after=1.5, watch=out)
    run = PredictRun(predict_command(sys.executable, request), grace=30)
    start = time.monotonic()
    result = run.run(feedback)
    assert result.cancelled and result.returncode == 130 and run.signals_sent == [signal.SIGINT]
    assert time.monotonic() - start < 60
    assert result.interrupted and "nothing was left under a final name" in result.interrupted
    assert feedback.listed_at_cancel  # it was writing (into a hidden staging folder)
    assert not result.outputs
    assert not out.exists() or not list(out.iterdir())  # not even a hidden temporary file
