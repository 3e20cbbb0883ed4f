"""Keep the best checkpoint by a validation metric (config ``callbacks.best_checkpoint``: ``val/J&F``, mode max).

A plain ``ModelCheckpoint(monitor="val/J&F")`` raises ``MisconfigurationException`` at the end of a validation run
that did not log its metric, e.g. a stage-1 run validated on images only (``val/mIoU_1click``) because
``data.val.vos.root`` is null. This subclass skips the save instead and logs once why; with a metric it is the
Lightning callback unchanged (without validation it never saves: it only acts at the end of validation runs).
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves at the end of validation runs only, and only when ``monitor`` was logged.

    Takes the ``ModelCheckpoint`` arguments; ``monitor`` is required.
    """

    def __init__(self, monitor: str, **kwargs) -> None:
        kwargs.setdefault("save_on_train_epoch_end", False)
        super().__init__(monitor=monitor, **kwargs)
        self._warned_missing = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.monitor not in trainer.callback_metrics:
            if not self._warned_missing and trainer.is_global_zero:
                log.warning("best checkpoint: validation logged no %r (logged: %s); not saving by it (e.g. no "
                            "data.val.vos set for val/J&F)", self.monitor,
                            sorted(k for k in trainer.callback_metrics if k.startswith("val/")))
            self._warned_missing = True
            return
        super().on_validation_end(trainer, pl_module)
