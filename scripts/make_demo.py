"""Write the demo scene: python scripts/make_demo.py --out demo_data."""

from rsfusion.cli.make_demo import main

if __name__ == "__main__":
    raise SystemExit(main())
