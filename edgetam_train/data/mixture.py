"""The stage-2 dataset mixture: one dataset per step, drawn with configured weights, the same on every rank.

``MixtureDataset`` concatenates named datasets (global index = offset of the dataset + local index) and also accepts a
list of indices, returning a list of items (a whole batch). ``MixtureBatchSampler`` yields one such list per step:

1. the step's dataset is drawn with probabilities proportional to ``weights`` from a generator seeded by
   (seed, epoch, step), so every rank draws the same dataset at the same step without communicating;
2. within that dataset, all ranks walk one shared shuffled order (a permutation seeded by (seed, epoch, dataset,
   cycle), renewed when used up); each step consumes ``world_size x batch_size`` positions of it and rank r takes
   the r-th slice, so ranks get different samples.

So every batch holds clips of one dataset: single-frame SA-1B clips and 8-frame video clips never share a batch, and
under DDP all ranks run the same clip length at the same step. The sampler is a ``DistributedSampler`` subclass that
yields whole batches (use it with ``DataLoader(batch_size=None)``): Lightning keeps a DistributedSampler as it is and
calls its ``set_epoch``, which is forwarded to the datasets.
"""

from __future__ import annotations

import bisect
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from edgetam_train.data.resume import ResumableSampler
from edgetam_train.data.skips import SkipCounter


class MixtureDataset(Dataset):
    """Named datasets behind one index space.

    Args:
        datasets: {name: dataset}, in a fixed order (the order of the mapping).

    ``dataset[i]`` is item ``i - offset[k]`` of dataset k (with ``item["dataset"] = name``); ``dataset[[i, j, ...]]``
    is the list of those items.
    """

    def __init__(self, datasets: Mapping[str, Dataset]) -> None:
        super().__init__()
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        self.sizes = [len(d) for d in self.datasets]
        if min(self.sizes) == 0:
            raise ValueError(f"empty dataset in the mixture: {dict(zip(self.names, self.sizes))}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset position k, local index) of global ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any] | list[dict[str, Any]]:
        """The item at a global index, or the list of items at a list of indices."""
        if isinstance(index, (list, tuple)):
            return [self[int(i)] for i in index]
        k, local = self.locate(int(index))
        item = self.datasets[k][local]
        item["dataset"] = self.names[k]
        return item

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to every dataset that has ``set_epoch``."""
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def skip_counters(self) -> dict[str, SkipCounter]:
        """{name: the dataset's SkipCounter in this process} (DataLoader workers count in their own copies)."""
        return {n: d.skips for n, d in zip(self.names, self.datasets) if hasattr(d, "skips")}


class MixtureBatchSampler(ResumableSampler, DistributedSampler):
    """Yields, per step, this rank's ``batch_size`` global indices, all from the step's dataset (module docstring).

    Args:
        dataset: the ``MixtureDataset``.
        weights: {name: weight} (missing names weigh 0) or a sequence in dataset order; normalised to probabilities.
        batch_size: samples per rank per step.
        num_replicas, rank: world size and this rank (1 and 0 without DDP).
        seed: base seed of the dataset choices and the orders.
        steps_per_epoch: steps per epoch (the sampler's length); default ``len(dataset) // (batch_size x world)``.
        forward_epoch: ``set_epoch`` also reaches the datasets (their per-item randomness).
    """

    def __init__(
        self,
        dataset: MixtureDataset,
        weights: Mapping[str, float] | Sequence[float],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        forward_epoch: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(dataset.names)
            if unknown:
                raise KeyError(f"weights for unknown datasets {sorted(unknown)}; the mixture has {dataset.names}")
            weights = [float(weights.get(n, 0.0)) for n in dataset.names]
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(dataset.names),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"need one non-negative weight per dataset {dataset.names} with a positive sum, got "
                             f"{list(weights)}")
        self.probs = w / w.sum()
        self.batch_size, self.forward_epoch = batch_size, forward_epoch
        default_steps = len(dataset) // (batch_size * num_replicas)
        self.steps_per_epoch = max(1, int(steps_per_epoch if steps_per_epoch is not None else default_steps))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the choices and orders of ``epoch`` (and, if ``forward_epoch``, the datasets' randomness)."""
        super().set_epoch(epoch)
        if self.forward_epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def dataset_at(self, step: int) -> int:
        """Position of the dataset used at ``step`` of the current epoch: the same on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch, step])
        return int(rng.choice(len(self.probs), p=self.probs))

    def _order(self, k: int, cycle: int) -> np.ndarray:
        """Global indices of dataset k in the shared shuffled order of (seed, epoch, k, cycle)."""
        rng = np.random.default_rng([self.seed, self.epoch, k, cycle])
        return self.dataset.offsets[k] + rng.permutation(self.dataset.sizes[k])

    def __iter__(self) -> Iterator[list[int]]:
        return self.skip_resumed(self._batches())  # after a mid-epoch resume: without the steps already run

    def _batches(self) -> Iterator[list[int]]:
        """This rank's batch of global indices for every step of the epoch."""
        per_step = self.batch_size * self.num_replicas
        cursors = [0] * len(self.probs)  # positions consumed in each dataset's order stream
        orders: dict[int, tuple[int, np.ndarray]] = {}  # k -> (cycle, order) currently in use
        for step in range(self.steps_per_epoch):
            k = self.dataset_at(step)
            n = self.dataset.sizes[k]
            start = cursors[k] + self.rank * self.batch_size
            batch = []
            for pos in range(start, start + self.batch_size):
                cycle = pos // n
                if orders.get(k, (-1,))[0] != cycle:
                    orders[k] = (cycle, self._order(k, cycle))
                batch.append(int(orders[k][1][pos % n]))
            cursors[k] += per_step
            yield batch

    def expected_fractions(self) -> dict[str, float]:
        """{name: probability of a step using that dataset}."""
        return {n: float(p) for n, p in zip(self.dataset.names, self.probs)}

