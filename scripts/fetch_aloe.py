#!/usr/bin/env python3
"""Fetch a real RGB-D pair for the tests: Middlebury 2006 "Aloe" from OpenCV's source release.

``python scripts/fetch_aloe.py [--out tests/data/aloe]`` downloads the opencv-python sdist from
PyPI with pip, extracts only ``opencv/samples/data/aloeL.jpg`` (left view, 1282x1110 RGB) and
``aloeGT.png`` (its ground-truth disparity, 8-bit, in pixels, 0 = unknown), checks their
SHA-256, and writes them with a README.md on provenance and licence.

pip is asked for the source release of opencv-python alone (``--no-binary opencv-python``):
``--no-binary :all:`` would also force its build dependencies (cmake, numpy) to build from
source, which fails without a compiler toolchain; the downloaded archive is the same sdist.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OPENCV_VERSION = "4.10.0.84"
FILES = {
    "aloeL.jpg": "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee",
    "aloeGT.png": "39ce4f3cb48d797d1091c5152f93361d8104298c337f8a1c134d87dda3442c04",
}
ROOT = Path(__file__).resolve().parents[1]

README = f"""# Middlebury 2006 "Aloe" (via OpenCV's samples)

Real RGB-D test data for `tests/data/natural/test_aloe.py`, written by `scripts/fetch_aloe.py`.

| file | content | sha256 |
|---|---|---|
| aloeL.jpg | left view (view 1), 1282x1110 RGB JPEG | {FILES["aloeL.jpg"]} |
| aloeGT.png | ground-truth disparity of the left view, 8-bit, pixels at full size; 0 = unknown | {FILES["aloeGT.png"]} |

Provenance: the "Aloe" scene of the Middlebury 2006 stereo datasets
(https://vision.middlebury.edu/stereo/data/scenes2006/), full size, as redistributed in OpenCV's
source tree (`opencv/samples/data/`, used by `samples/python/stereo_match.py`), taken from the
PyPI source release opencv-python=={OPENCV_VERSION} (`pip download --no-deps --no-binary
opencv-python opencv-python=={OPENCV_VERSION}`).

Licence: the Middlebury stereo datasets are offered for research use; cite D. Scharstein and
C. Pal, "Learning conditional random fields for stereo", CVPR 2007, and H. Hirschmueller and
D. Scharstein, "Evaluation of cost functions for stereo matching", CVPR 2007. OpenCV (Apache
License 2.0) ships the files without a separate licence of their own.
"""


def fetch(out: Path) -> dict[str, Path]:
    """Download the sdist into a temporary folder and extract the checked files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
               "opencv-python", f"opencv-python=={OPENCV_VERSION}", "-d", tmp]  # fmt: skip
        subprocess.run(cmd, check=True)
        sdist = next(Path(tmp).glob("opencv*python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            for name, digest in FILES.items():
                member = f"{sdist.name.removesuffix('.tar.gz')}/opencv/samples/data/{name}"
                handle = tar.extractfile(member)
                if handle is None:
                    raise FileNotFoundError(f"{member} is not a file in {sdist.name}")
                data = handle.read()
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise ValueError(f"{member}: sha256 {got}, expected {digest}")
                (out / name).write_bytes(data)
                written[name] = out / name
    (out / "README.md").write_text(README)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "aloe")
    args = parser.parse_args(argv)
    for name, path in fetch(args.out).items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
