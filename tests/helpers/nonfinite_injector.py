"""Test-only Lightning callback that makes the loss NaN at chosen steps, for the non-finite guard tests.

In-process: ``NonFiniteInjector(steps=[1])``; through ``train.py``:
``+callbacks.nan._target_=tests.helpers.nonfinite_injector.
NonFiniteInjector '+callbacks.nan.steps=[2]' '+callbacks.nan.ranks=[0]' +callbacks.nan.out_dir=DIR``.

It wraps ``pl_module.clip_step`` so that at the given global steps (on the given ranks; all when None) every loss term
is multiplied by NaN (the graph stays connected, so a backward through it would poison the gradients). After every
training batch it records ``{"step", "rank", "params"}`` (a SHA-1 of all trainable parameters' bytes) and, with
``out_dir``, writes ``rank<R>.json`` at the end of training (also when training stops with an error).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


def params_digest(module: torch.nn.Module) -> str:
    """SHA-1 of the bytes of every trainable parameter, in order."""
    h = hashlib.sha1()
    for p in module.parameters():
        if p.requires_grad:
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class NonFiniteInjector(pl.Callback):
    def __init__(self, steps: list[int], ranks: list[int] | None = None, out_dir: str | None = None) -> None:
        self.steps, self.ranks = set(int(s) for s in steps), None if ranks is None else set(int(r) for r in ranks)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.records: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        real = pl_module.clip_step

        def clip_step(batch):
            out = real(batch)
            if trainer.global_step in self.steps and (self.ranks is None or trainer.global_rank in self.ranks):
                out.losses = {k: v * float("nan") for k, v in out.losses.items()}
            return out

        pl_module.clip_step = clip_step
        self.records.append({"step": -1, "rank": trainer.global_rank, "params": params_digest(pl_module)})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step has advanced: this is the state after step global_step - 1
        self.records.append({"step": trainer.global_step - 1, "rank": trainer.global_rank,
                             "params": params_digest(pl_module)})

    def _write(self, trainer: pl.Trainer) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._write(trainer)
