"""Evaluate a checkpoint: python scripts/evaluate.py --ckpt CKPT --cfg NAME [--set ...]."""

from rsfusion.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
