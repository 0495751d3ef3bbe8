"""``last.ckpt`` that is always there and always resumable, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from lightning import Callback, LightningModule, Trainer


class LastCheckpoint(Callback):
    """Write ``last.ckpt`` at every epoch end, and at the end of fit if it stopped mid-epoch.

    Lightning's own ``save_last`` writes at the end of fit, after the epoch counter moved on, so
    a run resumed from it skips an epoch; saved at ``on_train_epoch_end`` it resumes exactly.
    A run stopped by ``max_steps`` mid-epoch (no validation yet) still gets its ``last.ckpt``.
    An exception (e.g. Ctrl-C) writes ``interrupted.ckpt``: a finished epoch is never lost.
    Every file is written under a temporary name and renamed when complete.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: Trainer, name: str) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / f".{name}.partial"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.dirpath / name)
        self.saved_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, "last.ckpt")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.saved_step != trainer.global_step:
            self._save(trainer, "last.ckpt")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if trainer.global_step > 0 and self.saved_step != trainer.global_step:
            self._save(trainer, "interrupted.ckpt")
