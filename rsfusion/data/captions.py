"""Captions for MA-CLIP pre-training (SegRGB-X, arXiv 2603.28023, Sec. III-B): the captions
file format, its reader and writer, and an offline template captioner.

The paper captions every RGB image with LLaMA-Adapter (Zhang et al., ICLR 2024) prompted with
"Describe the image at a high level in 20 words." (BLIP's captions cost 1.55 mIoU, its Tab. X).
Running a captioner is an optional offline step outside this package: write its output in the
format below. Without one, :func:`template_caption` describes a sample from its label map
("a photo with road, car and sky": the classes by area), which is enough for the demo.

Format: one UTF-8 text file per dataset, one sample per line, ``<sample id><TAB><caption>``
(the caption is the rest of the line, may hold spaces but no tab); blank lines and lines that
start with ``#`` are skipped; each id once. A ``.jsonl`` file instead holds one JSON object per
line, ``{"id": ..., "caption": ...}``. Sample ids are the dataset's own:

* natural-image cards: the id the release's split lists give the sample (NYUDepthV2 ``"2"``,
  DeLiVER ``"cloud/train/MAP_1_point0/000000"``), as in the dataset's file patterns;
* ISPRS cards: a window ``<tile>:<row>:<col>`` (its top-left pixel in the tile, windows of
  ``data.window`` px every ``data.eval_stride`` px); a line with the tile id alone (``3`` or
  ``2_10``) captions every window of that tile without its own line.

``python scripts/pretrain_maclip.py ... --template-captions`` writes the template captions it
used to ``<out>/captions/<dataset>.tsv``: every id in this format, ready to be recaptioned.

Example:
    >>> import numpy as np
    >>> mask = np.array([[0, 0, 0, 2], [0, 0, 2, 2], [1, 255, 255, 255]])
    >>> template_caption(mask, ["road", "car", "sky"])
    'a photo with road, sky and car'
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from rsfusion.errors import MissingFileError, PairingError, SampleFormatError

__all__ = [
    "caption_for",
    "match_captions",
    "read_captions",
    "template_caption",
    "window_id",
    "write_captions",
]


def window_id(tile: str, row: int, col: int) -> str:
    """The sample id of an ISPRS window: ``<tile>:<row>:<col>`` (top-left pixel in the tile)."""
    return f"{tile}:{int(row)}:{int(col)}"


def read_captions(path: str | Path) -> dict[str, str]:
    """``{sample id: caption}`` of a captions file (TSV, or ``.jsonl``; module docstring).

    Raises:
        MissingFileError: no such file.
        SampleFormatError: a malformed line (names the file, the line number and the fix).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"captions file not found: {path}. Fix: pass an existing file to --captions "
            "DATASET=FILE, or use --template-captions"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SampleFormatError(
            f"{path}: not UTF-8 text (byte {err.start}). Fix: save the captions as UTF-8"
        ) from err
    jsonl = path.suffix.lower() == ".jsonl"
    captions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        sample, caption = _parse_json(line, where) if jsonl else _parse_tsv(line, where)
        if sample in captions:
            raise SampleFormatError(
                f"{where}: sample id '{sample}' has a caption already. Fix: keep one line per id"
            )
        captions[sample] = caption
    if not captions:
        raise SampleFormatError(
            f"{path}: no captions in the file. Fix: one 'id<TAB>caption' line per sample"
        )
    return captions


def _parse_tsv(line: str, where: str) -> tuple[str, str]:
    sample, tab, caption = line.partition("\t")
    if not tab:
        raise SampleFormatError(
            f"{where}: no tab between sample id and caption in {line[:60]!r}. Fix: write "
            "'<sample id><TAB><caption>'"
        )
    if "\t" in caption:
        raise SampleFormatError(f"{where}: more than one tab. Fix: remove tabs from the caption")
    return _checked(sample.strip(), caption.strip(), where)


def _parse_json(line: str, where: str) -> tuple[str, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise SampleFormatError(
            f'{where}: not JSON ({err.msg}). Fix: one {{"id": ..., "caption": ...}} per line'
        ) from err
    if not isinstance(item, dict) or not {"id", "caption"} <= set(item):
        raise SampleFormatError(f"{where}: expected an object with keys 'id' and 'caption'")
    return _checked(str(item["id"]).strip(), str(item["caption"]).strip(), where)


def _checked(sample: str, caption: str, where: str) -> tuple[str, str]:
    if not sample:
        raise SampleFormatError(f"{where}: empty sample id. Fix: start the line with the id")
    if not caption:
        raise SampleFormatError(f"{where}: sample '{sample}' has an empty caption")
    return sample, caption


def write_captions(path: str | Path, captions: Mapping[str, str]) -> Path:
    """Write ``captions`` as a TSV captions file (whitespace runs in captions become one
    space), atomically: a temporary name in the same folder, then a rename."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{sid}\t{' '.join(str(text).split())}\n" for sid, text in captions.items()]
    with _atomic(final) as tmp:
        tmp.write_text("# sample id<TAB>caption\n" + "".join(lines), encoding="utf-8")
    return final


@contextlib.contextmanager
def _atomic(final: Path) -> Iterator[Path]:
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def caption_for(sample_id: str, captions: Mapping[str, str]) -> str | None:
    """The caption of a sample: its own line, else (an ISPRS window) its tile's line."""
    if sample_id in captions:
        return captions[sample_id]
    tile, sep, _ = sample_id.partition(":")
    return captions.get(tile) if sep else None


def match_captions(ids: Sequence[str], captions: Mapping[str, str], source: str) -> list[str]:
    """The captions of ``ids`` in order.

    Raises:
        PairingError: ids without a caption (how many, the first few, the file and the fix).
    """
    found = [caption_for(i, captions) for i in ids]
    missing = [i for i, c in zip(ids, found) if c is None]
    if missing:
        raise PairingError(
            f"{source}: no caption for {len(missing)} of {len(ids)} samples, e.g. "
            f"{missing[:5]} (the file has ids such as {list(captions)[:3]}). Fix: add a "
            "'<sample id><TAB><caption>' line for each, or use --template-captions"
        )
    return [c for c in found if c is not None]


def template_caption(
    mask: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int = 255,
    *,
    subject: str = "a photo",
    max_classes: int = 5,
    min_fraction: float = 0.01,
) -> str:
    """A caption from a label map: ``"<subject> with a, b and c"``, the classes covering at
    least ``min_fraction`` of the labelled pixels, largest first (ties: class order), at most
    ``max_classes``; underscores read as spaces. No labelled pixel: ``subject`` alone."""
    labels = np.asarray(mask).ravel()
    labels = labels[(labels != ignore_index) & (labels >= 0) & (labels < len(class_names))]
    if labels.size == 0:
        return subject
    counts = np.bincount(labels.astype(np.int64), minlength=len(class_names))
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    kept = [c for c in order if counts[c] >= max(min_fraction * labels.size, 1)][:max_classes]
    names = [class_names[c].replace("_", " ") for c in kept]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{subject} with {listed}"
