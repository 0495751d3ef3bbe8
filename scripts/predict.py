"""Predict a raster pair: python scripts/predict.py --ckpt CKPT --rgb PATH --x PATH --out DIR."""

from rsfusion.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
