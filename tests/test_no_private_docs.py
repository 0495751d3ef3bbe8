"""Shipped text cites nothing users lack: no design notes of the development tree
(METHODS.md, ARCHITECTURE.md, ENVIRONMENT.md, STYLE.md) and no path into a ``shared`` folder
beside the repository. Code, help texts, configs, dataset cards, scripts, benchmarks, tests
and the README say what they mean in their own words, or name the paper or a README section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What users get: the package, its configs and dataset cards, scripts, benchmarks, tests
#: and the README.
SCANNED = ("rsfusion", "configs", "scripts", "data_catalog", "benchmarks", "tests", "README.md")
#: The private design notes by name, and any path into a ``shared`` folder.
PRIVATE = re.compile(r"\b(?:METHODS|ARCHITECTURE|ENVIRONMENT|STYLE)\.md\b|\bshared/")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
THIS_FILE = Path(__file__).resolve()


def text_files(root: Path, names: tuple[str, ...]) -> list[Path]:
    """Every file under ``names`` (folders or files below ``root``) that reads as UTF-8 text."""
    found = []
    for name in names:
        top = root / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            if SKIPPED_DIRS.intersection(path.relative_to(root).parts) or path.suffix == ".pyc":
                continue
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # binary fixtures (rasters, images, checkpoints)
                continue
            found.append(path)
    return found


def citations(root: Path, names: tuple[str, ...]) -> list[str]:
    """``path:line: text`` for every line under ``names`` that cites a private file."""
    hits = []
    for path in text_files(root, names):
        if path.resolve() == THIS_FILE:  # it names the patterns it looks for
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE.search(line):
                hits.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return hits


@pytest.mark.parametrize("name", SCANNED)
def test_shipped_text_cites_no_private_file(name: str) -> None:
    assert (ROOT / name).exists(), f"{name} is missing from the repository"
    hits = citations(ROOT, (name,))
    assert not hits, "say it in your own words (or cite the paper / README):\n" + "\n".join(hits)


def test_scanner_finds_each_kind_of_citation(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text('"""As in METHODS.md section 2."""\nx = 1\n', encoding="utf-8")
    (pkg / "sub" / "b.yaml").write_text("lr: 1  # see ../shared/papers/cpal.txt\n")
    (pkg / "c.md").write_text("Layers: ARCHITECTURE.md\nfine line\nSTYLE.md and ENVIRONMENT.md\n")
    (pkg / "clean.py").write_text('"""CPAL paper, eq. 13-18; the README\'s CPAL section."""\n')
    (pkg / "image.bin").write_bytes(b"\xff\xfe\x00METHODS.md")  # not text: skipped
    cache = pkg / "__pycache__"
    cache.mkdir()
    (cache / "a.txt").write_text("METHODS.md\n")  # build output: skipped

    hits = citations(tmp_path, ("pkg",))

    assert sorted(hit.split(": ")[0] for hit in hits) == [
        "pkg/a.py:1",
        "pkg/c.md:1",
        "pkg/c.md:3",
        "pkg/sub/b.yaml:1",
    ]


def test_scanner_leaves_ordinary_words_alone(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text(
        "# weights shared by both streams; a shared stem; unshared/shared_x names\n"
        "# words alone: METHODS, ARCHITECTURE, ENVIRONMENT, the style guide\n",
        encoding="utf-8",
    )
    assert citations(tmp_path, ("ok.py",)) == []
