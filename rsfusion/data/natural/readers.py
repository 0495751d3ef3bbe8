"""Read one stored sample file into a ``(C, H, W)`` array of its stored dtype.

PNG/JPEG/BMP/TIFF through Pillow (8-bit, 16-bit grayscale, palette PNGs give their indices,
or their colours with ``as_rgb``),
``.npy``, ``.npz`` and Level 5 ``.mat`` (:mod:`rsfusion.data.natural.matfile`). Every failure
names the file: :class:`SampleFileError` when it is missing, :class:`SampleFormatError` when it
cannot be read or has an unexpected shape.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rsfusion.data.natural.matfile import MatFileError, read_mat
from rsfusion.errors import SampleFileError, SampleFormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz", ".mat")


#: ITU-R 601 luma weights, as OpenCV's grayscale read of a colour PNG
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_grey(stored: np.ndarray) -> np.ndarray:
    """``(3 or 4, H, W)`` colour -> ``(1, H, W)`` grey in the stored dtype (alpha dropped).

    Example:
        >>> to_grey(np.array([[[100]], [[200]], [[0]], [[255]]], np.uint8)).tolist()
        [[[147]]]
    """
    grey = np.tensordot(GREY_WEIGHTS, stored[:3].astype(np.float64), axes=1)
    return np.round(grey)[None].astype(stored.dtype)


def _read_image(path: Path, as_rgb: bool = False) -> np.ndarray:
    with Image.open(path) as img:
        mode = img.mode
        if as_rgb and mode != "RGB":
            img = img.convert("RGB")  # palette ("P"), grey and RGBA files: their colours
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        elif mode == "1":
            img = img.convert("L")
        arr = np.asarray(img)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # a 16-bit PNG that Pillow opened as 32-bit
    return arr


def _read_array(path: Path, key: str | None) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if key is None and len(names) != 1:
                raise SampleFormatError(f"{path}: holds arrays {names}; name one with 'key'")
            name = key or names[0]
            if name not in names:
                raise SampleFormatError(f"{path}: no array '{name}' (arrays: {names})")
            return npz[name]
    return read_mat(path, key)


def read_file(
    path: str | Path, key: str | None = None, channels_first: bool = False, as_rgb: bool = False
) -> np.ndarray:
    """One stored file as ``(C, H, W)`` in its stored dtype (2-D files get ``C = 1``).

    Args:
        path: the file (its suffix picks the reader).
        key: the variable of a ``.mat`` / ``.npz`` file (default: its only one).
        channels_first: a 3-D ``.npy`` / ``.mat`` array is ``(C, H, W)`` already.
        as_rgb: read an image as 8-bit RGB whatever its mode (a palette PNG gives its colours,
            not its indices; colour-coded labels are decoded from these).

    Raises:
        SampleFileError: the file does not exist.
        SampleFormatError: unknown suffix, unreadable content, or not 2-D/3-D.
    """
    path = Path(path)
    if not path.is_file():
        raise SampleFileError(f"missing file {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            arr = _read_image(path, as_rgb)
        elif suffix in ARRAY_SUFFIXES:
            arr = _read_array(path, key)
        else:
            raise SampleFormatError(
                f"{path}: no reader for '{suffix}' files "
                f"(readable: {', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)})"
            )
    except (UnidentifiedImageError, OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, SampleFormatError | MatFileError):
            raise SampleFormatError(str(err)) from err
        raise SampleFormatError(f"{path}: cannot be read ({err})") from err
    if arr.dtype.kind not in "buif":
        raise SampleFormatError(f"{path}: holds {arr.dtype} values, not numbers")
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise SampleFormatError(f"{path}: expected a 2-D or 3-D array, got shape {arr.shape}")
    is_image = suffix in IMAGE_SUFFIXES
    return arr if (channels_first and not is_image) else np.moveaxis(arr, -1, 0)
