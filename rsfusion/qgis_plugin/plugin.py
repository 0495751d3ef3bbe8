"""The QGIS plugin object: registers the rsfusion Processing provider."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import RsfusionProvider

__all__ = ["RsfusionPlugin"]


class RsfusionPlugin:
    """Adds the ``rsfusion`` provider to the Processing Toolbox (and to ``qgis_process``)."""

    def __init__(self, iface: object = None) -> None:
        self.iface = iface
        self.provider: RsfusionProvider | None = None

    def initProcessing(self) -> None:
        self.provider = RsfusionProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
