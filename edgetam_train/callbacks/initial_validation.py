"""Validate the untrained weights: before the first training step of a fresh run, run Lightning's validation loop
once, so the logged validation curve starts at step 0 (the score the run starts from; ``experiment=learning_curve``).

It runs the fit loop's own validation loop from ``on_train_start`` the way the training loop runs it between steps
(``trainer.validating`` while it runs, ``trainer.training`` after), so the metrics reach the loggers at step 0 and
the other callbacks see an ordinary validation. Nothing happens on a resumed run (``global_step > 0``: its curve
already has a start) or without validation sets.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class InitialValidation(Callback):
    """Validation before the first training step (module docstring)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0 or not trainer.val_dataloaders:
            return
        loop = trainer.fit_loop.epoch_loop
        trainer.validating = True
        loop.val_loop.run()
        trainer.training = True
