"""Picture of a prediction drawn by QGIS (run with QGIS's Python, e.g. /usr/bin/python3):
python3 scripts/render_qgis_picture.py --rgb ORTHO --pred-dir DIR --out PNG [--ckpt CKPT --x X]."""

import os
import sys
from pathlib import Path

# QGIS's Python has no rsfusion installed (nor torch): take the plugin's modules from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rsfusion.qgis_plugin.picture import main  # noqa: E402

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a headless QGIS may crash in its own exit once the picture is written
