"""Validate the final weights: when training reaches ``trainer.max_steps`` on a step that is not a validation step,
ask Lightning to validate there, so the run ends with a score of what it exports and the best checkpoint
(``callbacks.best_checkpoint``) and early stopping also consider the last weights.

It sets ``trainer.should_stop`` on the last training batch: Lightning's training loop then runs the validation loop
before it stops (the path it takes for early stopping). Nothing happens without validation sets, or when the last
step is a validation step anyway (``trainer.val_check_interval`` divides ``max_steps``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class FinalValidation(Callback):
    """Validation after the last training step (module docstring)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps:
            return
        if not trainer.num_val_batches or not any(trainer.num_val_batches):
            return
        interval = trainer.val_check_batch
        done = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        if isinstance(interval, int) and interval > 0 and done % interval == 0:
            return  # the loop validates on this step anyway
        trainer.should_stop = True
