"""Inference: streaming, georeferenced sliding-window prediction of raster pairs.

Example (a notebook doing what ``scripts/predict.py`` does for one pair)::

    from rsfusion.inference import ModelRunner, PredictOptions, load_predictor, predict_pair

    model, meta = load_predictor("runs/demo_mobanet/latest/checkpoints/last.ckpt")
    runner = ModelRunner(model, device="auto", precision="auto")
    written = predict_pair(runner, meta, "ortho.tif", "dsm.tif", "predictions/", PredictOptions())
"""

from rsfusion.inference.predict import PredictOptions, load_predictor, predict_pair
from rsfusion.inference.runner import ModelRunner

__all__ = ["ModelRunner", "PredictOptions", "load_predictor", "predict_pair"]
