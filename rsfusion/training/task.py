"""The LightningModule that trains any registered model on RGB (+ X) batches."""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from rsfusion.config import OptimConfig
from rsfusion.models.base import ModelSpec, build_model
from rsfusion.training.metrics import scores_from_confusion
from rsfusion.training.optim import build_optimizer, lr_lambda


class SegmentationTask(LightningModule):
    """Cross-entropy training with ISPRS-style validation metrics.

    Args:
        model: the model's build spec, as a dict of :class:`ModelSpec` fields.
        optim: the config's optim section, as a dict.
        ignore_index: label id ignored by the loss and the metrics.
        metric_classes: classes averaged in mF1 / mIoU (OA uses all).
        class_names: names in class order, for logs.
        meta: what prediction needs (bands, normalisation, classes, palette, window, config);
            stored in every checkpoint under ``"rsfusion"``.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        ignore_index: int,
        metric_classes: list[int],
        class_names: list[str],
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec(**model)
        self.model = build_model(self.spec)
        self.optim_cfg = OptimConfig(**optim)
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
        k = self.spec.num_classes
        self.confusion = nn.ModuleDict(
            {s: MulticlassConfusionMatrix(k, ignore_index=ignore_index) for s in ("val", "test")}
        )

    def forward(self, rgb: Tensor, x: Tensor | None = None) -> Tensor | dict[str, Any]:
        return self.model(rgb, x)

    @staticmethod
    def logits(out: Tensor | dict[str, Any]) -> Tensor:
        return out["out"] if isinstance(out, dict) else out

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self.logits(self(batch["image"], batch.get("image_x")))
        return self.criterion(logits, batch["mask"]), logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["mask"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Tensor], split: str) -> None:
        loss, logits = self._step(batch)
        self.confusion[split].update(logits.argmax(1), batch["mask"])
        self.log(f"{split}/loss", loss, batch_size=batch["mask"].shape[0], sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> None:
        cm = self.confusion[split].compute()
        self.confusion[split].reset()
        scores = scores_from_confusion(cm, self.hparams.metric_classes)
        for key in ("OA", "mIoU", "mF1"):
            self.log(f"{split}/{key}", scores[key].float(), prog_bar=key == "mIoU")
        for name, iou in zip(self.hparams.class_names, scores["IoU"]):
            self.log(f"{split}/IoU_{name}", iou.float())

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.optim_cfg, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rsfusion"] = self.hparams.meta or {}
