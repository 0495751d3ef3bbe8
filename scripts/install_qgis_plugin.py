"""Install the QGIS plugin: python scripts/install_qgis_plugin.py [--profile-dir DIR] [--python PATH]."""

import sys
from pathlib import Path

# any Python may run this (the installer needs no torch): find rsfusion in this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsfusion.cli.install_qgis_plugin import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
