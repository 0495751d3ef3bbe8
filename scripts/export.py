"""Export a checkpoint to ONNX: python scripts/export.py --ckpt CKPT --onnx OUT.onnx [...]."""

from rsfusion.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
