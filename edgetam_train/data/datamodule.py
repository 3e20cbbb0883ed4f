"""Lightning DataModules: stage 1 (``SA1BDataModule``, SA-1B images) and stage 2 (``VideoDataModule``, the clip
mixture of SA-V, SA-1B and optionally DAVIS / MOSE / YouTube-VOS).

Samplers carry the epoch to the dataset (:mod:`edgetam_train.data.samplers`); DataLoader workers are set up by
:mod:`edgetam_train.data.workers`. Under DDP the train samplers are ``DistributedSampler`` subclasses; Lightning
sees a DistributedSampler and keeps it.
Both DataModules save the training data position in checkpoints and resume mid-epoch at the next batch
(:mod:`edgetam_train.data.resume`).

Validation (both modules, config ``data.val``): a DAVIS-format VOS set scored by J&F and SA-1B-format images scored by
1-click mIoU, one video / image per batch, each rank a disjoint shard (:mod:`edgetam_train.data.datasets.val`).
"""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import hydra
import lightning as L
from torch.utils.data import DataLoader

from edgetam_train.data.datasets.clips import ClipDataset, collate_clips
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.datasets.val import build_val_sets, plain_config, val_loaders
from edgetam_train.data.formats.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MIN_IMAGE_SIDE,
    set_image_limits,
)
from edgetam_train.data.formats.sa1b import load_index, read_split_file
from edgetam_train.data.mixture import MixtureBatchSampler, MixtureDataset
from edgetam_train.data.resume import ResumableDataModule
from edgetam_train.data.samplers import EpochDistributedSampler, EpochShuffleSampler
from edgetam_train.data.teacher_cache import TeacherCache
from edgetam_train.data.workers import fork_safe_opencv, init_worker
from edgetam_train.distributed import world_and_rank


def split_files(files: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) by a stable hash of each path: an image stays in its split when the root grows."""
    if val_fraction <= 0:
        return files, []
    cut = int(round(val_fraction * 10_000))
    val = [f for f in files if zlib.crc32(f.encode()) % 10_000 < cut]
    val_set = set(val)
    return [f for f in files if f not in val_set], val


def subsequence_rows(files: list[str], subset: list[str]) -> list[int]:
    """Positions in ``files`` of ``subset``, an in-order subsequence of it (the train part of ``split_files``)."""
    rows, j = [], 0
    for i, f in enumerate(files):
        if j < len(subset) and f == subset[j]:
            rows.append(i)
            j += 1
    if j != len(subset):
        raise ValueError(f"{subset[j]} is not in the image list in order")
    return rows


class DataModuleBase(ResumableDataModule, L.LightningDataModule):
    """What both stages' DataModules share: the world they run in, resume (``ResumableDataModule``) and the
    ``data.val`` validation loaders (subclasses set ``self.val_sets`` in ``setup`` and keep ``val`` in hparams)."""

    val_sets: list

    def _image_limits(self) -> None:
        """Apply ``data.max_image_pixels`` / ``data.min_image_side`` in this process (workers: ``_worker_init``)."""
        set_image_limits(self.hparams.max_image_pixels, self.hparams.min_image_side)

    def _worker_init(self, workers: int = 0):
        """``worker_init_fn`` of the DataLoaders: :func:`init_worker` with this module's image size limits.
        ``workers`` > 0: the loader forks worker processes, so this process is made fork-safe first
        (:func:`fork_safe_opencv`)."""
        if workers > 0:
            fork_safe_opencv()
        return partial(init_worker, max_image_pixels=self.hparams.max_image_pixels,
                       min_image_side=self.hparams.min_image_side)

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) from the trainer, else from torch.distributed, else (1, 0)."""
        return world_and_rank(self.trainer)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation set (VOS, then mIoU); an empty list (no validation) when there is none."""
        self.setup("validate")
        workers = int((self.hparams.val or {}).get("num_workers", 0))
        return val_loaders(self.val_sets, *self._world(), num_workers=workers,
                           worker_init_fn=self._worker_init(workers))


class SA1BDataModule(DataModuleBase):
    """SA-1B training DataLoader (batches from ``collate_sa1b``) and the ``data.val`` validation loaders.

    Args:
        root: SA-1B directory tree (config ``data.root``).
        image_size, max_masks, hflip_p, max_skip_rate: see ``SA1BDataset``.
        batch_size: images per batch on each device.
        num_workers: DataLoader worker processes (``persistent_workers`` when > 0).
        pin_memory: pin batches for faster host-to-GPU copies.
        val_fraction: fraction of images held out from training (hash split); they are the 1-click mIoU
            validation images unless ``val.miou.root`` is set.
        val: validation sets (config ``data.val``; see :func:`edgetam_train.data.datasets.val.build_val_sets`).
        index_cache, split_file: see ``SA1BDataset``.
        seed: base seed of sampling, flips and shuffling.
        prefetch_factor: batches prefetched per worker.
        drop_last: drop the last incomplete training batch.
        max_image_pixels: images whose header declares more pixels are skipped (``too_large``), never decoded.
        min_image_side: images with a shorter side are skipped (``too_small``).
        teacher_cache: directory written by ``edgetam-cache-teacher`` (config ``data.teacher_cache``): training
            items carry the cached teacher F16 of their view (``teacher_f16``), so stage 1 runs no teacher. Refused
            (``TeacherCacheMismatch``) when made for another image size, transform or image list (``split_file`` /
            the index of ``root``, before the ``val_fraction`` split), or without the flipped view when
            ``hflip_p`` > 0. The teacher is checked by ``edgetam_train.run.train`` against ``model.teacher``.
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
        val: Mapping[str, Any] | None = None,
        teacher_cache: str | Path | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_image_side: int = DEFAULT_MIN_IMAGE_SIDE,
    ) -> None:
        super().__init__()
        val = plain_config(val)  # saved in checkpoints: no DictConfig
        self.save_hyperparameters(logger=False)
        self._image_limits()
        self.train_set: SA1BDataset | None = None
        self.val_files: list[str] = []  # the val_fraction hold-out (relative jpg paths)
        self.val_sets: list = []

    def prepare_data(self) -> None:
        """Build the file-index cache once (Lightning calls this on one process per node, before ``setup``)."""
        SA1BDataset.prepare(self.hparams.root, self.hparams.index_cache, self.hparams.split_file)

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets (reads the cached index)."""
        if self.train_set is not None:
            return
        hp = self.hparams
        files = read_split_file(hp.split_file) if hp.split_file is not None else load_index(hp.root, hp.index_cache)
        train_files, val_files = split_files(files, hp.val_fraction)
        common = dict(image_size=hp.image_size, max_masks=hp.max_masks, seed=hp.seed, max_skip_rate=hp.max_skip_rate)
        cached: dict[str, Any] = {}
        if hp.teacher_cache:
            cache = TeacherCache(hp.teacher_cache)
            cache.check_data(hp.image_size, files, hp.hflip_p)
            rows = subsequence_rows(files, train_files) if len(train_files) < len(files) else None
            cached = dict(teacher_cache=cache, cache_rows=rows)
        self.train_set = SA1BDataset(hp.root, hflip_p=hp.hflip_p, files=train_files, **common, **cached)
        self.val_files = val_files
        self.val_sets = build_val_sets(hp.val, holdout=(hp.root, val_files))

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch by hand (normally the sampler does it; see the module docstring)."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def _loader(self, dataset: SA1BDataset) -> DataLoader:
        """Training DataLoader with an epoch-forwarding shuffling sampler (distributed when world size > 1)."""
        hp = self.hparams
        world, rank = self._world()
        if world > 1:
            sampler = EpochDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed,
                                              drop_last=True)
        else:
            sampler = EpochShuffleSampler(dataset, shuffle=True, seed=hp.seed)
        self.resume_sampler(sampler, hp.batch_size)  # mid-epoch resume: skip the batches already trained on
        workers = hp.num_workers
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_sa1b,
            worker_init_fn=self._worker_init(workers),
            pin_memory=hp.pin_memory,
            drop_last=hp.drop_last,
            persistent_workers=workers > 0,
            prefetch_factor=hp.prefetch_factor if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        self.setup("fit")
        return self._loader(self.train_set)


# --------------------------------------------------------------------------------------------------------------------
# Stage 2: the clip mixture
# --------------------------------------------------------------------------------------------------------------------

class VideoDataModule(DataModuleBase):
    """Stage-2 training clips from a weighted mixture of datasets; batches come from ``collate_clips``.

    Every step draws one dataset (the same on every rank, see ``mixture``), so a batch holds only 8-frame video clips
    or only 1-frame SA-1B clips; under DDP each rank gets different samples of that dataset.

    Args:
        datasets: {name: {"_target_": dataset class, "root": path or None, "weight": float, **dataset arguments}}
            (config ``data.datasets``). Entries whose root is None or whose weight is 0 are left out. The class is
            any dataset of clip items: a :class:`ClipDataset` subclass (``SAVDataset``, ``VOSDataset``; it also gets
            ``clip_len`` and ``reverse_p``) or ``SA1BClipDataset`` (1-frame clips). The remaining keys go to the
            class (e.g. ``frames_root``, ``source``, ``annotations`` for SA-V; ``image_dir``, ``mask_dir``,
            ``split_file`` for VOS; ``index_cache``, ``split_file`` for SA-1B), and may override ``max_objects``.
            A new dataset is a class plus one entry here; nothing is registered.
        image_size: output side S.
        clip_len: frames per video clip (SA-1B clips have 1).
        max_objects: objects per clip (paper: 3).
        batch_size: clips per device per step.
        num_workers, pin_memory, prefetch_factor: DataLoader settings (``persistent_workers`` when workers > 0).
        augment: ``ClipAugment`` arguments (config ``data.augment``); None disables augmentation.
        reverse_p: probability of playing a video clip backwards.
        max_skip_rate: the ``SkipCounter`` threshold, per dataset.
        seed: base seed of the mixture choices, orders, sampling and augmentation.
        steps_per_epoch: mixture steps per epoch (default: total samples // (batch_size x world size)).
        val: validation sets (config ``data.val``; see :func:`edgetam_train.data.datasets.val.build_val_sets`).
        max_image_pixels, min_image_side: image size limits, see ``SA1BDataModule``.
    """

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, Any] | None],
        image_size: int = 1024,
        clip_len: int = 8,
        max_objects: int = 3,
        batch_size: int = 1,
        num_workers: int = 8,
        pin_memory: bool = True,
        augment: Mapping[str, Any] | None = None,
        reverse_p: float = 0.0,
        max_skip_rate: float = 0.05,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        prefetch_factor: int = 2,
        val: Mapping[str, Any] | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_image_side: int = DEFAULT_MIN_IMAGE_SIDE,
    ) -> None:
        super().__init__()
        # saved in checkpoints: no DictConfig / ListConfig (resume loads them with weights_only=True)
        datasets, augment, val = plain_config(datasets), plain_config(augment), plain_config(val)
        self.save_hyperparameters(logger=False)
        self._image_limits()
        self.entries = self._active_entries(datasets)
        self.train_set: MixtureDataset | None = None
        self.val_sets: list = []

    @staticmethod
    def _active_entries(datasets: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """{name: entry} of the entries that have a root and a positive weight; checks that each names an importable
        dataset class (``_target_``)."""
        active = {}
        for name, entry in (datasets or {}).items():
            entry = dict(entry or {})
            weight = entry["share"] if entry.get("share") is not None else entry.get("weight", 1.0)
            if entry.get("root") is None or float(weight) <= 0:
                continue
            target = entry.get("_target_")
            if not target:
                raise ValueError(f"data.datasets.{name} has no _target_: name its dataset class, e.g. "
                                 f"edgetam_train.data.datasets.vos.VOSDataset for a DAVIS-layout folder")
            try:
                hydra.utils.get_class(target)
            except Exception as e:  # noqa: BLE001 - reported with the config key
                raise ValueError(f"data.datasets.{name}._target_={target} cannot be imported: {e}") from e
            active[name] = entry
        if not active:
            raise ValueError("data.datasets has no dataset with a root and a positive weight; set e.g. "
                             "data.datasets.sav.root")
        return active

    @staticmethod
    def _arguments(entry: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
        """(dataset class, its own arguments) of a ``data.datasets`` entry."""
        kwargs = {k: v for k, v in entry.items() if k not in ("_target_", "weight", "share", "root")}
        return hydra.utils.get_class(entry["_target_"]), kwargs

    def prepare_data(self) -> None:
        """Per dataset, what must happen once per node before ``setup`` (the SA-1B file-index cache)."""
        for entry in self.entries.values():
            cls, kwargs = self._arguments(entry)
            if hasattr(cls, "prepare"):
                cls.prepare(entry["root"], **kwargs)

    def build_dataset(self, name: str, entry: Mapping[str, Any]):
        """The dataset of one ``data.datasets`` entry: the shared arguments (image size, ``max_objects``,
        ``augment``, seed, ...) with the entry's own keys taking precedence (``data.datasets.sa1b.max_objects`` /
        ``.augment``: SA-1B's values inside stage 2)."""
        hp = self.hparams
        cls, kwargs = self._arguments(entry)
        common = dict(image_size=hp.image_size, max_objects=hp.max_objects,
                      augment=None if hp.augment is None else dict(hp.augment),
                      seed=hp.seed, max_skip_rate=hp.max_skip_rate, name=name)
        if issubclass(cls, ClipDataset):
            common.update(clip_len=hp.clip_len, reverse_p=hp.reverse_p)
        return cls(entry["root"], **{**common, **kwargs})

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets and the mixture."""
        if self.train_set is None:
            self.train_set = MixtureDataset({name: self.build_dataset(name, e) for name, e in self.entries.items()})
            self.val_sets = build_val_sets(self.hparams.val)

    @property
    def weights(self) -> dict[str, float]:
        """{name: mixture weight} of the active datasets.

        An entry with ``share`` (e.g. SA-1B's 0.1) gets that fraction of the steps whatever else is enabled; the
        entries without one split the rest in proportion to their ``weight``.
        """
        shares = {n: float(e["share"]) for n, e in self.entries.items() if e.get("share") is not None}
        rest = {n: float(e.get("weight", 1.0)) for n, e in self.entries.items() if n not in shares}
        if sum(shares.values()) >= 1.0 and rest:
            raise ValueError(f"data.datasets shares {shares} leave nothing for {sorted(rest)}: shares must sum to < 1")
        if not rest:
            return shares
        left, total = 1.0 - sum(shares.values()), sum(rest.values())
        return {**{n: w * left / total for n, w in rest.items()}, **shares}

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch by hand (normally the sampler does it)."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        """Mixture batches: the sampler yields one rank's batch of indices per step (``batch_size=None``)."""
        self.setup("fit")
        hp = self.hparams
        world, rank = self._world()
        sampler = MixtureBatchSampler(self.train_set, self.weights, hp.batch_size, num_replicas=world, rank=rank,
                                      seed=hp.seed, steps_per_epoch=hp.steps_per_epoch)
        self.resume_sampler(sampler, 1)  # mid-epoch resume: skip the steps already trained on
        workers = hp.num_workers
        return DataLoader(
            self.train_set,
            batch_size=None,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_clips,
            worker_init_fn=self._worker_init(workers),
            pin_memory=hp.pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=hp.prefetch_factor if workers > 0 else None,
        )
