"""Loss lines in the run's log file: ``step 20/40  loss 14.802  loss_task 12.1  ...  lr 3.9e-04  2.95 s/step``.

Every ``every_n_steps`` optimiser steps (``trainer.log_every_n_steps`` in ``configs/callbacks/train_log.yaml``) and at
the last step, global rank 0 writes one line with the loss terms (``train/loss*``) of that step, the learning rate of
the first parameter group and the mean time per step since the previous line.

Where the line goes: the logger ``callbacks.train_log`` writes only to ``<run dir>/train.log`` (its handlers are set in
``configs/hydra/default.yaml``), because the console already shows the loss on the progress bar. Without a progress
bar (``trainer.enable_progress_bar=false``: batch jobs) the line goes through ``callbacks.train_log_console``, which
propagates to the root logger: console and ``train.log``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

FILE_LOG = logging.getLogger("edgetam_train.callbacks.train_log")
CONSOLE_LOG = logging.getLogger("edgetam_train.callbacks.train_log_console")


def format_line(step: int, max_steps: int, metrics: dict[str, float], lr: float | None,
                seconds_per_step: float | None) -> str:
    """``step S/M  loss X  <the other terms>  lr L  T s/step`` (loss first, the others by name)."""
    total = f"/{max_steps}" if max_steps and max_steps > 0 else ""
    terms = sorted(metrics.items(), key=lambda kv: (kv[0] != "loss", kv[0]))
    parts = [f"step {step}{total}"] + [f"{k} {v:.4g}" for k, v in terms]
    if lr is not None:
        parts.append(f"lr {lr:.2e}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    return "  ".join(parts)


class TrainLog(Callback):
    """Writes a loss line every ``every_n_steps`` steps and at the last step (see module docstring).

    Args:
        every_n_steps: steps between lines (>= 1).
        keys: metrics whose name starts with it are written (the loss and its terms), without ``strip``.
        strip: prefix dropped from the names in the line.
    """

    def __init__(self, every_n_steps: int = 50, keys: str = "train/loss", strip: str = "train/") -> None:
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"callbacks.train_log.every_n_steps={every_n_steps}: expected an integer >= 1")
        self.every_n_steps = int(every_n_steps)
        self.keys = keys
        self.strip = strip
        self._last: tuple[int, float] | None = None  # (step, time) of the previous line

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        last_step = trainer.max_steps is not None and step == trainer.max_steps
        if not trainer.is_global_zero or (step % self.every_n_steps and not last_step):
            return
        if self._last is not None and self._last[0] == step:
            return
        metrics = {k.removeprefix(self.strip): float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(self.keys) and getattr(v, "numel", lambda: 1)() == 1}
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        now = time.perf_counter()
        per_step = None
        if self._last is not None and step > self._last[0]:
            per_step = (now - self._last[1]) / (step - self._last[0])
        self._last = (step, now)
        line = format_line(step, trainer.max_steps, metrics, lr, per_step)
        (FILE_LOG if trainer.progress_bar_callback is not None else CONSOLE_LOG).info(line)
