"""Release archives as downloaded: which archive holds what, checksums, one atomic unpacking.

A dataset card's ``files`` list names the release's archives. Each entry may say what the
archive ``holds`` (card modality names, ``labels`` / ``labels.full`` / ``labels.eroded``, and
``splits`` for the split files), so that

* a folder named after an archive is searched too (an archive extracted by a file manager into
  ``2_Ortho_RGB/`` gives ``ROOT/2_Ortho_RGB/2_Ortho_RGB/...``): :func:`search_roots`;
* an archive lying in ``data.root`` whose members are not there yet is checked against the
  card's md5 (when known) and unpacked once into the root: :func:`unpack_needed`. Members are
  extracted into a private staging folder inside the root (torchgeo's ``extract_archive``;
  :func:`rsfusion.data.writers.staging_dir`) and only then moved to their final names, one
  atomic rename each, so an interrupted unpacking leaves no half-written file under a name the
  loaders read (and a later run removes its staging folder);
* an error about a missing file names the archive it comes in: :func:`where_from`.

Zip and tar archives are unpacked; others (the RAR of Potsdam's DSM) are named in the error
with the command that unpacks them.

Example:
    >>> Archive("2_Ortho_RGB.zip", None, ("rgb",)).stem
    '2_Ortho_RGB'
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from torchgeo.datasets.utils import check_integrity, extract_archive

from rsfusion.catalog import DatasetCard
from rsfusion.data.writers import remove_stale_staging, staging_dir
from rsfusion.errors import ConfigError, UserError

log = logging.getLogger(__name__)

ENTRY_KEYS = ("name", "md5", "holds", "note")
SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".rar", ".7z")
UNPACKED_HERE = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class Archive:
    """One release archive of a card: file name, md5 (None: not published) and contents."""

    name: str
    md5: str | None
    holds: tuple[str, ...]

    @property
    def stem(self) -> str:
        """The name without its archive suffix (the folder a file manager extracts it into)."""
        for suffix in SUFFIXES:
            if self.name.lower().endswith(suffix):
                return self.name[: -len(suffix)]
        return self.name

    @property
    def unpackable(self) -> bool:
        """Whether rsfusion unpacks this kind of archive itself (zip and tar)."""
        return self.name.lower().endswith(UNPACKED_HERE)

    def holds_entry(self, what: str) -> bool:
        """Whether the archive holds ``what`` (``labels`` matches ``labels.full`` and back)."""
        for held in self.holds:
            if held == what or (held == "labels" and what.startswith("labels.")):
                return True
            if what == "labels" and held.startswith("labels."):
                return True
        return False


def archives_of(card: DatasetCard) -> list[Archive]:
    """The card's archives (its ``files`` entries that name a zip, tar, rar or 7z file).

    Raises:
        ConfigError: a malformed entry, naming the card file.
    """
    out = []
    for i, entry in enumerate(card.files):
        where = f"dataset card {card.path or card.name}: files[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(
                f"{where}: expected {{name: <file>, md5: <hex or null>}}, got {entry}"
            )
        unknown = set(entry) - set(ENTRY_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid: {list(ENTRY_KEYS)}")
        md5 = entry.get("md5")
        if md5 is not None and not (
            isinstance(md5, str) and len(md5) == 32 and all(c in "0123456789abcdef" for c in md5)
        ):
            raise ConfigError(f"{where}: md5 {md5!r} is not 32 lowercase hex digits (or null)")
        holds = entry.get("holds") or []
        if not isinstance(holds, list) or not all(isinstance(h, str) for h in holds):
            raise ConfigError(f"{where}: holds must be a list of names, got {holds!r}")
        archive = Archive(entry["name"], md5, tuple(holds))
        if archive.stem != archive.name:
            out.append(archive)
    return out


def _holding(card: DatasetCard, what: str) -> list[Archive]:
    return [a for a in archives_of(card) if a.holds_entry(what)]


def search_roots(card: DatasetCard, root: Path, what: str) -> list[Path]:
    """Where ``what``'s files may lie: the root, then folders named after its archives."""
    roots = [root]
    for archive in _holding(card, what):
        folder = root / archive.stem
        if folder not in roots:
            roots.append(folder)
    return roots


def where_from(card: DatasetCard, root: Path, what: str) -> str:
    """A sentence naming the archive(s) holding ``what`` and what to do with them ("" if the
    card names none)."""
    archives = _holding(card, what)
    if not archives:
        return ""
    names = (
        archives[0].name
        if len(archives) == 1
        else ("any of " + ", ".join(a.name for a in archives))
    )
    present = [a for a in archives if (root / a.name).is_file()]
    if present and not any(a.unpackable for a in present):
        return (
            f" It comes in {names}, which rsfusion cannot unpack: extract it into {root} "
            f"(e.g. `cd {root} && unrar x {present[0].name}` or `7z x {present[0].name}`)."
        )
    return (
        f" It comes in {names}: put the archive in {root} (rsfusion unpacks it there on "
        "first use) or extract it into that folder."
    )


def _members(path: Path) -> dict[str, int]:
    """Regular-file members of a zip or tar archive -> uncompressed size."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()}
    with tarfile.open(path) as tf:
        return {m.name: m.size for m in tf.getmembers() if m.isfile()}


def _safe(member: str) -> bool:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    return bool(parts) and not PurePosixPath(member).is_absolute() and ".." not in parts


def _is_unpacked(members: dict[str, int], root: Path) -> bool:
    for member, size in members.items():
        target = root / member
        if not target.is_file() or target.stat().st_size != size:
            return False
    return True


def _extract(path: Path, into: Path) -> None:
    """Unpack a zip (torchgeo's extractor) or a tar (refusing links and paths out of it)."""
    if zipfile.is_zipfile(path):
        extract_archive(str(path), str(into))
        return
    with tarfile.open(path) as tf:
        tf.extractall(into, filter="data")


def unpack(archive: Archive, root: Path, error: type[UserError]) -> bool:
    """Unpack ``root/<archive>`` into ``root`` unless its members are all there already.

    Returns:
        True when files were unpacked.

    Raises:
        ``error``: the md5 differs from the card's, the file is not a readable archive, or
        the root is not writable (each message names the archive and the fix).
    """
    path = root / archive.name
    if not archive.unpackable:
        raise error(
            f"{path} is a {Path(archive.name).suffix} archive, which rsfusion cannot unpack: "
            f"extract it into {root} (e.g. `cd {root} && unrar x {archive.name}` or "
            f"`7z x {archive.name}`)"
        )
    try:
        members = _members(path)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise error(
            f"{path} cannot be read as an archive ({err}); the download is incomplete or "
            "damaged: download it again"
        ) from err
    unsafe = [m for m in members if not _safe(m)]
    if unsafe:
        raise error(
            f"{path} holds {unsafe[0]!r}, a path outside the folder it unpacks into; it is not "
            "the release archive: download it again from the dataset's site"
        )
    if _is_unpacked(members, root):
        return False
    if archive.md5 is not None:
        log.info("checking the md5 of %s (%.1f MB)", path, path.stat().st_size / 1e6)
        if not check_integrity(str(path), archive.md5):
            raise error(
                f"{path}: md5 differs from the published {archive.md5}; the download is "
                "incomplete or damaged: download it again"
            )
    log.info("unpacking %s into %s", path, root)
    try:
        remove_stale_staging(root)  # what a killed unpacking left
        tmp = staging_dir(root, archive.stem)
    except OSError as err:
        raise error(
            f"cannot unpack {path} into {root} ({err.strerror}): extract it yourself or make "
            "the folder writable"
        ) from err
    try:
        try:
            _extract(path, tmp)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
            raise error(
                f"{path} could not be unpacked ({err}); the download is incomplete or damaged: "
                "download it again"
            ) from err
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            target = root / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def unpack_needed(
    card: DatasetCard, root: str | Path, needs: Iterable[str], error: type[UserError]
) -> list[str]:
    """Unpack every archive in ``root`` that holds one of ``needs`` and is not unpacked yet.

    Args:
        card: the dataset card (its ``files`` with ``holds``).
        root: the data root.
        needs: entries the run reads (modality names, ``labels...``, ``splits``).
        error: the user-error class raised (TileError for tiles, SampleFileError for samples).

    Returns:
        The names of the archives unpacked now.
    """
    root = Path(root)
    wanted = list(needs)
    done = []
    for archive in archives_of(card):
        if not any(archive.holds_entry(w) for w in wanted):
            continue
        present = archive.unpackable and (root / archive.name).is_file()
        if present and unpack(archive, root, error):
            done.append(archive.name)
    return done
