"""``last.ckpt`` that is always there and always resumable, written atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from rsfusion.errors import NonFiniteError

log = logging.getLogger(__name__)


class LastCheckpoint(Callback):
    """Write ``last.ckpt`` at every epoch end, and at the end of fit if it stopped mid-epoch.

    Lightning's own ``save_last`` writes at the end of fit, after the epoch counter moved on, so
    a run resumed from it skips an epoch; saved at ``on_train_epoch_end`` it resumes exactly.
    A run stopped by ``max_steps`` mid-epoch (no validation yet) still gets its ``last.ckpt``.
    An exception (e.g. Ctrl-C) writes ``interrupted.ckpt``: a finished epoch is never lost.
    Every file is written under a temporary name and renamed when complete.

    Weights holding NaN or inf are never written: the task's ``on_save_checkpoint`` refuses them
    (:class:`~rsfusion.errors.NonFiniteError`, which stops training), so ``last.ckpt`` stays the
    last finite state, and a run stopped by a non-finite loss or weights writes no
    ``interrupted.ckpt``.
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
        if trainer.is_global_zero and tmp.is_symlink():
            tmp.unlink()  # a link planted there is never followed out of the run folder
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # full state: resumable
        except BaseException:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)  # never a half-written file
            raise
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
        if isinstance(exception, NonFiniteError):
            return  # the weights may hold NaN/inf: last.ckpt stays the last finite state
        if trainer.global_step > 0 and self.saved_step != trainer.global_step:
            try:
                self._save(trainer, "interrupted.ckpt")
            except NonFiniteError as err:  # the run failed otherwise, with broken weights
                log.warning("interrupted.ckpt not written: %s", err)
