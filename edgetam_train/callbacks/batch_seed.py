"""Per-batch seeding: the random numbers of a training step depend only on (seed, rank, epoch, batch index).

The step draws random numbers from the global generators: prompt simulation (``edgetam_train.distill.prompting``: prompt
kinds, clicks, box noise, which frames are corrected) and anything stochastic in the model. Lightning seeds them once
(``seed_everything``) and does not save their state in checkpoints, and between steps other code draws from them
too (each DataLoader iterator takes a base seed from torch's generator, validation ...). So a resumed run, or one
with validation at another interval, would draw different prompts from the same step on.

``BatchSeed`` re-seeds torch (CPU and every CUDA device), NumPy and ``random`` at the start of every training batch
from (seed, global rank, epoch, batch index in the epoch), which Lightning restores exactly on resume. A resumed run
therefore replays the same prompts for the same batches as an uninterrupted one, and ranks draw different numbers.
Cost: one ``manual_seed`` per step.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def seed_batch(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """Seed torch, NumPy and ``random`` from (seed, rank, epoch, batch_idx) (all >= 0); returns the 63-bit torch
    seed."""
    entropy = [int(seed), int(rank), int(epoch), int(batch_idx)]
    if min(entropy) < 0:
        raise ValueError(f"seed_batch: seed, rank, epoch and batch index must be >= 0, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    torch_seed = int(state[0] >> np.uint64(1))
    torch.manual_seed(torch_seed)  # also every CUDA device
    np.random.seed(int(state[1] & np.uint64(0xFFFFFFFF)))
    random.seed(int(state[1]))
    return torch_seed


class BatchSeed(Callback):
    """Calls :func:`seed_batch` at ``on_train_batch_start``.

    Args:
        seed: base seed (config: the run's ``seed``), >= 0.
    """

    def __init__(self, seed: int = 0) -> None:
        if int(seed) < 0:
            raise ValueError(f"BatchSeed: seed must be >= 0, got {seed}")
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_batch(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx)
