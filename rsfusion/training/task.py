"""The LightningModule that trains any registered model on RGB (+ X) batches."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from rsfusion.catalog import DatasetCard
from rsfusion.config import ExperimentConfig, OptimConfig, config_to_dict
from rsfusion.data.labelspace import UnifiedLabelSpace
from rsfusion.errors import CheckpointMismatchError, NonFiniteError
from rsfusion.models.base import ModelSpec, SampleMeta, SegmentationModel, build_model
from rsfusion.models.checkpoint import META_KEY, frozen_digest, nonfinite_tensors
from rsfusion.models.engine import migrate_state_dict
from rsfusion.training.losses import AuxSupervision, RemapLoss, split_output
from rsfusion.training.masking import MaskingConfig, ModalityMasking
from rsfusion.training.metrics import scores_from_confusion
from rsfusion.training.optim import build_optimizer, lr_lambda
from rsfusion.training.reports import format_class_table, save_confusion_figure, save_scores_json

log = logging.getLogger(__name__)


def model_spec(cfg: ExperimentConfig, card: DatasetCard) -> ModelSpec:
    """The model's build spec from the config and the dataset card (as the model sees it:
    :func:`rsfusion.data.factory.model_card`)."""
    x_channels = len(card.modality(cfg.data.x).bands) if cfg.data.x else 0
    return ModelSpec(
        name=cfg.model.name,
        num_classes=card.num_classes,
        rgb_channels=len(card.modality(cfg.data.rgb).bands),
        x_channels=x_channels,
        arch=cfg.model.arch,
        backbone=cfg.model.backbone,
        weights=cfg.model.weights,
        weights_required=cfg.model.weights_required,
        kwargs=dict(cfg.model.kwargs),
        backbone_mode=cfg.model.backbone_mode,
        drop_path_rate=cfg.model.drop_path_rate,
        dataset=card.name,
        modality=cfg.data.x,
        seed=cfg.seed,
    )


class SegmentationTask(LightningModule):
    """Cross-entropy training with ISPRS-style validation metrics.

    Args:
        model: the model's build spec, as a dict of :class:`ModelSpec` fields.
        optim: the config's optim section, as a dict.
        ignore_index: label id ignored by the loss and the metrics.
        metric_classes: classes averaged in mF1 / mIoU (OA uses all).
        class_names: names in class order, for logs.
        masking: train-time modality masking (``MaskingConfig`` fields), default off.
        aux_loss: ``{"mode": "hard" | "self_teaching", "weight": w}`` for models with aux heads.
        joint: generalist training over several datasets (SegRGB-X): ``{"label_space": the
            unified label space as a dict, "sources": [{"name", "card", "class_names",
            "metric_classes"}, ...]}`` in the validation loaders' order. The model predicts
            unified classes; the loss is eq. 8 (:class:`RemapLoss`); each source is scored in
            its own classes (``val/<name>/mIoU``; ``val/mIoU`` is their mean).
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
        seed: int = 42,
        masking: dict[str, Any] | None = None,
        aux_loss: dict[str, Any] | None = None,
        joint: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints leave out frozen weights (checked on load)
        self.spec = ModelSpec(**model)
        self.model = build_model(self.spec)
        self.optim_cfg = OptimConfig(**optim)
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.drop: str | None = None  # "rgb" or "x": evaluate with that input zeroed
        self.last_scores: dict[str, dict[str, Tensor]] = {}
        self.masking = ModalityMasking(MaskingConfig(**(masking or {})))
        aux = aux_loss or {}
        self.aux_loss = (
            AuxSupervision(aux["mode"], aux.get("weight", 0.01), ignore_index)
            if aux.get("mode", "none") != "none"
            else None
        )
        self.remap_loss: RemapLoss | None = None
        self.groups = [EvalGroup(None, None, list(class_names), list(metric_classes))]
        if joint is not None:
            space = UnifiedLabelSpace.from_dict(joint["label_space"], "checkpoint label space")
            self.remap_loss = RemapLoss(space, ignore_index)
            self.groups = [
                EvalGroup(s["name"], s["card"], list(s["class_names"]), list(s["metric_classes"]))
                for s in joint["sources"]
            ]
        self.confusion = nn.ModuleDict(
            {
                split: nn.ModuleList(
                    MulticlassConfusionMatrix(len(g.class_names), ignore_index=ignore_index)
                    for g in self.groups
                )
                for split in ("val", "test")
            }
        )

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, datamodule: Any) -> SegmentationTask:
        """The task of a config on its datamodule (:func:`rsfusion.data.make_datamodule`),
        with the checkpoint metadata prediction needs (``datamodule.describe()``, the config,
        the model spec). Seed the RNGs first (``lightning.seed_everything(cfg.seed)``) for the
        initialisation train.py gives."""
        card = datamodule.card
        spec = model_spec(cfg, card)
        plain = config_to_dict(cfg)
        meta = {**datamodule.describe(), "config": plain, "model": spec.__dict__}
        return cls(
            model=spec.__dict__,
            optim=plain["optim"],
            ignore_index=card.ignore_index,
            metric_classes=card.metric_classes,
            class_names=card.class_names,
            meta=meta,
            seed=cfg.seed,
            masking=plain["model"]["masking"],
            aux_loss=plain["model"]["aux_loss"],
            joint=joint_facts(datamodule),
        )

    def forward(
        self,
        rgb: Tensor,
        x: Tensor | None = None,
        token_drop: tuple[Tensor, Tensor] | None = None,
        meta: SampleMeta | None = None,
    ) -> Tensor | dict[str, Any]:
        """The model's output; engine models also get MMST token drops and per-sample
        metadata (datasets and X modalities from the batch)."""
        extra: dict[str, Any] = {}
        if token_drop is not None:  # only drawn for models that declare masks_tokens
            extra["token_drop"] = token_drop
        if isinstance(self.model, SegmentationModel) and self.model.takes_meta:
            extra["meta"] = meta
        return self.model(rgb, x, **extra)

    @staticmethod
    def logits(out: Tensor | dict[str, Any]) -> Tensor:
        return out["out"] if isinstance(out, dict) else out

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        rgb, x = batch["image"], batch.get("image_x")
        if self.drop == "x" and x is not None:  # missing-modality evaluation: zeroed after
            x = torch.zeros_like(x)  # normalisation, as the training masks do
        elif self.drop == "rgb":
            rgb = torch.zeros_like(rgb)
        meta = SampleMeta.from_batch(batch)
        logits = self.logits(self(rgb, x, meta=meta))
        return self.loss(logits, batch["mask"], meta), logits

    def loss(self, logits: Tensor, target: Tensor, meta: SampleMeta | None) -> Tensor:
        """Cross-entropy; eq. 8 (unified + remapped to each sample's dataset) when joint."""
        if self.remap_loss is None:
            return self.criterion(logits, target)
        if meta is None:
            raise ValueError("joint training needs each sample's dataset (batch['dataset'])")
        return self.remap_loss(logits, target, meta.dataset)["loss"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n = batch["mask"].shape[0]
        rgb, x = batch["image"], batch.get("image_x")
        meta = SampleMeta.from_batch(batch)
        cfg = self.masking.cfg
        tokens = isinstance(self.model, SegmentationModel) and self.model.masks_tokens
        if cfg.where == "tokens" and tokens:
            # KTB's MMST: the draw is made here, the zeros land on the tokens after embedding
            info = self.masking.draw(n, *rgb.shape[-2:]) if x is not None else None
            drop = None if info is None else (info.rgb, info.x)
            out = self(rgb, x, token_drop=drop, meta=meta)
        else:
            rgb, x, _ = self.masking(rgb, x)
            out = self(rgb, x, meta=meta)
        if self.remap_loss is not None:
            if meta is None:
                raise ValueError("joint training needs each sample's dataset (batch['dataset'])")
            parts = self.remap_loss(self.logits(out), batch["mask"], meta.dataset)
            loss = parts["loss"]
            self.log("train/loss_remap", parts["remap"], batch_size=n)
        elif self.aux_loss is None:
            loss = self.criterion(self.logits(out), batch["mask"])
        else:
            main, aux = split_output(out)
            parts = self.aux_loss(main, aux, batch["mask"])
            loss = parts.pop("loss")
            for name, value in parts.items():
                self.log(f"train/loss_{name}", value, batch_size=n)
        loss = self.finite_loss(loss, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def finite_loss(self, loss: Tensor, target: Tensor) -> Tensor:
        """The training loss, checked: NaN or inf stops training with a :class:`NonFiniteError`
        naming the step (no update is made from it), except on a batch without one labelled
        pixel, whose loss (0/0) is taken as 0. Under DDP the ranks decide together."""
        unlabelled = (target == self.criterion.ignore_index).all()
        ok = bool(torch.isfinite(loss) | unlabelled)  # one device sync per step
        trainer = self._trainer
        if trainer is not None:
            ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
        if not ok:
            raise NonFiniteError(
                f"training stopped at step {self.global_step} (epoch {self.current_epoch}): the "
                f"loss is {float(loss.detach())}. Check the training rasters for NaN/inf values "
                "and the data.x normalisation, or lower optim.lr / set "
                "trainer.gradient_clip_val"
            )
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)  # finite: unchanged

    def _eval_step(self, batch: dict[str, Tensor], split: str, loader: int = 0) -> None:
        loss, logits = self._step(batch)
        group, target = self.groups[loader], batch["mask"]
        if group.card is not None and self.remap_loss is not None:  # scored in its own classes
            space = self.remap_loss.space
            logits, target = (
                space.select_logits(logits, group.card),
                space.remap(target, group.card),
            )
        self.confusion[split][loader].update(logits.argmax(1), target)
        name = f"{split}/loss" if group.name is None else f"{split}/{group.name}/loss"
        self.log(name, loss, batch_size=target.shape[0], sync_dist=True, add_dataloader_idx=False)

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def _eval_epoch_end(self, split: str) -> None:
        means: dict[str, list[Tensor]] = {}
        for i, group in enumerate(self.groups):
            cm = self.confusion[split][i].compute()
            self.confusion[split][i].reset()
            scores = scores_from_confusion(cm, group.metric_classes)
            key = split if group.name is None else f"{split}/{group.name}"
            self.last_scores[key] = scores
            for metric in ("OA", "mIoU", "mF1", "mAcc"):
                means.setdefault(metric, []).append(scores[metric].float())
                if group.name is not None:
                    self.log(f"{key}/{metric}", scores[metric].float(), sync_dist=True)
            for name, iou in zip(group.class_names, scores["IoU"]):
                self.log(f"{key}/IoU_{name}", iou.float(), sync_dist=True)
            self._report(split, group, scores, cm)
        for metric, values in means.items():  # joint: the mean over the datasets
            value = torch.stack(values).mean()
            self.log(f"{split}/{metric}", value, prog_bar=metric == "mIoU", sync_dist=True)

    def _report(self, split: str, group: EvalGroup, scores: dict[str, Tensor], cm: Tensor) -> None:
        """The class table in the log, the scores JSON and the confusion figure (rank 0)."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        names = group.class_names
        table = format_class_table(scores, names, group.metric_classes)
        where = split if group.name is None else f"{split} {group.name}"
        log.info("\n%s epoch %d step %d\n%s", where, self.current_epoch, self.global_step, table)
        folder = Path(self.trainer.default_root_dir) / "reports"
        tag = {None: split, "x": f"{split}_rgb_only", "rgb": f"{split}_x_only"}[self.drop]
        if group.name is not None:
            tag = f"{tag}_{group.name}"
        save_scores_json(scores, names, folder / f"{tag}_scores.json")
        save_confusion_figure(
            cm.cpu(), names, folder / f"{tag}_confusion.png",
            title=f"{where}, epoch {self.current_epoch}, step {self.global_step}",
        )  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim_cfg)
        total = self.optim_cfg.total_steps or int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.optim_cfg, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def setup(self, stage: str) -> None:
        """``model.compile: true``: training runs the model's forward through ``torch.compile``
        (in place: parameters and checkpoint keys are unchanged); evaluate.py and prediction
        build their own model and run it eagerly."""
        model_cfg = ((self.hparams.get("meta") or {}).get("config") or {}).get("model") or {}
        if stage == "fit" and model_cfg.get("compile", False):
            self.model.compile()

    def on_train_epoch_start(self) -> None:
        # Augmentation draws from the global RNGs: reseeding them from (seed, epoch) makes a run
        # resumed at an epoch boundary draw exactly what an uninterrupted run draws.
        reseed(self.hparams.seed * 100_003 + self.current_epoch + 1)

    def frozen_names(self) -> set[str]:
        """State-dict keys of frozen parameters (left out of checkpoints)."""
        return {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = self.frozen_names()
        state = checkpoint["state_dict"]
        bad = nonfinite_tensors(state)
        ok, trainer = not bad, self._trainer
        if trainer is not None:  # the ranks decide together (saving is collective)
            ok = trainer.strategy.reduce_boolean_decision(ok, all=True)
        if not ok:  # never written: the last finite checkpoint stays the last one
            which = (
                f"{len(bad)} of {len(state)} weight tensors (e.g. {bad[0]})"
                if bad
                else ("weight tensors on another rank")
            )
            raise NonFiniteError(
                f"training stopped at step {self.global_step} (epoch {self.current_epoch}): "
                f"{which} hold NaN or inf, so no checkpoint is written. Lower optim.lr or set "
                "trainer.gradient_clip_val, and check the training rasters for NaN/inf values"
            )
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen}
        meta = dict(self.hparams.meta or {})
        meta["frozen_sha256"] = frozen_digest(self.model)
        checkpoint[META_KEY] = meta  # read back by rsfusion.models.checkpoint.read_checkpoint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # parts renamed since the checkpoint was written load under their new names
        migrate_state_dict(self.model, checkpoint["state_dict"], prefix="model.")
        expected = set(self.state_dict()) - self.frozen_names()
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint lacks {len(missing)} trainable tensors of this model (e.g. "
                f"{missing[:3]}): it was written for another model or config"
            )


@dataclass(frozen=True)
class EvalGroup:
    """What one validation loader is scored as: a source of a joint run (its name, card,
    classes) or, for a single dataset, ``name`` and ``card`` None (scores keep their keys)."""

    name: str | None
    card: str | None
    class_names: list[str]
    metric_classes: list[int]


def joint_facts(datamodule: Any) -> dict[str, Any] | None:
    """The task's ``joint`` argument from a joint datamodule's ``describe()`` (None for one
    dataset): the unified label space and, per source, its card, classes and metric classes."""
    from rsfusion.catalog import load_card

    described = datamodule.describe()
    sources = described.get("joint")
    if not sources:
        return None
    out = []
    for name, facts in sources.items():
        card = load_card(facts["card"])
        out.append(
            {
                "name": name,
                "card": card.name,
                "class_names": list(card.class_names),
                "metric_classes": list(card.metric_classes),
            }
        )
    return {"label_space": described["label_space"], "sources": out}


def reseed(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (quietly, unlike lightning.seed_everything)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
