"""Test-only Lightning callback, injected with ``+callbacks.dump._target_=tests.helpers.student_dump.StudentDump
+callbacks.dump.path=FILE``: when training ends, writes the student's whole state_dict (peft's key names on a LoRA
run) to FILE, so that a test can see every tensor the run trained, frozen ones included, which a LoRA run's slim
checkpoints leave out."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch


class StudentDump(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in pl_module.student.state_dict().items()}, self.path)
