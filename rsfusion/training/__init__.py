"""Training: the LightningModule, metrics and optimisation.

Example (a notebook doing what ``scripts/train.py`` does)::

    import lightning as L
    from rsfusion.config import load_config
    from rsfusion.data import make_datamodule
    from rsfusion.training import SegmentationTask

    cfg = load_config("demo_mobanet")
    L.seed_everything(cfg.seed)
    dm = make_datamodule(cfg.data, cfg.seed)
    task = SegmentationTask.from_config(cfg, dm)
    L.Trainer(max_steps=10).fit(task, datamodule=dm)
"""

from rsfusion.training.task import SegmentationTask, model_spec

__all__ = ["SegmentationTask", "model_spec"]
