"""Weight EMA of the trained model: Lightning's ``EMAWeightAveraging`` with three choices made for this module.

Lightning's callback keeps an ``AveragedModel`` (a deep copy of the LightningModule), updates it after every
optimizer step, swaps it in for validation (so ``val/*`` scores the EMA weights and the best checkpoint keeps them),
puts the averaged weights into every checkpoint's ``state_dict`` (the live ones under ``current_model_state``, so
resume continues both) and copies them into the model when training ends, so exports are the EMA weights. Here:

* the average is a lerp (``torch.optim.swa_utils.get_ema_multi_avg_fn``): a tensor that does not change
  (``model.freeze``) stays bit-identical; Lightning's default ``decay * ema + (1 - decay) * w`` can move it by an ulp;
* buffers are not averaged (``use_buffers=False``): they are copied from the live model at every update, so
  BatchNorm statistics are the live model's and integer buffers (``num_batches_tracked``) are never rounded;
* the copy is made without the teacher: ``DistillationModule`` keeps its teacher outside the module tree, so a deep
  copy would duplicate it (a SAM 2.1 model) for nothing; it is set aside while the copy is made.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging(decay, update_every_n_steps, update_starting_at_step, ...)`` (module docstring)."""

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 device: Any = None) -> None:
        super().__init__(device=device, use_buffers=False, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step)
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        self.decay = decay

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        missing = object()
        teacher = pl_module.__dict__.pop("teacher", missing)  # not copied into the average (module docstring)
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            if teacher is not missing:
                object.__setattr__(pl_module, "teacher", teacher)
