"""Step checkpoints and ``last.ckpt`` (config ``callbacks.model_checkpoint``): Lightning's ``ModelCheckpoint``, plus a
``last.ckpt`` of the final step.

Lightning 2.6 writes ``last.ckpt`` only on the ``every_n_train_steps`` schedule: a run whose ``trainer.max_steps`` is
not a multiple of it (``max_steps=2500`` with checkpoints every 1000 steps) ends with ``last.ckpt`` at step 2000, and
``edgetam-export last.ckpt`` silently drops the last 500 steps (its ``on_train_end`` skips the save once any
``last.ckpt`` was written). This subclass writes ``last.ckpt`` at the end of training whenever the final step was not
saved; everything else is the Lightning callback unchanged.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` (same arguments) whose ``last.ckpt`` holds the final step."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)
