"""A data set that yields one already collated batch ``n`` times: fixed-batch benchmarks and resume/overfit tests."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class FixedBatch(Dataset):
    """The same collated batch ``n`` times. Use with ``DataLoader(FixedBatch(batch, n), batch_size=None)``."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(f"FixedBatch: index {i} outside 0..{self.n - 1}")
        return self.batch
