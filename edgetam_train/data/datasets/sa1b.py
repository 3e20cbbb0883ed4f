"""SA-1B image dataset for stage-1 distillation: lazy RLE decoding of the sampled masks, S×S resize, flip, normalise.

Files and index: :mod:`edgetam_train.data.formats.sa1b`; transforms: :mod:`edgetam_train.data.transforms`.

Item (``SA1BDataset[i]``), S = ``image_size``:
    image: float32 (3, S, S), ImageNet-normalised; the jpg stretched to S×S (``transforms.resize_square``, SAM 2's
        square resize; no padding).
    flipped: bool, whether the horizontal flip was applied.
    teacher_f16: float16 (256, S/16, S/16), only with a ``teacher_cache``: the cached teacher F16 of this view.
    masks: bool (K, S, S), 1 <= K <= max_masks, one object per mask.
    orig_hw: int64 (2,) = (H, W) of the jpg.
    ann_ids: int64 (K,) SA-1B annotation ids of ``masks``.
    path: str, the jpg path.
    skips: dict reason -> count of samples skipped while producing this item (usually empty).

Batch (``collate_sa1b``): see its docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.rle import decode_resized
from edgetam_train.data.formats.sa1b import load_index, read_record, read_split_file, sample_annotations
from edgetam_train.data.skips import BadSample, SkipCounter, first_readable
from edgetam_train.data.transforms import build_augment, transform_spec
from edgetam_train.imaging import resize_square

if TYPE_CHECKING:
    from edgetam_train.data.teacher_cache import TeacherCache

class SA1BDataset(Dataset):
    """SA-1B images with up to ``max_masks`` lazily decoded masks each (one training object per mask).

    Args:
        root: directory tree of ``*.jpg`` + sibling ``*.json``.
        image_size: output side S (images and masks are resized to S x S, stretched, as SAM 2 trains).
        max_masks: most masks sampled per image (paper: 64).
        hflip_p: horizontal flip probability (the only stage-1 augmentation).
        index_cache: file caching the file list (default ``default_index_cache(root)``).
        split_file: optional text file listing the images to use (see ``read_split_file``); then nothing is scanned.
        files: optional explicit list of relative jpg paths (used by the DataModule's train/val split); wins over
            ``split_file`` and the scan.
        seed: base seed; the masks sampled and the flip depend only on (seed, epoch, index).
        max_skip_rate: threshold of ``SkipCounter`` (config key ``data.max_skip_rate``).
        min_attempts: attempts before the skip rate is checked.
        teacher_cache: a ``TeacherCache`` to read each item's teacher F16 from (``teacher_f16``), for the view
            (original or flipped) the item got; checked by the caller against the image list (``check_data``).
        cache_rows: the cache row of each of ``files`` (its position in the cached image list); default 0..N-1.

    ``set_epoch(epoch)`` changes the per-item randomness; the epoch lives in shared memory, so it reaches DataLoader
    workers that already exist (``persistent_workers``). ``skips`` counts the bad samples seen by this process.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 1024,
        max_masks: int = 64,
        hflip_p: float = 0.5,
        index_cache: str | Path | None = None,
        split_file: str | Path | None = None,
        files: Sequence[str] | None = None,
        seed: int = 0,
        max_skip_rate: float = 0.05,
        min_attempts: int = 20,
        teacher_cache: TeacherCache | None = None,
        cache_rows: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        self.root = Path(root)
        if files is None:
            files = read_split_file(split_file) if split_file is not None else load_index(self.root, index_cache)
        # One numpy bytes array instead of a list of str: DataLoader workers share it copy-on-write without Python
        # refcount writes touching every page (a list of 11M str would be copied into every worker over time).
        self._files = np.array([f.encode() for f in files], dtype=np.bytes_)
        if len(self._files) == 0:
            raise FileNotFoundError(f"no SA-1B images (*.jpg with a sibling *.json) under {self.root} (data.root)")
        self.image_size, self.max_masks, self.hflip_p, self.seed = image_size, max_masks, hflip_p, seed
        self.augment = build_augment(hflip_p)
        self.skips = SkipCounter(max_skip_rate=max_skip_rate, min_attempts=min_attempts, name=type(self).__name__)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.teacher_cache = teacher_cache
        self._cache_rows = np.arange(len(self._files)) if cache_rows is None else np.asarray(cache_rows, np.int64)
        if teacher_cache is not None:
            transform_spec(image_size)  # raises if the pipeline has a transform a cache cannot follow
            if len(self._cache_rows) != len(self._files):
                raise ValueError(f"cache_rows has {len(self._cache_rows)} rows for {len(self._files)} files")

    @staticmethod
    def prepare(root: str | Path, index_cache: str | Path | None = None, split_file: str | Path | None = None,
                **_: Any) -> None:
        """Build the file-index cache of ``root`` once, before the datasets are made (the data modules'
        ``prepare_data``: one process per node); nothing to do with a ``split_file``."""
        if split_file is None:
            load_index(root, index_cache)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[str]:
        """The relative jpg paths, in index order (builds a list: for inspection, not for per-item use)."""
        return [f.decode() for f in self._files]

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (visible to existing DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch set by ``set_epoch`` (0 initially)."""
        return int(self._epoch.item())

    def paths(self, index: int) -> tuple[Path, Path]:
        """(jpg path, json path) of item ``index``."""
        jpg = self.root / self._files[index].decode()
        return jpg, jpg.with_suffix(".json")

    def decode_selected(self, anns: list, h: int, w: int, rng: np.random.Generator, json_path: Path):
        """Sample up to ``max_masks`` annotations, decode and resize only those.

        Returns (uint8 (K, S, S) masks, int64 (K,) annotation ids).
        """
        chosen = sample_annotations(len(anns), self.max_masks, rng)
        picked = [anns[i] for i in chosen]
        ids = np.asarray([a.get("id", -1) if isinstance(a, dict) else -1 for a in picked], dtype=np.int64)
        rles = [a.get("segmentation") if isinstance(a, dict) else None for a in picked]
        return decode_resized(rles, h, w, self.image_size, json_path), ids

    def read_sample(self, index: int, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index`` and its sampled masks, untransformed: (jpg path, uint8 (H, W, 3) image, uint8 (K, S, S)
        masks, int64 (K,) annotation ids). Raises ``BadSample`` (unreadable files, a jpg whose
        size disagrees with its json, no masks)."""
        jpg, json_path = self.paths(index)
        info, anns = read_record(json_path)
        h, w = info["height"], info["width"]
        image = read_image(jpg)
        if image.shape[:2] != (h, w):
            raise BadSample("size_mismatch", str(jpg), f"jpg is {image.shape[1]}x{image.shape[0]}, json says {w}x{h}")
        masks, ids = self.decode_selected(anns, h, w, rng, json_path)
        return jpg, image, masks, ids

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """Read, decode and transform item ``index`` for ``epoch``; raises ``BadSample`` if it cannot be used."""
        rng = np.random.default_rng([self.seed, epoch, index])
        jpg, image, masks, ids = self.read_sample(index, rng)
        h, w = image.shape[:2]
        keep = masks.reshape(len(masks), -1).any(1)  # objects too small to survive the resize are dropped
        if not keep.any():
            raise BadSample("empty_after_transform", str(jpg), f"all {len(keep)} sampled masks vanished when resized")
        if not keep.all():
            masks, ids = masks[keep], ids[keep]
        image = resize_square(image, self.image_size)
        self.augment.set_random_seed(int(rng.integers(2**31)))
        out = self.augment(image=image, masks=masks)
        flipped = any(name == "HorizontalFlip" for name, _ in out["applied_transforms"])
        return {
            "image": torch.from_numpy(out["image"]).permute(2, 0, 1).contiguous(),
            "flipped": flipped,
            "masks": torch.from_numpy(out["masks"]).view(torch.bool),  # values are 0/1: reinterpret, no copy
            "orig_hw": torch.tensor((h, w), dtype=torch.int64),
            "ann_ids": torch.from_numpy(ids),
            "path": str(jpg),
            **self._cached_teacher(index, flipped),
        }

    def _cached_teacher(self, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        """{"teacher_f16": float16 (256, S/16, S/16)} of item ``index``'s view from the teacher cache, or {} without
        one. The flipped view's F16 is the teacher run on the flipped image (the encoder is not flip-equivariant)."""
        if self.teacher_cache is None:
            return {}
        row = int(self._cache_rows[index])
        return {"teacher_f16": self.teacher_cache.read(row, flipped, self._files[index].decode())}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``, or if it is bad the next readable one (wrapping around); see the module docstring.

        Raises ``SkipRateExceeded`` (a RuntimeError) when too many samples were bad.
        """
        epoch = self.epoch
        return first_readable(lambda i: self.load(i, epoch), index, len(self), self.skips,
                              f"{type(self).__name__} under {self.root}")


def collate_sa1b(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch SA-1B items; objects of all images are concatenated along one axis (no padding).

    Returns, for B images holding N = sum K_i objects:
        images: float32 (B, 3, S, S).
        masks: bool (N, S, S), image 0's objects first, then image 1's, ...
        obj_to_img: int64 (N,), the image index of each object (to gather per-image features for every object).
        num_objects: int64 (B,) = K_i (``masks.split(num_objects.tolist())`` gives the per-image stacks).
        orig_hw: int64 (B, 2); ann_ids: int64 (N,); paths: list[str] (B).
        flipped: bool (B,), which images were flipped.
        teacher_f16: float16 (B, 256, S/16, S/16) cached teacher F16 of each image's view (only when every item
            has one, i.e. the dataset reads a teacher cache).
        skips: dict reason -> count of samples skipped while producing this batch. DataLoader workers hold their own
            ``SkipCounter``s, so this is how the training process sees them: this batch made
            ``len(paths) + sum(skips.values())`` attempts.
    """
    counts = torch.tensor([len(item["masks"]) for item in batch], dtype=torch.int64)
    skips: dict[str, int] = {}
    for item in batch:
        for reason, n in item.get("skips", {}).items():
            skips[reason] = skips.get(reason, 0) + n
    out = {
        "images": torch.stack([item["image"] for item in batch]),
        "masks": torch.cat([item["masks"] for item in batch]),
        "obj_to_img": torch.repeat_interleave(torch.arange(len(batch)), counts),
        "num_objects": counts,
        "orig_hw": torch.stack([item["orig_hw"] for item in batch]),
        "ann_ids": torch.cat([item["ann_ids"] for item in batch]),
        "paths": [item["path"] for item in batch],
        "flipped": torch.tensor([bool(item.get("flipped", False)) for item in batch]),
        "skips": skips,
    }
    if all("teacher_f16" in item for item in batch):
        out["teacher_f16"] = torch.stack([item["teacher_f16"] for item in batch])
    return out
