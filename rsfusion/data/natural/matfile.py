"""Numeric arrays from MATLAB Level 5 MAT-files (the format of ``save`` up to ``-v7``).

A small reader (and a writer for the test generators) so that no SciPy is needed: a Level 5
file is a 128-byte header ("MATLAB 5.0 MAT-file", version 0x0100, an endian mark "IM" or "MI")
followed by data elements, each an 8-byte tag (type, byte count; or a "small element" packing
both in 4 bytes) and its data padded to 8 bytes. ``-v7`` wraps each variable in a zlib stream
(miCOMPRESSED, not padded). A variable is a miMATRIX: array flags (class, logical bit),
dimensions, name, real part, stored column-major. Only numeric and logical arrays are read;
cells, structs, strings, sparse and complex arrays are named in the error when asked for.
``-v7.3`` files are HDF5 and need h5py: refused with that advice.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from rsfusion.errors import MatFileError

MI_TYPES: dict[int, str] = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
}  # fmt: skip
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_NUMERIC: dict[int, str] = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}  # fmt: skip
MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 16: "function"}
_HEADER = 128


def _elements(buf: bytes, endian: str, source: str) -> list[tuple[int, bytes]]:
    """Split a byte string into (type, data) data elements."""
    out, pos = [], 0
    while pos + 8 <= len(buf):
        (word,) = struct.unpack_from(endian + "I", buf, pos)
        if word >> 16:  # small data element: type and size in one word, data in the next 4
            mtype, size = word & 0xFFFF, word >> 16
            out.append((mtype, buf[pos + 4 : pos + 4 + size]))
            pos += 8
            continue
        mtype, size = struct.unpack_from(endian + "II", buf, pos)
        if pos + 8 + size > len(buf):
            raise MatFileError(f"{source}: a data element runs past the end of the file")
        out.append((mtype, buf[pos + 8 : pos + 8 + size]))
        pos += 8 + (size if mtype == MI_COMPRESSED else -(-size // 8) * 8)
    return out


def _matrix(data: bytes, endian: str, source: str) -> tuple[str, np.ndarray | str]:
    """Decode one miMATRIX: (name, array) or (name, class word) when it is not numeric."""
    parts = _elements(data, endian, source)
    if len(parts) < 3:
        return "", "empty"
    flags = np.frombuffer(parts[0][1][:8], dtype=endian + "u4")
    mx_class, logical, is_complex = (
        int(flags[0] & 0xFF),
        bool(flags[0] & 0x200),
        bool(flags[0] & 0x800),
    )
    dims = tuple(int(d) for d in np.frombuffer(parts[1][1], dtype=endian + MI_TYPES[parts[1][0]]))
    name = parts[2][1].decode("utf-8", "replace")
    if mx_class not in MX_NUMERIC or len(parts) < 4:
        return name, MX_NAMES.get(mx_class, f"class {mx_class}")
    if is_complex:
        return name, "complex"
    mtype, raw = parts[3]
    if mtype not in MI_TYPES:
        raise MatFileError(f"{source}: variable '{name}' stores data of unknown type {mtype}")
    values = np.frombuffer(raw, dtype=endian + MI_TYPES[mtype])
    array = values.astype(bool if logical else MX_NUMERIC[mx_class]).reshape(dims, order="F")
    return name, array


def read_mat_variables(path: str | Path) -> dict[str, np.ndarray | str]:
    """Every variable of a Level 5 MAT-file: numeric arrays, or a word naming the other kinds.

    Raises:
        FileNotFoundError: when the file does not exist.
        MatFileError: for MAT v4 or v7.3 (HDF5) files and for broken data.
    """
    source = str(path)
    buf = Path(path).read_bytes()
    if buf[:19] == b"MATLAB 7.3 MAT-file" or buf[512:516] == b"\x89HDF":
        raise MatFileError(
            f"{source} is a MAT v7.3 (HDF5) file; rsfusion reads Level 5 MAT-files only: "
            "install h5py and convert it, or re-save it in MATLAB with save(..., '-v7')"
        )
    if len(buf) < _HEADER or not buf.startswith(b"MATLAB 5.0 MAT-file"):
        raise MatFileError(f"{source} is not a Level 5 MAT-file (no 'MATLAB 5.0' header)")
    mark = buf[126:128]
    if mark not in (b"IM", b"MI"):
        raise MatFileError(f"{source}: unknown endian mark {mark!r} in the MAT header")
    endian = "<" if mark == b"IM" else ">"
    variables: dict[str, np.ndarray | str] = {}
    for mtype, data in _elements(buf[_HEADER:], endian, source):
        if mtype == MI_COMPRESSED:
            try:
                data = zlib.decompress(data)
            except zlib.error as err:
                raise MatFileError(f"{source}: a compressed variable is corrupt ({err})") from err
            inner = _elements(data, endian, source)
            if not inner:
                continue
            mtype, data = inner[0]
        if mtype == MI_MATRIX:
            name, value = _matrix(data, endian, source)
            variables[name] = value
    return variables


def read_mat(path: str | Path, key: str | None = None) -> np.ndarray:
    """One numeric array of a MAT-file: ``key``, or the file's only numeric variable.

    Raises:
        MatFileError: when ``key`` is missing or not numeric, or without ``key`` when the file
            holds no or several numeric variables (the message lists them).
    """
    variables = read_mat_variables(path)
    numeric = sorted(k for k, v in variables.items() if isinstance(v, np.ndarray))
    if key is None:
        if len(numeric) != 1:
            raise MatFileError(
                f"{path}: holds numeric variables {numeric}; name one with the card's 'key'"
            )
        key = numeric[0]
    if key not in variables:
        raise MatFileError(f"{path}: no variable '{key}' (variables: {sorted(variables)})")
    value = variables[key]
    if isinstance(value, str):
        raise MatFileError(f"{path}: variable '{key}' is a {value}, not a numeric array")
    return value


def _element(mtype: int, data: bytes) -> bytes:
    pad = -len(data) % 8
    return struct.pack("<II", mtype, len(data)) + data + b"\0" * pad


def write_mat(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write numeric or logical arrays as a little-endian Level 5 MAT-file (``-v7`` if
    ``compress``), for fake releases in tests."""
    codes = {v: k for k, v in MX_NUMERIC.items()}
    mi_codes = {v: k for k, v in MI_TYPES.items()}
    header = b"MATLAB 5.0 MAT-file, written by rsfusion".ljust(116, b" ")
    out = [header + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"]
    for name, array in arrays.items():
        arr = np.asarray(array)
        logical = arr.dtype == bool
        kind = "u1" if logical else arr.dtype.newbyteorder("<").str[1:]
        if kind not in codes:
            raise TypeError(f"write_mat: dtype {arr.dtype} of '{name}' is not numeric")
        flags = codes[kind] | (0x200 if logical else 0)
        dims = arr.shape if arr.ndim >= 2 else (1, arr.size)
        body = (
            _element(6, struct.pack("<II", flags, 0))
            + _element(5, np.asarray(dims, dtype="<i4").tobytes())
            + _element(1, name.encode())
            + _element(mi_codes[kind], arr.astype("<" + kind).ravel(order="F").tobytes())
        )
        matrix = _element(MI_MATRIX, body)
        if compress:
            packed = zlib.compress(matrix)
            matrix = struct.pack("<II", MI_COMPRESSED, len(packed)) + packed
        out.append(matrix)
    Path(path).write_bytes(b"".join(out))
