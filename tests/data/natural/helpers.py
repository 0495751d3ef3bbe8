"""The CLI runs the natural-dataset tests share: one training step and a dry run.

Imported as ``tests.data.natural.helpers``: the editable install (and ``python -m pytest``) puts
the repository root on ``sys.path``, so ``tests`` is a namespace package under
``--import-mode=importlib``. The dataset-specific checks stay in the test files.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from rsfusion.cli.train import main

ONE_STEP = ["trainer.max_steps=1", "trainer.enable_progress_bar=false", "optim.warmup_steps=0"]


def train_one_step(cfg: str, root: Path, out: Path, *overrides: str) -> dict[str, Any]:
    """Train config ``cfg`` on the release at ``root`` for one step, into the run folder ``out``.

    ``overrides`` (``key=value``, e.g. the test's ``TINY``) come after ``data.root`` and before
    the one-step settings (``ONE_STEP``). Runs from ``out``'s parent folder with warnings off,
    asserts exit code 0 and ``global_step == 1``, and returns ``out/checkpoints/last.ckpt`` as
    loaded by ``torch.load`` (with its ``rsfusion`` metadata).
    """
    with contextlib.chdir(out.parent), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            ["--cfg", cfg, "--out", str(out), "--set", f"data.root={root}", *overrides, *ONE_STEP]
        )
    assert code == 0
    ckpt = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    return ckpt


def dry_run_report(
    cfg: str, root: Path, capsys: pytest.CaptureFixture[str], *overrides: str
) -> str:
    """Dry-run config ``cfg`` on the release at ``root`` with ``overrides``; assert exit code 0.

    Returns what the run printed to stdout (the "data <split>: N samples ... (the release has M)"
    lines), read through ``capsys``, which is emptied.
    """
    code = main(["--cfg", cfg, "--dry-run", "--set", f"data.root={root}", *overrides])
    out = capsys.readouterr().out
    assert code == 0
    return out
