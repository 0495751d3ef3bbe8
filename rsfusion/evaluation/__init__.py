"""Evaluation: a checkpoint scored with the papers' protocols, from Python or the command line.

:func:`evaluate` is what ``scripts/evaluate.py`` runs: it returns the metrics and, given an
``out`` folder, writes ``metrics.json``, per-mode reports and figures and prediction overlays.
The parts are usable alone: :mod:`~rsfusion.evaluation.protocol` (input modes, test-time
augmentation, scoring tiles and images), :mod:`~rsfusion.evaluation.labels` (eroded or full
labels, read as class ids) and :mod:`~rsfusion.evaluation.overlays` (overlay PNGs).

Example (a notebook doing what ``scripts/evaluate.py --inputs both`` does on the quick
start's MoBaNet run)::

    from rsfusion.evaluation import evaluate

    metrics = evaluate("demo_mobanet", "runs/demo_mobanet/latest/checkpoints/last.ckpt",
                       out="eval", inputs=["both"])
    metrics["both"]["mIoU"]
"""

from rsfusion.evaluation.api import evaluate, load_trained
from rsfusion.evaluation.labels import read_labels, tile_labels
from rsfusion.evaluation.overlays import save_overlay
from rsfusion.evaluation.protocol import EvalOptions, format_modality_table, tta_protocol

__all__ = [
    "EvalOptions",
    "evaluate",
    "format_modality_table",
    "load_trained",
    "read_labels",
    "save_overlay",
    "tile_labels",
    "tta_protocol",
]
