"""Test-only Lightning callback, injected with
``+callbacks.samples._target_=tests.helpers.ddp_sample_recorder.SampleRecorder +callbacks.samples.out_dir=DIR``: every
rank writes ``DIR/rank<R>.json``, the list of what it trained on, one entry
per step: {"step", "rank", "world", "dataset", "samples"}; samples are "<dataset>/<video id>" for clip batches
(stage 2) and the image paths for SA-1B batches (stage 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class SampleRecorder(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.records: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        dataset = str(batch.get("dataset", ""))
        samples = [f"{dataset}/{v}" for v in batch["videos"]] if "videos" in batch else list(batch["paths"])
        self.records.append({"step": trainer.global_step, "rank": trainer.global_rank, "world": trainer.world_size,
                             "dataset": dataset, "samples": samples})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))
