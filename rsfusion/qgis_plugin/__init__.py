"""rsfusion's QGIS plugin: the ``rsfusion`` Processing provider (``rsfusion:predict``).

QGIS's Python runs this package, so it imports only the standard library and ``qgis`` (never
torch): the prediction itself runs in the rsfusion environment's Python, in its own process.
``scripts/install_qgis_plugin.py`` copies it into a QGIS profile as ``python/plugins/rsfusion``
and enables it. Its modules that need ``qgis`` are imported only when QGIS loads the plugin.
"""

from __future__ import annotations


def classFactory(iface: object) -> object:
    """The plugin object QGIS loads (``iface`` is None in ``qgis_process``)."""
    from .plugin import RsfusionPlugin

    return RsfusionPlugin(iface)
