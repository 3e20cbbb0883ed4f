"""The self-distillation identity check of ``debug=identity``: every logged feature loss must be ~0.

With the teacher being the student itself (``model/teacher=student_copy``: same architecture, the student's weights
copied before every batch, dropout off and BatchNorm frozen in both), the teacher's F16 and its replay's F_M must equal
the student's. ``IdentityCheck`` collects ``train/loss_f16`` and ``train/loss_fm`` after every training batch, prints
them when training ends and fails the run when one exceeds ``tolerance`` (or none was logged). A value above float
rounding means the teacher's replay computes something other than the student's step (another input geometry, other
memory or pointer rules, another mask choice, dropout, BatchNorm statistics ...).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class IdentityCheck(Callback):
    """Collects ``keys`` every training batch; at the end prints them and raises if any exceeds ``tolerance``.

    Args:
        keys: logged metrics that must be ~0 (the feature losses).
        tolerance: largest value accepted.
    """

    def __init__(self, keys: tuple[str, ...] | list[str] = ("train/loss_f16", "train/loss_fm"),
                 tolerance: float = 1e-6) -> None:
        self.keys, self.tolerance = tuple(keys), float(tolerance)
        self.values: list[tuple[int, str, float]] = []  # (step, key, value)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for key in self.keys:
            if key in trainer.callback_metrics:
                self.values.append((trainer.global_step, key, float(trainer.callback_metrics[key])))

    def report(self) -> str:
        """One line per collected value, then the verdict."""
        lines = [f"  step {step:>3}  {key:<16} {value:.3e}" for step, key, value in self.values]
        worst = max((v for _, _, v in self.values), default=float("nan"))
        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join([f"identity check ({len(self.values)} values, tolerance {self.tolerance:g}):", *lines,
                          f"  max {worst:.3e}: {verdict}"])

    @property
    def passed(self) -> bool:
        return bool(self.values) and all(v <= self.tolerance for _, _, v in self.values)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        text = self.report()
        print(text, flush=True)
        if not self.passed:
            raise RuntimeError(f"self-distillation identity check failed: a feature loss is above {self.tolerance:g} "
                               f"or none was logged (keys {list(self.keys)}); the teacher's replay differs from the "
                               f"student's step.\n{text}")
