"""Deepness metadata of an exported model: what the QGIS plugin reads to run it unaided.

Deepness (a QGIS plugin that runs ONNX segmentation models on a map layer) reads JSON-encoded
``metadata_props`` of the model: ``model_type``, ``class_names`` ({id: name}), ``resolution``
(cm/px: it resamples the layer to it), ``tiles_size`` (its code reads ``tile_size``: both are
written), ``tiles_overlap`` (percent), ``standardization_mean`` / ``standardization_std`` and
``seg_thresh``. It feeds one input: the layer's bands, divided by 255, then ``(v - mean) / std``
per channel.

* RGB: rsfusion's ``(v - mean) / std`` in the raster's units is exactly that with ``mean / 255``
  and ``std / 255``.
* X: rsfusion's X normalisation is an affine map ``(v - offset) / scale`` too, but by default
  (``raster_minmax``) the offset and scale are each raster's own minimum and range, which a fixed
  standardisation cannot follow. It is Deepness-compatible when the map is fixed: the checkpoint's
  ``dataset`` (pooled mean and std of the training rasters) and ``scale`` modes always are; for
  ``raster_minmax`` the exporter fixes it from an X raster (its minimum and maximum, as rsfusion
  computes them for that raster) or a range given. Otherwise the model is marked incompatible.
* The output is logits, not probabilities: ``seg_thresh`` 0 keeps Deepness from thresholding
  them (its argmax is unchanged by a softmax).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rsfusion.data.normalise import XNorm
from rsfusion.errors import ConfigError, UserError
from rsfusion.models.checkpoint import CheckpointMeta

__all__ = [
    "DEEPNESS_KEYS",
    "check_pair",
    "stack_vrt",
    "DeepnessPlan",
    "XFixed",
    "deepness_metadata",
    "deepness_plan",
    "fixed_x",
    "resolution_cm",
]

#: the metadata keys Deepness reads (its "add metadata to model" page; ``tile_size`` is the
#: name its code reads for the documented ``tiles_size``) and the JSON type of their values
DEEPNESS_KEYS: dict[str, type | tuple[type, ...]] = {
    "model_type": str,
    "class_names": dict,
    "resolution": (int, float),
    "tiles_size": int,
    "tile_size": int,
    "tiles_overlap": int,
    "standardization_mean": list,
    "standardization_std": list,
    "seg_thresh": (int, float),
}


@dataclass(frozen=True)
class XFixed:
    """A fixed X normalisation ``(v - offset) / scale`` and, in words, where it comes from."""

    offset: float
    scale: float
    statistic: str


@dataclass(frozen=True)
class DeepnessPlan:
    """Whether Deepness can run the model as rsfusion does, and its standardisation.

    Attributes:
        compatible: one stacked input Deepness feeds (RGB bands then X bands).
        note: why not, or how X is normalised (and how that differs from rsfusion).
        mean, std: per input channel, for values already divided by 255.
    """

    compatible: bool
    note: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def fixed_x(
    meta: CheckpointMeta,
    x_raster: str | Path | None = None,
    x_range: tuple[float, float] | None = None,
) -> XFixed | None:
    """The fixed X normalisation Deepness can use; None when there is none (per-raster min-max
    with neither ``x_raster`` nor ``x_range``).

    Raises:
        ConfigError: an empty range, or an X statistic given for a checkpoint whose X
            normalisation is fixed already (it would make Deepness differ from rsfusion).

    Example:
        >>> meta = CheckpointMeta.from_dict({
        ...     "card": "vaihingen", "rgb_modality": "irrg", "rgb_bands": ["nir", "red", "green"],
        ...     "x_modality": "dsm", "x_bands": ["elevation"], "rgb_norm": {"mean": [100.0],
        ...     "std": [50.0]}, "x_norm": {"mode": "raster_minmax"}, "classes": ["a", "b"],
        ...     "palette": [[0, 0, 0], [9, 9, 9]], "ignore_index": 255, "window": 64,
        ...     "model": {"name": "mobanet", "num_classes": 2, "rgb_channels": 3,
        ...     "x_channels": 1}})
        >>> fixed_x(meta) is None
        True
        >>> fixed_x(meta, x_range=(260.0, 300.0))
        XFixed(offset=260.0, scale=40.0, statistic='the range 260 .. 300 given at export (--x-range)')
    """
    norm = XNorm(**meta.x_norm) if meta.x_norm else XNorm()
    if norm.mode != "raster_minmax":
        if x_raster is not None or x_range is not None:
            flag = "--x-raster" if x_raster is not None else "--x-range"
            raise ConfigError(
                f"{flag}: the checkpoint's X normalisation '{norm.mode}' is fixed already "
                f"({_fixed_words(norm)}); leave {flag} out"
            )
        offset, scale = norm.affine("")
        return XFixed(float(offset), float(scale), _fixed_words(norm))
    if x_range is not None:
        low, high = (float(v) for v in x_range)
        if not high > low:
            raise ConfigError(f"--x-range {low:g} {high:g}: the maximum must exceed the minimum")
        return XFixed(low, high - low, f"the range {low:g} .. {high:g} given at export (--x-range)")
    if x_raster is not None:
        offset, scale = norm.affine(str(x_raster))
        return XFixed(
            float(offset), float(scale),
            f"the minimum and maximum of {Path(x_raster).name} ({offset:g} .. "
            f"{offset + scale:g}), as rsfusion computes them for that raster (--x-raster)",
        )  # fmt: skip
    return None


def _fixed_words(norm: XNorm) -> str:
    if norm.mode == "dataset":
        return (
            f"the training rasters' pooled mean {norm.mean:g} and standard deviation "
            f"{norm.std:g}, as rsfusion uses"
        )
    return f"a fixed divisor {norm.scale:g}, as rsfusion uses"


def deepness_plan(meta: CheckpointMeta, takes_x: bool, x: XFixed | None) -> DeepnessPlan:
    """Whether (and how) Deepness runs the model: see the module docstring.

    ``takes_x``: the model reads X (an RGB-only model of an RGB+X checkpoint does not).
    """
    rgb = len(meta.rgb_bands)
    norm = meta.rgb_norm or {}
    mean = _per_channel(norm.get("mean", 0.0), rgb)
    std = _per_channel(norm.get("std", 1.0), rgb)
    rgb_mean = tuple(m / 255.0 for m in mean)
    rgb_std = tuple(s / 255.0 for s in std)
    if not takes_x:
        return DeepnessPlan(True, "RGB only: Deepness standardises as rsfusion", rgb_mean, rgb_std)
    if meta.get("kind") == "natural":
        return DeepnessPlan(
            False,
            f"X ({meta.x_modality}) of a natural-image dataset is encoded when read (encoding "
            f"'{meta.get('x_encoding')}'), which Deepness cannot do",
        )
    mode = (meta.x_norm or {}).get("mode", "raster_minmax")
    if x is None:
        return DeepnessPlan(
            False,
            f"rsfusion normalises X ({meta.x_modality}) by each raster's own minimum and "
            f"maximum (x_norm '{mode}'), which Deepness (one stacked layer, divided by 255 and "
            "standardised with fixed numbers) cannot compute; export again with --x-raster PATH "
            "(the X raster you will use in QGIS) or --x-range MIN MAX to fix it",
        )  # fmt: skip
    cx = len(meta.x_bands)
    differs = (
        ""
        if mode != "raster_minmax"
        else "; rsfusion itself uses each X raster's own minimum and maximum, so Deepness's X "
        "differs from rsfusion's on rasters whose range differs from this one"
    )
    note = (
        f"one input: the RGB bands then X ({meta.x_modality}); X as (v - {x.offset:g}) / "
        f"{x.scale:g}: {x.statistic}{differs}; X nodata is not set to 0 as rsfusion does"
    )
    return DeepnessPlan(
        True, note, rgb_mean + (x.offset / 255.0,) * cx, rgb_std + (x.scale / 255.0,) * cx
    )


def _per_channel(value: float | list[float], n: int) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    return values * n if len(values) == 1 else values


def resolution_cm(meta: CheckpointMeta) -> float | None:
    """The training GSD in cm/px (the dataset card's ``gsd_m``); None when the card has none
    or cannot be read here.

    Example:
        >>> resolution_cm(CheckpointMeta.from_dict({"card": "vaihingen", "rgb_modality": "irrg",
        ...     "rgb_bands": [], "x_modality": None, "x_bands": [], "rgb_norm": {}, "x_norm": {},
        ...     "classes": [], "palette": [], "ignore_index": 255, "window": 8, "model": {}}))
        9.0
    """
    from rsfusion.catalog import load_card

    try:
        gsd = load_card(meta.card).gsd_m
    except (UserError, OSError):
        return None
    return None if gsd is None else round(float(gsd) * 100.0, 6)


def deepness_metadata(
    meta: CheckpointMeta, window: int, overlap: int, plan: DeepnessPlan
) -> dict[str, str]:
    """The Deepness keys (JSON-encoded values) of a compatible model; {} for an incompatible
    one (Deepness cannot load its two inputs anyway)."""
    if not plan.compatible:
        return {}
    out = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(meta.classes)},
        "tiles_size": int(window),
        "tile_size": int(window),
        "tiles_overlap": int(round(100 * overlap / window)),
        "standardization_mean": [float(v) for v in plan.mean],
        "standardization_std": [float(v) for v in plan.std],
        "seg_thresh": 0.0,
    }
    resolution = resolution_cm(meta)
    if resolution is not None:
        out["resolution"] = resolution
    return {key: json.dumps(value) for key, value in out.items()}


#: GDAL's names of numpy's pixel types (a VRT band's dataType)
_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


def _open_pair(rgb: str | Path, x: str | Path) -> list:
    """Both rasters open, refused (and closed) unless they share one grid."""
    import rasterio

    from rsfusion.errors import PredictionError

    opened = []
    try:
        for path in (rgb, x):
            opened.append(rasterio.open(path))
        first, second = opened
        if (first.crs, first.transform, first.shape) != (
            second.crs,
            second.transform,
            second.shape,
        ):
            raise PredictionError(
                f"X raster {x} is not on the grid of orthophoto {rgb} (CRS, transform or size "
                "differ): resample it onto the orthophoto's grid first (e.g. gdalwarp with "
                "-t_srs, -te and -tr), then stack"
            )
    except rasterio.errors.RasterioError as err:
        for src in opened:
            src.close()
        raise PredictionError(f"cannot read {err}: give rasters GDAL can open") from None
    except PredictionError:
        for src in opened:
            src.close()
        raise
    return opened


def check_pair(rgb: str | Path, x: str | Path) -> None:
    """Refuse a pair :func:`stack_vrt` cannot stack (before any long work)."""
    for src in _open_pair(rgb, x):
        src.close()


def stack_vrt(rgb: str | Path, x: str | Path, out: str | Path) -> Path:
    """Write ``out`` (a GDAL VRT): the bands of ``rgb`` then those of ``x``, one layer as
    Deepness reads an RGB+X model's input. Each band keeps its file's pixel type and nodata; the
    sources are named by absolute path. The file lands under its name only when complete.

    Raises:
        PredictionError: the two rasters are not on one grid (CRS, transform, size), or a
            raster cannot be read.
    """
    import xml.etree.ElementTree as ET

    from rsfusion.data.writers import staged

    sources = [Path(rgb).absolute(), Path(x).absolute()]
    opened = _open_pair(rgb, x)
    try:
        first = opened[0]
        root = ET.Element("VRTDataset", rasterXSize=str(first.width), rasterYSize=str(first.height))
        if first.crs is not None:
            ET.SubElement(root, "SRS").text = first.crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in first.transform.to_gdal()
        )
        n = 0
        for path, src in zip(sources, opened):
            for b in range(1, src.count + 1):
                n += 1
                band = ET.SubElement(
                    root, "VRTRasterBand", dataType=_GDAL_TYPES[src.dtypes[b - 1]], band=str(n)
                )
                if src.descriptions[b - 1]:
                    ET.SubElement(band, "Description").text = src.descriptions[b - 1]
                if src.nodatavals[b - 1] is not None:
                    ET.SubElement(band, "NoDataValue").text = repr(float(src.nodatavals[b - 1]))
                source = ET.SubElement(band, "SimpleSource")
                ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(path)
                ET.SubElement(source, "SourceBand").text = str(b)
    finally:
        for src in opened:
            src.close()
    out = Path(out)
    with staged(out) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)
    return out
