"""``Trainer``: Lightning's Trainer plus the fault-tolerance setting our LightningModule reads from it.

Config ``trainer/default.yaml`` targets this class, so ``trainer.max_consecutive_nonfinite`` sits with the other
trainer settings and every ``instantiate(cfg.trainer)`` keeps working (Lightning's Trainer refuses unknown keys).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from edgetam_train.distill.nonfinite import DEFAULT_MAX_CONSECUTIVE_NONFINITE


class Trainer(pl.Trainer):
    """``lightning.pytorch.Trainer`` with one more argument.

    Args:
        max_consecutive_nonfinite: a training step whose loss (or any loss term) is NaN/inf on any rank is skipped
            (no optimizer update) and counted (``train/nonfinite_steps``); this many skipped steps in a row stop the
            run with an error naming the step and the loss terms. None: skip forever, never stop.
        *args, **kwargs: ``lightning.pytorch.Trainer`` arguments.
    """

    def __init__(self, *args: Any, max_consecutive_nonfinite: int | None = DEFAULT_MAX_CONSECUTIVE_NONFINITE,
                 **kwargs: Any) -> None:
        if max_consecutive_nonfinite is not None and int(max_consecutive_nonfinite) < 1:
            raise ValueError(f"trainer.max_consecutive_nonfinite={max_consecutive_nonfinite}: expected an integer "
                             f">= 1 (or null to never stop on non-finite losses)")
        super().__init__(*args, **kwargs)
        self.max_consecutive_nonfinite = None if max_consecutive_nonfinite is None else int(max_consecutive_nonfinite)
