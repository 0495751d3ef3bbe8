"""QGIS styles for every prediction output: the layers open named and coloured in QGIS.

QGIS loads ``NAME.qml`` beside ``NAME.tif`` as the raster's default style, and a GeoPackage
layer's default style from the file's ``layer_styles`` table. QGIS 3.22 ignores GDAL category
names and the ``CLASS_NAMES`` tag (its legend of a colour-table raster lists "0" ... "255"), so
one style writer produces:

* classes rasters: a paletted renderer, one entry per class with its name and palette colour;
* probability and confidence rasters (uint8 0..255 = probability 0..1): a pseudocolour ramp
  whose legend reads in probability (0, 0.25, ... 1);
* GeoPackage polygons: a categorised renderer on ``class_name`` with the palette's colours and
  no outline, stored as the layer's default style.

Besides the ``.qml``, :func:`category_aux_xml` gives GDAL's own category names (a PAM
``.aux.xml``) for other GDAL-based clients (ArcGIS, GDAL tools).

Example:
    >>> qml = classes_qml(["road", "tree"], [[128, 128, 128], [0, 128, 0]])
    >>> 'label="tree"' in qml and 'color="#008000"' in qml
    True
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

__all__ = [
    "category_aux_xml",
    "classes_qml",
    "polygons_qml",
    "probability_qml",
    "store_gpkg_style",
    "write_text_atomic",
]

_HEAD = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
#: QGIS's "Viridis" stops: a ramp that reads low to high, also in grey and for colour-blind eyes
_RAMP = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")


def _hex(colour: Sequence[int]) -> str:
    r, g, b = (max(0, min(255, int(c))) for c in list(colour)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _colours(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> list[str]:
    if len(palette) < len(classes):
        raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
    return [_hex(palette[i]) for i in range(len(classes))]


def classes_qml(
    classes: Sequence[str], palette: Sequence[Sequence[int]], band: int = 1, opacity: float = 1.0
) -> str:
    """A QGIS paletted style: class ``i`` drawn in ``palette[i]`` with legend label
    ``classes[i]``; other values (nodata) transparent."""
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="{c}" label={quoteattr(str(name))} alpha="255"/>'
        for i, (name, c) in enumerate(zip(classes, _colours(classes, palette)))
    )
    return (
        f'{_HEAD}<qgis version="3.22.16" styleCategories="Symbology">\n'
        "  <pipe>\n"
        f'    <rasterrenderer type="paletted" band="{band}" opacity="{opacity}" '
        'alphaBand="-1" nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def probability_qml(band: int = 1, scale: float = 255.0, label: str = "probability") -> str:
    """A QGIS pseudocolour style for a probability stored as ``round(p * scale)`` (uint8
    0..255): the legend reads 0, 0.25, 0.5, 0.75, 1."""
    items = "\n".join(
        f'            <item value="{scale * k / 4:g}" color="{c}" label="{k / 4:g}" alpha="255"/>'
        for k, c in enumerate(_RAMP)
    )
    return (
        f'{_HEAD}<qgis version="3.22.16" styleCategories="Symbology">\n'
        "  <pipe>\n"
        f'    <rasterrenderer type="singlebandpseudocolor" band="{band}" opacity="1" '
        f'alphaBand="-1" classificationMin="0" classificationMax="{scale:g}" nodataColor="">\n'
        "      <rasterTransparency/>\n"
        f'      <rastershader><colorrampshader colorRampType="INTERPOLATED" '
        f'classificationMode="1" clip="0" minimumValue="0" maximumValue="{scale:g}" '
        f'labelPrecision="2">\n'
        f"{items}\n"
        "      </colorrampshader></rastershader>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        f"  <!-- {label}: stored as round(p * {scale:g}) -->\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def polygons_qml(
    classes: Sequence[str], palette: Sequence[Sequence[int]], field: str = "class_name"
) -> str:
    """A QGIS categorised vector style on ``field``: one category per class, its palette
    colour, no outline."""
    colours = _colours(classes, palette)
    categories = "\n".join(
        f'      <category render="true" symbol="{i}" value={quoteattr(str(n))} '
        f"label={quoteattr(str(n))}/>"
        for i, n in enumerate(classes)
    )
    symbols = "\n".join(
        f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        '        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
        f'          <Option type="Map"><Option type="QString" name="color" '
        f'value="{int(c[1:3], 16)},{int(c[3:5], 16)},{int(c[5:7], 16)},255"/>'
        '<Option type="QString" name="outline_style" value="no"/>'
        '<Option type="QString" name="style" value="solid"/></Option>\n'
        "        </layer>\n"
        "      </symbol>"
        for i, c in enumerate(colours)
    )
    return (
        f'{_HEAD}<qgis version="3.22.16" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} '
        'symbollevels="0" enableorderby="0" forceraster="0">\n'
        "    <categories>\n"
        f"{categories}\n"
        "    </categories>\n"
        "    <symbols>\n"
        f"{symbols}\n"
        "    </symbols>\n"
        "  </renderer-v2>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def category_aux_xml(classes: Sequence[str], band: int = 1) -> str:
    """GDAL's PAM ``.aux.xml`` with the band's category names (``GetCategoryNames``)."""
    names = "\n".join(f"      <Category>{_escape(str(n))}</Category>" for n in classes)
    return (
        "<PAMDataset>\n"
        f'  <PAMRasterBand band="{band}">\n'
        "    <CategoryNames>\n"
        f"{names}\n"
        "    </CategoryNames>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through an exclusively created temporary in the same folder
    (never under the final name half-written, never through a planted link)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_LAYER_STYLES = """CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT CURRENT_TIMESTAMP)"""


def store_gpkg_style(gpkg: str | Path, layer: str, qml: str, name: str = "rsfusion") -> None:
    """Store ``qml`` as the default style of ``layer`` in GeoPackage ``gpkg`` (QGIS's
    ``layer_styles`` table, registered in ``gpkg_contents`` as QGIS does; QGIS matches the
    layer by table and geometry column); replaces a style of the same name. Call it on the
    staging file, before it is moved to its final name."""
    stamp = _dt.datetime.now(_dt.UTC)  # GeoPackage wants milliseconds
    now = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    with sqlite3.connect(str(gpkg)) as db:
        found = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        if found is None:
            raise ValueError(f"{gpkg}: no layer '{layer}' with a geometry column")
        geometry_column = found[0]
        db.execute(_LAYER_STYLES)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
            "last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', ?)",
            (now,),
        )
        db.execute(
            "DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name)
        )
        db.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '', ?)",
            (layer, geometry_column, name, qml, "rsfusion classes", now),
        )
