"""Pictures of a prediction: overlay PNGs (image, prediction, errors) and palette class PNGs.

An overlay has three panels side by side (the image, the prediction over it, the errors on it)
under a title (the tile and the inputs used) and above a legend (each class's colour and name,
and the error colour). The title and legend are also stored in the PNG's text chunks, so that
a program can read what a picture shows. Every PNG is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: the colour errors are painted in on the overlays' third panel (the next one of
#: ERROR_COLOURS when a class has it, e.g. Vaihingen's red clutter)
ERROR_COLOUR = (255, 0, 0)
ERROR_COLOURS = (ERROR_COLOUR, (255, 0, 255), (255, 128, 0), (0, 0, 0))


def error_colour(palette: Any) -> tuple[int, int, int]:
    """The first of ERROR_COLOURS that no class of ``palette`` has.

    Example:
        >>> error_colour([[255, 255, 255], [255, 0, 0]]), error_colour([[0, 0, 255]])
        ((255, 0, 255), (255, 0, 0))
    """
    used = {tuple(int(v) for v in c[:3]) for c in palette}
    return next((c for c in ERROR_COLOURS if c not in used), ERROR_COLOUR)


def read_preview(rgb_source: str, max_side: int = 800) -> tuple[np.ndarray, int]:
    """The first three bands of a raster, decimated to at most ``max_side``, and the step."""
    import rasterio

    with rasterio.open(rgb_source) as src:
        step = max(1, int(np.ceil(max(src.width, src.height) / max_side)))
        out_shape = (min(src.count, 3), -(-src.height // step), -(-src.width // step))
        img = src.read(list(range(1, out_shape[0] + 1)), out_shape=out_shape)
    return img.astype(np.float32), step


def save_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    meta: Any,
    path: Path,
    title: str = "",
) -> Path:
    """PNG of three panels (the image, the prediction over it, the errors on it) under
    a title (``title``: the tile and input mode) and above a legend (each class's colour and
    name, the error colour: red, or :func:`error_colour` when a class is red), written
    atomically. The title and legend are also in the PNG's
    text chunks (``Title``, ``Legend``: JSON).

    ``image`` is (bands, h, w) at the resolution of ``pred`` and ``target`` (any value range);
    ``meta`` has the ``classes``, ``palette`` and ``ignore_index`` of a
    :class:`~rsfusion.models.checkpoint.CheckpointMeta`.

    Example:
        >>> import types
        >>> meta = types.SimpleNamespace(classes=["road", "tree"], ignore_index=255,
        ...                              palette=[[255, 255, 255], [0, 255, 0]])
        >>> pred, target = np.zeros((8, 8), int), np.ones((8, 8), int)
        >>> path = getfixture("tmp_path") / "tile.png"
        >>> save_overlay(np.zeros((3, 8, 8)), pred, target, meta, path, "tile: RGB + X").name
        'tile.png'
    """
    from PIL import Image, PngImagePlugin

    img = np.repeat(image, 3, 0) if image.shape[0] == 1 else image[:3]
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    img = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).transpose(1, 2, 0)
    palette = np.asarray(list(meta.palette) + [[0, 0, 0]] * 256, np.float32)
    colours = palette[np.clip(pred, 0, len(palette) - 1)]
    over = 0.5 * img + 0.5 * colours
    wrong = (pred != target) & (target != int(meta.ignore_index))
    errors = img * 0.4
    red = error_colour(meta.palette)
    errors[wrong] = red
    panel = np.concatenate([img, over, errors], axis=1).astype(np.uint8)
    legend = [(str(name), tuple(int(v) for v in colour[:3]))
              for name, colour in zip(meta.classes, meta.palette)]  # fmt: skip
    legend.append(("error (prediction differs from the label)", red))
    figure = _titled_with_legend(Image.fromarray(panel), title, legend)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    info.add_text("Legend", json.dumps([[name, list(rgb)] for name, rgb in legend]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    figure.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def _titled_with_legend(panels: Any, title: str, legend: list[tuple[str, tuple]]) -> Any:
    """``panels`` (three side by side) on a white canvas with the title and panel captions
    above and the legend swatches below, wrapped to the canvas width (PIL's own font)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return int(probe.textlength(text, font=font))

    line, pad, swatch = 18, 6, 12
    width = max(panels.width, 420, text_width(title) + 2 * pad)
    rows: list[list[tuple[str, tuple, int]]] = [[]]
    x = pad
    for name, rgb in legend:
        item = swatch + 4 + text_width(name) + 14
        if rows[-1] and x + item > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((name, rgb, x))
        x += item
    top = pad + 2 * line
    canvas = Image.new("RGB", (width, top + panels.height + pad + len(rows) * line + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=font)
    third = panels.width / 3
    for i, caption in enumerate(("image", "prediction", "errors")):
        draw.text((round(i * third) + 2, pad + line), caption, fill=(60, 60, 60), font=font)
    canvas.paste(panels, (0, top))
    y = top + panels.height + pad
    for row in rows:
        for name, rgb, x0 in row:
            draw.rectangle([x0, y + 2, x0 + swatch, y + 2 + swatch], fill=rgb, outline="black")
            draw.text((x0 + swatch + 4, y), name, fill="black", font=font)
        y += line
    return canvas


def save_class_png(pred: np.ndarray, palette: list, path: Path) -> Path:
    """Class ids as a palette PNG (natural-image predictions), written atomically."""
    from PIL import Image

    img = Image.fromarray(pred.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c][:768]
    img.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
