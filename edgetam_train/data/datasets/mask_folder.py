"""Image + mask folder datasets for fine-tuning (layout: :mod:`edgetam_train.data.formats.mask_folder`).

``MaskFolderDataset`` is an ``SA1BDataset`` whose ``read_sample`` reads an image and up to ``max_masks`` of its
object masks; the rest of the item pipeline (stretch to S×S with ``imaging.resize_square``, flip, normalise, skip
counting) is SA-1B's.
``MaskFolderValDataset`` gives the 1-click mIoU validation items of ``MIoUValDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from edgetam_train.data.datasets.sa1b import SA1BDataset
from edgetam_train.data.datasets.val import PADDING
from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.mask_folder import (
    MASK_MODES,
    index_mask_folder,
    read_instance_label,
    read_object_masks,
)
from edgetam_train.data.formats.sa1b import sample_annotations
from edgetam_train.data.transforms import resize_mask_square


def check_mode(mode: str, key: str) -> None:
    """Refuse a mask mode that is not one of ``MASK_MODES``, naming the config ``key``."""
    if mode not in MASK_MODES:
        raise ValueError(f"{key}={mode!r}: expected one of {', '.join(MASK_MODES)} (what each masks/<stem>.png holds)")


class MaskFolderDataset(SA1BDataset):
    """Training items from ``<root>/<image_dir>`` + ``<root>/<mask_dir>`` (``SA1BDataset`` items).

    Args:
        root: the folder holding ``images/`` and ``masks/`` (config ``data.train.root``).
        image_dir / mask_dir: their names.
        mode: what a ``<stem>.png`` holds: "instance" ids (default) or a "binary" mask (config ``data.train.mode``;
            :func:`~edgetam_train.data.formats.mask_folder.read_instance_label`).
        **kwargs: ``SA1BDataset`` arguments (image_size, max_masks, hflip_p, seed, max_skip_rate, min_attempts).
    """

    def __init__(self, root: str | Path, image_dir: str = "images", mask_dir: str = "masks", mode: str = "instance",
                 **kwargs: Any) -> None:
        check_mode(mode, "data.train.mode")
        self.items = index_mask_folder(root, image_dir, mask_dir)
        self.mode = mode
        super().__init__(Path(root) / image_dir, files=[it.image for it in self.items], **kwargs)
        self.masks_dir = Path(root) / mask_dir

    def read_sample(self, index: int, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        """(image path, uint8 (H, W, 3) image, uint8 (K, h', w') masks at the S×S training size, int64 (K,) object ids).
        Raises ``BadSample`` (missing / corrupt files, a mask whose size differs from its image, no object)."""
        item = self.items[index]
        path = self.root / item.image
        image = read_image(path)
        h, w = image.shape[:2]
        if item.per_object:
            full, ids = read_object_masks(self.masks_dir, item, (h, w))
            chosen = sample_annotations(len(ids), self.max_masks, rng)
            masks = np.stack([resize_mask_square(full[i].view(np.uint8), self.image_size) for i in chosen])
        else:
            label, ids = read_instance_label(self.masks_dir / item.mask, (h, w), self.mode)
            chosen = sample_annotations(len(ids), self.max_masks, rng)
            small = resize_mask_square(label, self.image_size)  # nearest: the same as resizing each object mask
            masks = (small[None] == ids[chosen][:, None, None]).astype(np.uint8)
        return path, image, masks, ids[chosen]


class MaskFolderValDataset(Dataset):
    """A mask-folder validation split as 1-click mIoU items ``{"kind": "miou", "name", "image", "masks"}``.

    Args:
        root, image_dir, mask_dir: as :class:`MaskFolderDataset` (``data.val.root``).
        max_images: only the first images (by stem). max_masks: only the first objects of each image.
        mode: as :class:`MaskFolderDataset` (``data.val.mode``).
    """

    def __init__(self, root: str | Path, image_dir: str = "images", mask_dir: str = "masks",
                 max_images: int | None = None, max_masks: int | None = None, mode: str = "instance") -> None:
        check_mode(mode, "data.val.mode")
        self.mode = mode
        self.root = Path(root)
        items = index_mask_folder(root, image_dir, mask_dir)
        self.items = items[:max_images] if max_images else items
        self.images_dir, self.masks_dir, self.max_masks = self.root / image_dir, self.root / mask_dir, max_masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | None) -> dict[str, Any]:
        """One image and its object masks; ``None`` gives the padding item."""
        if index is None:
            return dict(PADDING)
        item = self.items[index]
        image = read_image(self.images_dir / item.image)
        masks, _ = read_object_masks(self.masks_dir, item, image.shape[:2], self.mode)
        masks = masks[: self.max_masks] if self.max_masks else masks
        return {"kind": "miou", "name": item.image, "image": image, "masks": masks}
