"""The training samplers of the DataModules: a permutation per epoch, and ``set_epoch`` forwarded to the dataset.

Lightning calls ``sampler.set_epoch(epoch)`` at the start of every training epoch (before the epoch's DataLoader
iterator is created); these samplers forward it to the dataset's ``set_epoch``, so the masks sampled and the
augmentations change every epoch without any hook in the LightningModule. Both can resume mid-epoch
(:class:`~edgetam_train.data.resume.ResumableSampler`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DistributedSampler, Sampler

from edgetam_train.data.resume import ResumableSampler


class EpochShuffleSampler(ResumableSampler, Sampler[int]):
    """Single-process shuffling sampler: a permutation seeded by (seed, epoch); ``set_epoch`` also reaches the dataset.

    Args:
        dataset: the dataset to index.
        shuffle: permute (True) or go in order (False).
        seed: base seed of the permutation.
        forward_epoch: also call ``dataset.set_epoch`` (off for validation, whose samples must not change).
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0, forward_epoch: bool = True) -> None:
        self.dataset, self.shuffle, self.seed, self.forward_epoch, self.epoch = dataset, shuffle, seed, forward_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation (and, if ``forward_epoch``, the dataset randomness) of ``epoch``."""
        self.epoch = epoch
        if self.forward_epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return self.skip_resumed(iter(range(n)))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return self.skip_resumed(iter(torch.randperm(n, generator=g).tolist()))

    def __len__(self) -> int:
        return len(self.dataset)


class EpochDistributedSampler(ResumableSampler, DistributedSampler):
    """``DistributedSampler`` whose ``set_epoch`` is also forwarded to the dataset (and which can resume mid-epoch)."""

    def __iter__(self) -> Iterator[int]:
        return self.skip_resumed(super().__iter__())

    def set_epoch(self, epoch: int) -> None:
        """Use the shard permutation (and the dataset randomness) of ``epoch``."""
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
