"""COCO instance datasets for fine-tuning: training items exactly as SA-1B's, and a 1-click mIoU validation set.

Reading and checking the json: :mod:`edgetam_train.data.formats.coco`. ``COCODataset`` is an ``SA1BDataset`` whose
``read_sample`` reads a COCO image and its sampled annotations; everything after it (dropping masks that vanish when
resized, the stretch to S×S of ``imaging.resize_square``, flip, normalise, the skip counting of unreadable images) is
the SA-1B item pipeline, so items and batches (``collate_sa1b``) are the same and the training step runs unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from edgetam_train.data.datasets.sa1b import SA1BDataset
from edgetam_train.data.datasets.val import PADDING
from edgetam_train.data.formats.coco import CocoSet, annotation_rle, read_coco
from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.rle import decode_resized
from edgetam_train.data.formats.sa1b import sample_annotations
from edgetam_train.data.skips import BadSample, SkipRateExceeded

log = logging.getLogger(__name__)


def check_drop_rate(coco: CocoSet, max_skip_rate: float) -> None:
    """Raise ``SkipRateExceeded`` when the malformed annotations of ``coco`` pass ``data.max_skip_rate``."""
    rate = coco.bad_annotations / max(coco.num_annotations, 1)
    if rate > max_skip_rate:
        raise SkipRateExceeded(
            f"{coco.path}: {coco.bad_annotations} of {coco.num_annotations} annotations are malformed (skip rate "
            f"{rate:.1%}) which exceeds data.max_skip_rate={max_skip_rate:g}; counts per reason {coco.dropped} (the "
            f"log lists the first ones). Fix the file, or raise data.max_skip_rate if this is expected.")


def check_image_size(image: np.ndarray, h: int, w: int, path: Path, source: str) -> None:
    """Raise ``BadSample`` size_mismatch when ``image`` is not h x w (as the annotation file ``source`` says)."""
    if image.shape[:2] != (h, w):
        raise BadSample("size_mismatch", str(path),
                        f"image is {image.shape[1]}x{image.shape[0]}, {source} says {w}x{h} (W x H)")


class COCODataset(SA1BDataset):
    """COCO instances as stage-1 training items (``SA1BDataset`` items; see its docstring).

    Args:
        annotations: the COCO instances json (config ``data.train.annotations``).
        images: the folder that ``file_name`` entries are relative to (``data.train.images``).
        iscrowd: "skip" (default) or "use" the ``iscrowd=1`` annotations.
        **kwargs: ``SA1BDataset`` arguments (image_size, max_masks, hflip_p, seed, max_skip_rate, min_attempts).
    """

    def __init__(self, annotations: str | Path, images: str | Path, iscrowd: str = "skip", **kwargs: Any) -> None:
        coco = read_coco(annotations, iscrowd)
        check_drop_rate(coco, kwargs.get("max_skip_rate", 0.05))
        if not Path(images).is_dir():
            raise FileNotFoundError(f"COCO image folder {images} is not a directory (data.train.images, for "
                                    f"{annotations})")
        super().__init__(images, files=[im.file_name for im in coco.images], **kwargs)
        self.coco = coco

    def read_sample(self, index: int, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` and up to ``max_masks`` of its annotations, decoded at the S×S training size (as
        ``SA1BDataset.read_sample``). Raises ``BadSample`` (missing / corrupt image, size disagreeing with the json)."""
        entry = self.coco.images[index]
        path = self.root / entry.file_name
        image = read_image(path)
        h, w = entry.height, entry.width
        check_image_size(image, h, w, path, str(self.coco.path))
        picked = [entry.annotations[i] for i in sample_annotations(len(entry.annotations), self.max_masks, rng)]
        ids = np.asarray([a.get("id", -1) for a in picked], dtype=np.int64)
        rles = [annotation_rle(a, h, w) for a in picked]
        return path, image, decode_resized(rles, h, w, self.image_size, self.coco.path), ids


class COCOValDataset(Dataset):
    """A COCO validation split as 1-click mIoU items ``{"kind": "miou", "name", "image", "masks"}`` (the items of
    :class:`edgetam_train.data.datasets.val.MIoUValDataset`, scored by the same validation step).

    Args:
        annotations / images: the json and its image folder (``data.val.annotations`` / ``data.val.images``).
        max_images: only the first images (json order).
        max_masks: only the first usable annotations of each image.
        iscrowd: as :class:`COCODataset`.
    Images missing on disk are left out when the set is built (logged), so validation scores what exists.
    """

    def __init__(self, annotations: str | Path, images: str | Path, max_images: int | None = None,
                 max_masks: int | None = None, iscrowd: str = "skip") -> None:
        self.coco = read_coco(annotations, iscrowd)
        self.root = Path(images)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO image folder {images} is not a directory (data.val.images, for "
                                    f"{annotations})")
        present = [im for im in self.coco.images if (self.root / im.file_name).is_file()]
        missing = len(self.coco.images) - len(present)
        if missing:
            self.coco.dropped["missing_image"] = missing
            log.warning("%s: %d of %d images are missing under %s and left out of validation (first: %s)",
                        annotations, missing, len(self.coco.images), self.root,
                        next(im.file_name for im in self.coco.images if not (self.root / im.file_name).is_file()))
        if not present:
            raise FileNotFoundError(f"{annotations}: none of its images exists under {self.root} (data.val.images)")
        self.entries = present[:max_images] if max_images else present
        self.max_masks = max_masks

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int | None) -> dict[str, Any]:
        """One image and its non-empty masks; ``None`` gives the padding item."""
        if index is None:
            return dict(PADDING)
        entry = self.entries[index]
        path = self.root / entry.file_name
        image = read_image(path)
        check_image_size(image, entry.height, entry.width, path, str(self.coco.path))
        anns = entry.annotations[: self.max_masks] if self.max_masks else entry.annotations
        masks = [mask_utils.decode(annotation_rle(a, entry.height, entry.width)).astype(bool) for a in anns]
        masks = [m for m in masks if m.any()]
        stacked = np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), dtype=bool)
        return {"kind": "miou", "name": entry.file_name, "image": image, "masks": stacked}
