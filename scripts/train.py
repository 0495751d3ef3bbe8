"""Train a model from a config: python scripts/train.py --cfg NAME [--set a.b=v ...]."""

from rsfusion.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
