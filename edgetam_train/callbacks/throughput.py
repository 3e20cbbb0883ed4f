"""Training throughput and the data-wait / compute split, averaged over a sliding window of steps.

Per training batch:

- **compute** = ``on_train_batch_start`` → ``on_train_batch_end`` (forward, backward, optimiser step; on CUDA the
  device is synchronised at the end so queued kernels are counted);
- **data wait** = previous ``on_train_batch_end`` → this ``on_train_batch_start`` (the loader's ``next()`` plus the
  host→device copy, and anything else run between batches, e.g. checkpoint writing by ``ModelCheckpoint``, which
  Lightning runs after this callback's batch-end hook). Validation runs and epoch boundaries are not counted.

Logged through ``pl_module.log`` (so every logger and the progress bar see them), with prefix ``perf/``:
``samples_per_s``, ``images_per_s`` (frames: ``B·T`` for a (B, T, 3, H, W) clip batch), ``data_wait_s``,
``compute_s``, ``data_wait_frac``. The rates are per device × world size (an estimate of the global rate that
assumes ranks run at the same speed, as they do under DDP's lock-step).

Why not Lightning's ``ThroughputMonitor``: it measures whole batch-to-batch intervals only (no data-wait split),
needs a ``batch_size_fn`` callable in the config, and writes to ``trainer.logger`` directly rather than through
``self.log``; its extra (FLOPs / MFU) needs a FLOP count we do not have. It can still be added alongside.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def batch_sizes(batch: Any) -> tuple[int, int]:
    """(samples, images) in a batch.

    Reads ``batch["batch_size"]`` if present, else ``batch["images"]`` (B, 3, H, W) → (B, B) or (B, T, 3, H, W) →
    (B, B·T); a bare tensor or the first element of a list/tuple is read the same way. Unknown layouts give (0, 0).
    """
    if isinstance(batch, Mapping):
        if "batch_size" in batch:
            n = int(batch["batch_size"])
            images = batch.get("images")
            frames = int(images.shape[:-3].numel()) if isinstance(images, torch.Tensor) and images.dim() >= 4 else n
            return n, frames
        batch = batch.get("images")
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0:
        batch = batch[0]
    if isinstance(batch, torch.Tensor) and batch.dim() >= 1:
        frames = int(batch.shape[:-3].numel()) if batch.dim() >= 4 else int(batch.shape[0])
        return int(batch.shape[0]), frames
    return 0, 0


class Throughput(Callback):
    """Logs samples/s, images/s, data-wait and compute time per step, averaged over the last ``window`` steps.

    Args:
        window: number of recent training batches averaged.
        sync_cuda: synchronise the CUDA device at batch end so compute time includes queued kernels.
        prefix: metric-name prefix.
        prog_bar: also show ``samples_per_s`` and ``data_wait_frac`` on the progress bar.
    """

    def __init__(self, window: int = 50, sync_cuda: bool = True, prefix: str = "perf/", prog_bar: bool = False) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.sync_cuda = sync_cuda
        self.prefix = prefix
        self.prog_bar = prog_bar
        self._wait: deque[float] = deque(maxlen=window)
        self._compute: deque[float] = deque(maxlen=window)
        self._samples: deque[int] = deque(maxlen=window)
        self._images: deque[int] = deque(maxlen=window)
        self._last_end: float | None = None
        self._start: float | None = None

    def _now(self, pl_module: pl.LightningModule) -> float:
        if self.sync_cuda and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _reset_gap(self) -> None:
        """Forget the last batch end, so the next gap (after validation, a new epoch...) is not counted as data wait."""
        self._last_end = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_gap()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_gap()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()  # the previous batch end already synchronised the device
        if self._last_end is not None:
            self._wait.append(now - self._last_end)
        self._start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self._now(pl_module)
        if self._start is None:
            return
        self._compute.append(now - self._start)
        samples, images = batch_sizes(batch)
        self._samples.append(samples)
        self._images.append(images)
        self._last_end = time.perf_counter()
        self._log(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        compute = sum(self._compute) / len(self._compute)
        wait = sum(self._wait) / len(self._wait) if self._wait else 0.0
        step_time = max(compute + wait, 1e-9)
        world = max(int(trainer.world_size), 1)
        n = len(self._compute)
        metrics = {
            "samples_per_s": world * sum(self._samples) / n / step_time,
            "images_per_s": world * sum(self._images) / n / step_time,
            "data_wait_s": wait,
            "compute_s": compute,
            "data_wait_frac": wait / step_time,
        }
        for k, v in metrics.items():
            pl_module.log(self.prefix + k, float(v), on_step=True, on_epoch=False, batch_size=1,
                          prog_bar=self.prog_bar and k in ("samples_per_s", "data_wait_frac"))
