"""Atomic raster writers: GeoTIFF (tiled, compressed), world files, colour-coded labels.

Every file is written under a temporary name and renamed onto its final name only when it is
complete. Temporaries live in a private staging folder made for them (:func:`staging_dir`:
created exclusively, mode 0700, never an existing path or a link someone planted) whose name
carries the host and process that made it, so that a later run removes what a killed process
left (:func:`remove_stale_staging`) and never what a live one is writing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

#: ``.<hint>.rsfusion-<host>-<pid>-<random>.partial``: a staging folder and its owner
_STAGING = re.compile(r"\.rsfusion-(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)-[0-9a-f]{8}\.partial$")
#: temporaries of earlier versions, beside the output: ``.<name>.<pid>.partial[.ovr.tif|.gpkg|
#: -wal|.aux.xml...]`` and ``.<name>.<pid>.part[.aux.xml]`` (no host: judged on this one)
_LEGACY = re.compile(r"\.(?P<pid>\d+)\.part(?:ial)?(?:[.-][A-Za-z0-9.-]*)?$")


def _host() -> str:
    """This machine's name as it appears in staging names (letters, digits, dashes)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname())[:40].strip("-") or "host"


def staging_dir(folder: str | Path, hint: str = "") -> Path:
    """A new private folder for temporaries inside ``folder`` (made if missing).

    ``os.mkdir`` creates it exclusively (it fails rather than reuse or follow anything already
    there, a planted symbolic link included) with mode 0700, so no other user can put anything
    in it. Its name ``.<hint>.rsfusion-<host>-<pid>-<random>.partial`` tells which process made
    it; the caller removes it (``shutil.rmtree``) when done.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hint = hint.encode("utf-8", "surrogateescape")[:64].decode("utf-8", "ignore")
    owner = f"rsfusion-{_host()}-{os.getpid()}"
    for _ in range(64):
        path = folder / f".{hint}.{owner}-{secrets.token_hex(4)}.partial"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free staging name in {folder}")


def staging_owner(name: str) -> tuple[str | None, int] | None:
    """``(host, pid)`` of the process that made a staging entry (host None for names of
    earlier versions, which carry only the pid), or None for a name that is not staging."""
    if not name.startswith("."):
        return None
    if m := _STAGING.search(name):
        return m["host"], int(m["pid"])
    if m := _LEGACY.search(name):
        return None, int(m["pid"])
    return None


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):  # an id no process can have
        return False
    return True


def remove_stale_staging(folder: str | Path) -> list[Path]:
    """Remove the staging folders and temporaries in ``folder`` whose process is dead.

    Only entries named as :func:`staging_dir` (or earlier versions) name them count, and only
    those of a process on this machine that no longer runs: a live run's files, this
    process's, and those of other hosts (a shared folder) are left alone. Names are compared
    as strings, never as glob patterns. Returns what was removed.
    """
    removed = []
    host = _host()
    with os.scandir(folder) as entries:
        for entry in entries:
            owner = staging_owner(entry.name)
            if owner is None or owner[0] not in (None, host) or process_alive(owner[1]):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` to, in a new :func:`staging_dir` beside it.

    When the block ends without an exception the temporary (and a GDAL ``.aux.xml`` side-car)
    is renamed onto ``path``, atomically; the staging folder is removed either way.

    Example:
        >>> import tempfile
        >>> final = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with staged(final) as tmp:
        ...     _ = tmp.write_text("done")
        >>> final.read_text(), [p.name for p in final.parent.iterdir()]
        ('done', ['a.txt'])
    """
    path = Path(path)
    folder = staging_dir(path.parent, path.name)
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
        aux = tmp.with_name(tmp.name + ".aux.xml")
        if aux.exists():
            os.replace(aux, path.with_name(path.name + ".aux.xml"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: Any,
    transform: Affine | None,
    nodata: float | None = None,
    **profile: Any,
) -> Path:
    """Write a (bands, H, W) or (H, W) array atomically as a tiled, deflate-compressed GeoTIFF.

    ``crs`` and ``transform`` may be None to write no georeference at all. Extra ``profile``
    keys override the defaults (e.g. ``driver="JPEG"``; GTiff options are then left out).
    The file is written under a temporary name in a private staging folder beside it
    (:func:`staged`) and renamed when done.
    """
    path = Path(path)
    arr = np.asarray(array)
    arr = arr[None] if arr.ndim == 2 else arr
    count, height, width = arr.shape
    meta: dict[str, Any] = {"driver": "GTiff", "count": count, "height": height, "width": width}
    meta["dtype"] = arr.dtype.name
    if crs is not None:
        meta["crs"] = CRS.from_user_input(crs)
    if transform is not None:
        meta["transform"] = transform
    if nodata is not None:
        meta["nodata"] = nodata
    if profile.get("driver", "GTiff") == "GTiff":
        meta.update(compress="deflate", predictor=3 if arr.dtype.kind == "f" else 2)
        block = next((b for b in (512, 256, 128, 64, 32, 16) if b <= min(height, width)), None)
        if block is not None:
            meta.update(tiled=True, blockxsize=block, blockysize=block)
    meta.update(profile)
    with staged(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **meta) as dst:
            dst.write(arr)
    return path


def write_world_file(raster_path: str | Path, transform: Affine) -> Path:
    """Write the ESRI world file beside a raster (``x.tif`` -> ``x.tfw``), atomically."""
    raster_path = Path(raster_path)
    ext = raster_path.suffix.lower()
    path = raster_path.with_suffix(f".{ext[1]}{ext[-1]}w")
    t = transform  # a world file holds the centre of the upper-left pixel
    values = (t.a, t.d, t.b, t.e, t.c + (t.a + t.b) / 2, t.f + (t.d + t.e) / 2)
    with staged(path) as tmp:
        tmp.write_text("".join(f"{v:.10f}\n" for v in values))
    return path


def encode_labels(
    class_ids: np.ndarray,
    palette: Sequence[Sequence[int]],
    fill: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Colour-code class ids through a palette: (H, W) ids -> (3, H, W) uint8.

    Ids outside the palette (e.g. 255, ignore) get the ``fill`` colour (ISPRS boundary black).
    """
    ids = np.asarray(class_ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"class ids must lie in 0..255, got {ids.min()}..{ids.max()}")
    lut = np.empty((256, 3), np.uint8)
    lut[:] = fill
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    return np.ascontiguousarray(lut[ids.astype(np.uint8)].transpose(2, 0, 1))


def erode_labels(class_ids: np.ndarray, radius: int = 2, ignore: int = 255) -> np.ndarray:
    """Set pixels within ``radius`` px (a disc) of a class boundary to ``ignore``."""
    h, w = class_ids.shape
    padded = np.pad(class_ids, radius, mode="edge")
    near = np.zeros((h, w), bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                near |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w] != (
                    class_ids
                )
    return np.where(near, np.uint8(ignore), class_ids).astype(class_ids.dtype)
