"""Lightning DataModule for stage-1 (SA-1B image) distillation.

Samplers carry the epoch to the dataset: Lightning calls ``sampler.set_epoch(epoch)`` at the start of every training
epoch (before the epoch's DataLoader iterator is created), and our samplers forward it to ``SA1BDataset.set_epoch``,
so the masks sampled and the flips change every epoch without any hook in the LightningModule.
Under DDP the train sampler is a ``DistributedSampler`` subclass; Lightning sees a DistributedSampler and keeps it.
Validation samplers do not forward the epoch, so validation always sees the same masks and no flips.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import cv2
import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from edgetam_train.data.sa1b import SA1BDataset, collate_sa1b, load_index, read_split_file


class EpochShuffleSampler(Sampler[int]):
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
            return iter(range(n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(n, generator=g).tolist())

    def __len__(self) -> int:
        return len(self.dataset)


class EpochDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose ``set_epoch`` is also forwarded to the dataset."""

    def set_epoch(self, epoch: int) -> None:
        """Use the shard permutation (and the dataset randomness) of ``epoch``."""
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker (the workers already run in parallel)."""
    cv2.setNumThreads(1)


def split_files(files: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) by a stable hash of each path: an image stays in its split when the root grows."""
    if val_fraction <= 0:
        return files, []
    cut = int(round(val_fraction * 10_000))
    val = [f for f in files if zlib.crc32(f.encode()) % 10_000 < cut]
    val_set = set(val)
    return [f for f in files if f not in val_set], val


class SA1BDataModule(L.LightningDataModule):
    """SA-1B train (and optional val) DataLoaders; batches come from ``collate_sa1b``.

    Args:
        root: SA-1B directory tree (config ``data.root``).
        image_size, max_masks, hflip_p, max_skip_rate: see ``SA1BDataset``.
        batch_size: images per batch on each device.
        num_workers: DataLoader worker processes (``persistent_workers`` when > 0).
        pin_memory: pin batches for faster host-to-GPU copies.
        val_fraction: fraction of images held out for validation (hash split; 0 = no val loader).
        index_cache, split_file: see ``SA1BDataset``.
        seed: base seed of sampling, flips and shuffling.
        prefetch_factor: batches prefetched per worker.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 1024,
        max_masks: int = 64,
        batch_size: int = 4,
        num_workers: int = 8,
        pin_memory: bool = True,
        hflip_p: float = 0.5,
        max_skip_rate: float = 0.05,
        val_fraction: float = 0.0,
        index_cache: str | Path | None = None,
        split_file: str | Path | None = None,
        seed: int = 0,
        prefetch_factor: int = 2,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_set: SA1BDataset | None = None
        self.val_set: SA1BDataset | None = None

    def prepare_data(self) -> None:
        """Build the file-index cache once (Lightning calls this on one process per node, before ``setup``)."""
        if self.hparams.split_file is None:
            load_index(self.hparams.root, self.hparams.index_cache)

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets (reads the cached index)."""
        if self.train_set is not None:
            return
        hp = self.hparams
        files = read_split_file(hp.split_file) if hp.split_file is not None else load_index(hp.root, hp.index_cache)
        train_files, val_files = split_files(files, hp.val_fraction)
        common = dict(image_size=hp.image_size, max_masks=hp.max_masks, seed=hp.seed, max_skip_rate=hp.max_skip_rate)
        self.train_set = SA1BDataset(hp.root, hflip_p=hp.hflip_p, files=train_files, **common)
        if val_files:
            self.val_set = SA1BDataset(hp.root, hflip_p=0.0, files=val_files, **common)

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch by hand (normally the sampler does it; see the module docstring)."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) from the trainer, else from torch.distributed, else (1, 0)."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _loader(self, dataset: SA1BDataset, train: bool) -> DataLoader:
        """DataLoader with an epoch-forwarding sampler (distributed when world size > 1)."""
        hp = self.hparams
        world, rank = self._world()
        if world > 1:  # validation keeps epoch 0 of the dataset: the same masks every time
            cls = EpochDistributedSampler if train else DistributedSampler
            sampler = cls(dataset, num_replicas=world, rank=rank, shuffle=train, seed=hp.seed, drop_last=train)
        else:
            sampler = EpochShuffleSampler(dataset, shuffle=train, seed=hp.seed, forward_epoch=train)
        workers = hp.num_workers
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_sa1b,
            worker_init_fn=init_worker,
            pin_memory=hp.pin_memory,
            drop_last=hp.drop_last and train,
            persistent_workers=workers > 0,
            prefetch_factor=hp.prefetch_factor if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order, without flips (an empty list when ``val_fraction`` is 0)."""
        self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
