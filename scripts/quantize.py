"""Quantise a checkpoint to int8 for CPUs: python scripts/quantize.py --ckpt CKPT [...]."""

from rsfusion.cli.quantize import main

if __name__ == "__main__":
    raise SystemExit(main())
