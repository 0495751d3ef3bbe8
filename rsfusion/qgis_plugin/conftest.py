"""pytest: the modules that import ``qgis`` are collected only where ``qgis`` imports."""

import importlib.util

collect_ignore = (
    [] if importlib.util.find_spec("qgis") else ["algorithms.py", "plugin.py", "provider.py"]
)
