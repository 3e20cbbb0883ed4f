"""A training progress bar counted in optimiser steps: ``train  12%|█▏  5/40 [02:30<17:30, 30.0s/it, loss=14.8]``.

Lightning's ``TQDMProgressBar`` counts the batches of each epoch (``Epoch 3: 2/4``) and restarts at every epoch, which
says nothing in step-based training (``trainer.max_steps``, ``max_epochs: -1``). This bar keeps one count for the
whole run: ``trainer.global_step`` of ``trainer.max_steps`` (a resumed run starts at the restored step), updated after
every step (``refresh_rate`` 1), the rate in s/it when steps take longer than a second, the epoch and the
``prog_bar=True`` metrics as its postfix. Validation draws no bar of its own: a second bar written to the same
terminal between training steps interleaved with this one, and every validation run ends with its one result line
("validation at step N: ...", :meth:`DistillationModule.on_validation_epoch_end`).
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, _update_n


class StepProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training bar shows ``global_step / max_steps`` across epochs.

    Args:
        refresh_rate: redraw every this many optimiser steps.
        process_position: as ``TQDMProgressBar`` (several bars in one terminal).
    """

    # {rate_fmt}: "2.5s/it" for slow steps instead of Lightning's "0.40it/s"
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=False)

    def init_validation_tqdm(self) -> Tqdm:
        """A disabled bar: validation is reported by its result line, not by a second bar (see the module doc)."""
        return Tqdm(disable=True)

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The ``prog_bar`` metrics with short names (``train/loss`` -> ``loss``) and the epoch; no ``v_num``."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        shown: dict[str, Any] = {"epoch": trainer.current_epoch}
        for key, value in items.items():
            shown[key.removeprefix("train/")] = value
        return shown

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        # built here, not by init_train_tqdm, so that its first line already reads "train 0/<max_steps>"
        self.train_progress_bar = Tqdm(desc="train", total=total, initial=trainer.global_step,
                                       position=2 * self.process_position, disable=self.is_disabled, leave=True,
                                       dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """One bar for the run: nothing to reset at an epoch boundary."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self._should_update(step, bar.total):
            _update_n(bar, step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
