"""Streaming sliding-window prediction of one RGB (+ X) raster pair to georeferenced outputs.

Everything the model needs comes from the checkpoint's ``rsfusion`` metadata (bands, RGB and X
normalisation, classes, palette, window, model spec, frozen-backbone hash). Windows are read
with rasterio windowed reads, batched, and their logits blended with a smooth weight map into a
row-band accumulator whose memory does not grow with the raster; completed rows are written to
tiled GeoTIFFs under temporary names and renamed when complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsfusion.data.normalise import XNorm
from rsfusion.inference.accumulator import RowBandAccumulator
from rsfusion.inference.blending import edge_aware, weight_map
from rsfusion.inference.windows import batched, plan_windows
from rsfusion.inference.writer import StreamingGeoTIFF, class_dtype, to_cog
from rsfusion.models.base import ModelSpec, build_model


class PredictionError(ValueError):
    """Inputs or checkpoint unfit for prediction; the message names the file and the fix."""


@dataclass
class PredictOptions:
    """Prediction settings; window/overlap default to the checkpoint's training window."""

    window: int | None = None
    overlap: int | None = None
    blend: str = "cosine"
    batch_size: int = 4
    probs: bool = False
    confidence: bool = False
    cog: bool = False
    vector: bool = False
    align: bool = False
    min_area: float = 0.0
    simplify: float = 0.0


def load_predictor(ckpt_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a checkpoint and its metadata; refuses a different frozen backbone."""
    from rsfusion.training.task import frozen_digest

    path = Path(ckpt_path)
    if not path.is_file():
        raise PredictionError(f"--ckpt {path}: no such checkpoint file")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    meta = saved.get("rsfusion")
    if not meta or "model" not in meta:
        raise PredictionError(f"--ckpt {path} carries no rsfusion metadata: train it with train.py")
    torch.manual_seed(meta.get("config", {}).get("seed", 42))  # same init as training
    model = build_model(ModelSpec(**meta["model"]))
    digest = frozen_digest(model)
    if meta.get("frozen_sha256") != digest:
        raise PredictionError(
            f"--ckpt {path} was trained on a frozen backbone with sha256 "
            f"{meta.get('frozen_sha256')}, this one has {digest}: load the weights named in "
            f"the checkpoint's config (model.weights = {meta['model'].get('weights')})"
        )
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()}
    missing = [k for k in model.state_dict() if k not in state and not _frozen(model, k)]
    if missing:
        raise PredictionError(f"--ckpt {path} lacks tensors of its model, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval(), meta


def _frozen(model: torch.nn.Module, key: str) -> bool:
    params = dict(model.named_parameters())
    return key in params and not params[key].requires_grad


@contextlib.contextmanager
def open_inputs(rgb: Path, x: Path | None, meta: dict[str, Any], align: bool) -> Iterator[tuple]:
    """Open the pair, check bands and grids against the checkpoint; X warped with ``align``."""
    with rasterio.open(rgb) as src:
        if src.count != len(meta["rgb_bands"]):
            raise PredictionError(
                f"--rgb {rgb} has {src.count} bands, the checkpoint was trained on "
                f"{len(meta['rgb_bands'])} {meta['rgb_bands']}: give the matching orthophoto"
            )
        if meta.get("x_bands") and x is None:
            raise PredictionError(f"the checkpoint needs an X raster {meta['x_bands']}: add --x")
        if x is None:
            yield src, None
            return
        with rasterio.open(x) as xsrc:
            if xsrc.count != len(meta["x_bands"]):
                raise PredictionError(
                    f"--x {x} has {xsrc.count} bands, the checkpoint expects {meta['x_bands']}"
                )
            same = (xsrc.crs, xsrc.transform, xsrc.shape) == (src.crs, src.transform, src.shape)
            if same:
                yield src, xsrc
            elif align:
                with WarpedVRT(
                    xsrc, crs=src.crs, transform=src.transform, width=src.width,
                    height=src.height, resampling=rasterio.enums.Resampling.bilinear,
                ) as vrt:  # fmt: skip
                    yield src, vrt
            else:
                raise PredictionError(
                    f"--x {x} is not on the grid of --rgb {rgb}: CRS {xsrc.crs} vs {src.crs}, "
                    f"size {xsrc.width}x{xsrc.height} vs {src.width}x{src.height}, transform "
                    f"{tuple(xsrc.transform)[:6]} vs {tuple(src.transform)[:6]}. Pass --align "
                    "to resample X onto the RGB grid."
                )


def _read(src: Any, win: Window, size: int, fill: float = 0.0) -> np.ndarray:
    """A window as float32, nodata and outside pixels set to ``fill``, padded to ``size``.

    As in training: RGB pads with pixel value 0 before normalisation; X reads nodata and
    padding as NaN, which becomes 0 after normalisation.
    """
    inside = win.intersection(Window(0, 0, src.width, src.height))
    data = src.read(window=inside, masked=True).astype(np.float32)
    data = data.filled(fill) if np.ma.isMaskedArray(data) else data
    out = np.full((data.shape[0], size, size), fill, dtype=np.float32)
    r, c = int(inside.row_off - win.row_off), int(inside.col_off - win.col_off)
    out[:, r : r + data.shape[1], c : c + data.shape[2]] = data
    return out


def predict_pair(
    model: torch.nn.Module,
    meta: dict[str, Any],
    rgb: str | Path,
    x: str | Path | None,
    out_dir: str | Path,
    options: PredictOptions | None = None,
) -> dict[str, Path]:
    """Predict one raster pair; returns the paths written (classes, probs, confidence, ...)."""
    opts = options or PredictOptions()
    rgb, out_dir = Path(rgb), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    window = opts.window or int(meta["window"])
    overlap = window // 4 if opts.overlap is None else opts.overlap
    classes, palette = meta["classes"], meta["palette"]
    k = len(classes)
    norm = meta["rgb_norm"]
    mean = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(-1, 1, 1)
    stem = rgb.stem
    written: dict[str, Path] = {}
    with open_inputs(rgb, Path(x) if x else None, meta, opts.align) as (src, xsrc):
        h, w = src.height, src.width
        x_affine = XNorm(**meta["x_norm"]).affine(str(x)) if xsrc is not None else None
        wins = plan_windows(h, w, window, window - overlap)
        base_weights = weight_map(window, overlap, opts.blend)
        acc = RowBandAccumulator(h, w, k, window)
        dtype = class_dtype(k)
        nodata = 255 if dtype == "uint8" and k < 255 else 65535
        profile = (src.crs, src.transform, w, h)
        outputs = {"classes": (1, dtype, nodata)}
        if opts.probs:
            outputs["probs"] = (k, "uint8", None)
        if opts.confidence:
            outputs["confidence"] = (1, "uint8", None)
        with contextlib.ExitStack() as stack:
            writers = {
                name: stack.enter_context(
                    StreamingGeoTIFF(
                        _staging(out_dir, stem, name, opts.cog), profile, count, dt, nodata=nd,
                        colormap=(
                            {i: tuple(c) for i, c in enumerate(palette)} if name == "classes"
                            else None
                        ),
                        class_names=classes,
                        band_descriptions=classes if name == "probs" else None,
                    )
                )
                for name, (count, dt, nd) in outputs.items()
            }  # fmt: skip
            for batch in batched(wins, opts.batch_size):
                rgb_b = np.stack([(_read(src, wn, window) - mean) / std for wn in batch])
                x_t = None
                if xsrc is not None:
                    offset, scale = x_affine
                    xs = [(_read(xsrc, wn, window, np.nan) - offset) / scale for wn in batch]
                    x_t = torch.from_numpy(np.nan_to_num(np.stack(xs), nan=0.0).astype(np.float32))
                with torch.no_grad():
                    out = model(torch.from_numpy(rgb_b.astype(np.float32)), x_t)
                logits = (out["out"] if isinstance(out, dict) else out).float().numpy()
                for wn, lg in zip(batch, logits):
                    acc.add(wn, lg, edge_aware(base_weights, wn, h, w))
                next_row = _next_row(wins, batch[-1])
                _write_rows(acc.flush(min(next_row, h)), writers, src, nodata)
            _write_rows(acc.finish(), writers, src, nodata)
    for name in outputs:
        final = out_dir / f"{stem}_{name}.tif"
        if opts.cog:  # tiled GeoTIFF first (bounded memory), then COG under the final name
            staged = _staging(out_dir, stem, name, True)
            to_cog(staged, final)
            staged.unlink()
        written[name] = final
    if opts.vector:
        from rsfusion.inference.vectorize import vectorize_classes

        written["vector"] = vectorize_classes(
            written["classes"], out_dir / f"{stem}.gpkg", classes, min_area=opts.min_area,
            simplify=opts.simplify, nodata=nodata,
        )  # fmt: skip
    return written


def _staging(out_dir: Path, stem: str, name: str, cog: bool) -> Path:
    """Where an output is streamed: its final name, or a hidden one when a COG follows."""
    return out_dir / (f".{stem}_{name}.tiled.tif" if cog else f"{stem}_{name}.tif")


def _next_row(wins: list[Window], last: Window) -> int:
    """The first row a later window can still touch (rows above it are complete)."""
    later = [wn.row_off for wn in wins if (wn.row_off, wn.col_off) > (last.row_off, last.col_off)]
    return int(min(later)) if later else int(1e12)


def _write_rows(blocks: Iterator, writers: dict, src: Any, nodata: int) -> None:
    for row, logits, _ in blocks:
        n = logits.shape[1]
        valid = src.read_masks(1, window=Window(0, row, src.width, n)) > 0
        exp = np.exp(logits - logits.max(0, keepdims=True))
        probs = exp / exp.sum(0, keepdims=True)
        classes = np.where(valid, logits.argmax(0), nodata)
        writers["classes"].write_rows(row, classes[None].astype(writers["classes"].dtype))
        if "probs" in writers:
            writers["probs"].write_rows(row, np.rint(probs * 255).astype(np.uint8))
        if "confidence" in writers:
            writers["confidence"].write_rows(
                row, np.rint(probs.max(0) * 255).astype(np.uint8)[None]
            )
