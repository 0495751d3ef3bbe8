"""Write the synthetic demo scene in the ISPRS Vaihingen layout: make_demo.py --out DIR."""

from __future__ import annotations

import argparse

from rsfusion.data.demo import (
    DEMO_AREAS,
    DEMO_TEST_AREAS,
    DEMO_TRAIN_AREAS,
    DEMO_VAL_AREAS,
    make_demo_scene,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfusion-make-demo", description=__doc__)
    parser.add_argument("--out", default="demo_data", help="folder to write (default demo_data)")
    parser.add_argument("--size", type=int, default=320, help="tile size in pixels (default 320)")
    parser.add_argument(
        "--seed", type=int, default=0, help="scene seed (default 0: the measured demo)"
    )
    splits = ", ".join(
        f"{name} {' '.join(map(str, areas))}"
        for name, areas in (
            ("training", DEMO_TRAIN_AREAS),
            ("validation", DEMO_VAL_AREAS),
            ("test", DEMO_TEST_AREAS),
        )
    )
    parser.add_argument(
        "--areas",
        type=int,
        nargs="+",
        default=list(DEMO_AREAS),
        help=f"areas to write (default: those of the demo configs: {splits})",
    )
    args = parser.parse_args(argv)
    root = make_demo_scene(args.out, areas=args.areas, size=args.size, seed=args.seed)
    n = sum(1 for p in root.rglob("*.tif"))
    print(f"demo scene: {n} rasters for areas {args.areas} in {root.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
