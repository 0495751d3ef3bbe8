"""The ``rsfusion`` Processing provider and its setting: the rsfusion environment's Python."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsProcessingProvider, QgsSettings

from .algorithms import PredictAlgorithm, PredictFolderAlgorithm
from .environment import ENV_FILE, ENV_VAR, HERE

__all__ = ["PYTHON_SETTING", "RsfusionProvider", "python_setting"]

#: the Processing setting (Settings > Options > Processing > Providers > rsfusion)
PYTHON_SETTING = "RSFUSION_PYTHON"
_KEY = f"Processing/Configuration/{PYTHON_SETTING}"  # where Processing stores it


def python_setting() -> str:
    """The provider's Python setting ('' when not set)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        value = ProcessingConfig.getSetting(PYTHON_SETTING)
    except ImportError:  # Processing's Python part is not loaded (a bare PyQGIS script)
        value = None
    if value is None:
        value = QgsSettings().value(_KEY, "")
    return str(value or "").strip()


class RsfusionProvider(QgsProcessingProvider):
    """Provider ``rsfusion``: ``rsfusion:predict`` and ``rsfusion:predict_folder``."""

    def id(self) -> str:
        return "rsfusion"

    def name(self) -> str:
        return "rsfusion"

    def longName(self) -> str:
        return "rsfusion: RGB + X semantic segmentation"

    def icon(self):
        return QgsApplication.getThemeIcon("/processingAlgorithm.svg")

    def load(self) -> bool:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:
            pass
        else:
            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(), PYTHON_SETTING,
                    f"Python of the rsfusion environment (empty: {ENV_VAR}, else the one "
                    f"recorded in {HERE / ENV_FILE} by scripts/install_qgis_plugin.py)",
                    "", valuetype=Setting.FILE,
                )
            )  # fmt: skip
            ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        try:
            from processing.core.ProcessingConfig import ProcessingConfig
        except ImportError:
            return
        ProcessingConfig.removeSetting(PYTHON_SETTING)

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(PredictAlgorithm())
        self.addAlgorithm(PredictFolderAlgorithm())
