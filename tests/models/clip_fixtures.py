"""A tiny random CLIP saved as a local file (no download): MA-CLIP tests and demos reuse it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsfusion.models.maclip import build_clip, save_clip, tiny_clip_config


def write_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_clip_config`'s CLIP, randomly initialised from ``seed``, to ``path``
    (the :func:`save_clip` layout :func:`load_clip` reads without a model name)."""
    torch.manual_seed(seed)
    cfg = tiny_clip_config()
    return save_clip(build_clip(cfg), cfg, path)


@pytest.fixture
def tiny_clip_file(tmp_path: Path) -> Path:
    """A tiny CLIP file under the test's temporary folder."""
    return write_tiny_clip(tmp_path / "tiny_clip.pt")
