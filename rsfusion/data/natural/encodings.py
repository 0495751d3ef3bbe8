"""Modality encodings: how a stored file becomes model channels (a card's ``encodings``).

An encoding is an ordered mapping of ops, applied left to right to the stored array
``(C, H, W)`` (float64 holding the stored values; the stored dtype is remembered), e.g.::

    metres: {invalid: [0], scale: {uint16: 0.001, float32: 1.0}}   # 16-bit mm or float m
    repeat3: {to_unit: true, repeat: 3}                             # the papers' 3-channel input

Ops (a registry: a new op is one function with :func:`encoding_op`):

- ``refuse: {dtype: reason, ...}`` refuse files stored in these dtypes, with the reason (e.g.
  8-bit depth scaled per image has no metric scale); put it first;
- ``channels: [i, ...]`` keep these stored channels (0-based), in this order;
- ``rotr16: n`` rotate 16-bit values right by n bits (SUN-RGBD toolbox depth storage);
- ``invalid: [v, ...]`` stored values meaning "unknown" become NaN (put it first);
- ``to_unit: true`` divide by the stored integer type's maximum (8-bit 255, 16-bit 65535), so
  8- and 16-bit files of one sensor land on the same 0-1 scale;
- ``scale: s`` or ``{dtype: s, ...}`` multiply (per stored dtype, e.g. 16-bit mm -> metres);
- ``offset: o`` add; ``clip: [lo, hi]`` clip (NaN stays NaN);
- ``repeat: k`` repeat the channels k times (depth or grayscale -> 3 channels).

Besides ops an encoding may carry ``bands`` (channel names; default: derived from the stored
bands through the ops) and ``description``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsfusion.errors import EncodingError

Bands = tuple[str, ...]
RESERVED = ("bands", "description")


@dataclass(frozen=True)
class EncodingOp:
    """One op: ``apply(arr, arg, stored_dtype, source)``, its argument check and band names."""

    name: str
    apply: Callable[[np.ndarray, Any, np.dtype, str], np.ndarray]
    check: Callable[[Any], None]
    bands: Callable[[Bands, Any], Bands]


ENCODING_OPS: dict[str, EncodingOp] = {}


def _same(bands: Bands, arg: Any) -> Bands:
    return bands


def encoding_op(
    name: str,
    check: Callable[[Any], None],
    bands: Callable[[Bands, Any], Bands] = _same,
) -> Callable[[Callable], Callable]:
    """Register an op under ``name`` (the key used in cards)."""

    def wrap(fn: Callable) -> Callable:
        if name in ENCODING_OPS:
            raise ValueError(f"encoding op '{name}' is registered twice")
        ENCODING_OPS[name] = EncodingOp(name, fn, check, bands)
        return fn

    return wrap


def _number(arg: Any) -> bool:
    return isinstance(arg, int | float) and not isinstance(arg, bool)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"expects {what}")


def _check_channels(arg: Any) -> None:
    _need(
        isinstance(arg, list) and bool(arg) and all(isinstance(i, int) and i >= 0 for i in arg),
        "a non-empty list of channel indices >= 0",
    )


def _channel_bands(bands: Bands, arg: list[int]) -> Bands:
    if max(arg) >= len(bands):
        raise ValueError(f"channel {max(arg)} does not exist: the file stores {list(bands)}")
    return tuple(bands[i] for i in arg)


def _check_refuse(arg: Any) -> None:
    _need(
        isinstance(arg, dict)
        and bool(arg)
        and all(isinstance(k, str) and isinstance(v, str) and v for k, v in arg.items()),
        "a mapping stored dtype -> reason (e.g. {uint8: 'relative depth, no metric scale'})",
    )
    for key in arg:
        try:
            np.dtype(key)
        except TypeError as err:
            raise ValueError(f"'{key}' is not a numpy dtype name") from err


@encoding_op("refuse", _check_refuse)
def _refuse(arr: np.ndarray, arg: dict[str, str], dtype: np.dtype, source: str) -> np.ndarray:
    if dtype.name in arg:
        raise EncodingError(f"{source}: stores {dtype.name}; {arg[dtype.name]}")
    return arr


@encoding_op("channels", _check_channels, _channel_bands)
def _channels(arr: np.ndarray, arg: list[int], dtype: np.dtype, source: str) -> np.ndarray:
    if max(arg) >= arr.shape[0]:
        raise EncodingError(f"{source}: has {arr.shape[0]} channel(s), encoding needs {arg}")
    return arr[list(arg)]


@encoding_op("rotr16", lambda a: _need(isinstance(a, int) and 0 < a < 16, "an int in 1..15"))
def _rotr16(arr: np.ndarray, arg: int, dtype: np.dtype, source: str) -> np.ndarray:
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        raise EncodingError(f"{source}: rotr16 needs a 16-bit integer file, got {dtype}")
    v = arr.astype(np.uint32)
    return (((v >> arg) | (v << (16 - arg))) & 0xFFFF).astype(np.float64)


@encoding_op(
    "invalid",
    lambda a: _need(isinstance(a, list) and all(_number(v) for v in a), "a list of numbers"),
)
def _invalid(arr: np.ndarray, arg: list[float], dtype: np.dtype, source: str) -> np.ndarray:
    return np.where(np.isin(arr, arg), np.nan, arr)


@encoding_op("to_unit", lambda a: _need(a is True, "true"))
def _to_unit(arr: np.ndarray, arg: bool, dtype: np.dtype, source: str) -> np.ndarray:
    if dtype == np.bool_:
        return arr
    if dtype.kind not in "ui":
        raise EncodingError(
            f"{source}: to_unit scales 8/16-bit integer files by their maximum; this file "
            f"stores {dtype}: use 'scale' instead"
        )
    return arr / float(np.iinfo(dtype).max)


def _check_scale(arg: Any) -> None:
    ok = _number(arg) or (
        isinstance(arg, dict)
        and bool(arg)
        and all(isinstance(k, str) and _number(v) for k, v in arg.items())
    )
    _need(ok, "a number or a mapping stored dtype -> number (e.g. {uint16: 0.001})")
    if isinstance(arg, dict):
        for key in arg:
            try:
                np.dtype(key)
            except TypeError as err:
                raise ValueError(f"'{key}' is not a numpy dtype name") from err


@encoding_op("scale", _check_scale)
def _scale(arr: np.ndarray, arg: Any, dtype: np.dtype, source: str) -> np.ndarray:
    if isinstance(arg, dict):
        if dtype.name not in arg:
            raise EncodingError(
                f"{source}: stores {dtype.name}, but the encoding's scale is only known for "
                f"{sorted(arg)}; this file is not in the format the card describes"
            )
        arg = arg[dtype.name]
    return arr * float(arg)


@encoding_op("offset", lambda a: _need(_number(a), "a number"))
def _offset(arr: np.ndarray, arg: float, dtype: np.dtype, source: str) -> np.ndarray:
    return arr + float(arg)


@encoding_op(
    "clip",
    lambda a: _need(
        isinstance(a, list) and len(a) == 2 and all(_number(v) for v in a) and a[0] <= a[1],
        "[low, high] with low <= high",
    ),
)
def _clip(arr: np.ndarray, arg: list[float], dtype: np.dtype, source: str) -> np.ndarray:
    return np.clip(arr, arg[0], arg[1])


@encoding_op(
    "repeat",
    lambda a: _need(isinstance(a, int) and not isinstance(a, bool) and a >= 1, "an int >= 1"),
    lambda bands, k: tuple(bands) * k,
)
def _repeat(arr: np.ndarray, arg: int, dtype: np.dtype, source: str) -> np.ndarray:
    return np.tile(arr, (arg, 1, 1))


def check_ops(ops: dict[str, Any], stored_bands: Sequence[str]) -> Bands:
    """Validate an encoding's ops (names and arguments); return the channel names it makes.

    Raises:
        ValueError: naming the unknown op (with the closest known one) or the bad argument.
    """
    bands = tuple(stored_bands)
    for name, arg in ops.items():
        if name not in ENCODING_OPS:
            close = difflib.get_close_matches(name, ENCODING_OPS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown op '{name}' (known: {sorted(ENCODING_OPS)}){hint}")
        op = ENCODING_OPS[name]
        try:
            op.check(arg)
            bands = op.bands(bands, arg)
        except ValueError as err:
            raise ValueError(f"op '{name}': {err}, got {arg!r}") from err
    return bands


def apply_ops(stored: np.ndarray, ops: dict[str, Any], source: str) -> np.ndarray:
    """Run an encoding's ops on a stored ``(C, H, W)`` array; returns float32 ``(C', H, W)``."""
    dtype = stored.dtype
    arr = stored.astype(np.float64)
    for name, arg in ops.items():
        arr = ENCODING_OPS[name].apply(arr, arg, dtype, source)
    return arr.astype(np.float32)
