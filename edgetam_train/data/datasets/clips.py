"""Video clips for stage-2 distillation: clip sampling, clip augmentation, the clip item and the clip batch.

A clip is T frames of one video (``clip_len``, 8 in the paper) with up to ``max_objects`` objects tracked through it;
SA-1B images enter stage 2 as clips of one frame (``SA1BClipDataset``). The loaders (``sav.SAVDataset``,
``vos.VOSDataset``, ``SA1BClipDataset``) read a ``RawClip`` (uint8 frames and masks already resized to S x S, stretched,
as SAM 2 trains); ``finish_clip`` applies the clip augmentation, drops objects that vanished and normalises.

Temporal sampling follows SAM 2 training (``RandomUniformSampler``): ``clip_len`` consecutive annotated frames,
played backwards with probability ``reverse_p``, whose first clip frame shows at least one object; the objects are
drawn among those visible on that first frame.

Item (``ClipDataset[i]``), S = ``image_size``, T frames, K objects (1 <= K <= max_objects):
    images: float32 (T, 3, S, S), ImageNet-normalised.
    masks: bool (T, K, S, S). An empty ``masks[t, k]`` means object k is absent on frame t (occluded or out of view):
        a valid target, the object-score head learns it. Every object is visible on frame 0 (where it is prompted)
        unless ``require_first_visible`` is off; objects visible on no frame are always dropped.
    obj_ids: int64 (K,) object ids in the source (SA-V masklet index, palette index, SA-1B annotation id).
    frame_idx: int64 (T,) frame numbers in the source video in clip order (SA-V: index in the 24 fps video;
        DAVIS-style: the number in the file name, else the position; images: 0).
    orig_hw: int64 (2,) = (H, W) of the source frames.
    video: str video id; path: str the file or directory read; dataset: str the dataset name.
    skips: dict reason -> count of samples skipped while producing this item (usually empty).

Batch (``collate_clips``): see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetam_train.data.datasets.sa1b import SA1BDataset
from edgetam_train.data.skips import BadSample, SkipCounter, first_readable
from edgetam_train.data.transforms import ClipAugment, as_augment, to_tensors
from edgetam_train.imaging import resize_square

# --------------------------------------------------------------------------------------------------------------------
# Temporal and object sampling
# --------------------------------------------------------------------------------------------------------------------


def clip_positions(start: int, clip_len: int, reverse: bool) -> np.ndarray:
    """int64 (clip_len,): positions ``start .. start + clip_len - 1`` of a video's annotated frames (reversed if
    ``reverse``)."""
    pos = np.arange(start, start + clip_len, dtype=np.int64)
    return pos[::-1].copy() if reverse else pos


def sample_window(first_ok: np.ndarray, clip_len: int, reverse_p: float, rng: np.random.Generator) -> np.ndarray | None:
    """Positions (clip_len,) of a clip of consecutive annotated frames whose first clip frame is acceptable.

    Args:
        first_ok: bool (n,), annotated frame i shows at least one object.
        clip_len: frames per clip.
        reverse_p: probability of playing the clip backwards (its first clip frame is then the window's last).
        rng: the item's generator.

    SAM 2 draws (start uniformly, reverse with probability ``reverse_p``) until the first clip frame shows an object;
    this draws from that distribution directly: each valid (start, direction) pair weighted by the direction's
    probability. Returns None when no window qualifies (or the video has fewer than ``clip_len`` frames).
    """
    n = len(first_ok)
    if n < clip_len:
        return None
    starts = np.arange(n - clip_len + 1)
    weights = np.concatenate([first_ok[starts] * (1.0 - reverse_p), first_ok[starts + clip_len - 1] * reverse_p])
    total = weights.sum()
    if total <= 0:
        return None
    k = int(rng.choice(len(weights), p=weights / total))
    return clip_positions(int(starts[k % len(starts)]), clip_len, reverse=k >= len(starts))


def sample_objects(candidates: np.ndarray, max_objects: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 ``min(len(candidates), max_objects)`` of ``candidates`` drawn without replacement."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= max_objects:
        return np.sort(candidates)
    return np.sort(rng.choice(candidates, size=max_objects, replace=False))


# --------------------------------------------------------------------------------------------------------------------
# Augmentation: one random draw for the whole clip
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# From raw clip to item
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RawClip:
    """A clip as read, before augmentation; frames and masks already resized to S x S.

    frames: T uint8 (S, S, 3) RGB frames in clip order.
    masks: uint8 (T, K, S, S) 0/1 masks of the sampled objects.
    obj_ids: int64 (K,); frame_idx: int64 (T,); orig_hw: (H, W) of the source; video: id; path: what was read.
    """

    frames: list[np.ndarray]
    masks: np.ndarray
    obj_ids: np.ndarray
    frame_idx: np.ndarray
    orig_hw: tuple[int, int]
    video: str
    path: str


def finish_clip(
    raw: RawClip,
    augment: ClipAugment,
    rng: np.random.Generator,
    dataset: str,
    affine_tries: int = 1,
    require_first_visible: bool = True,
) -> dict[str, Any]:
    """Augment, drop vanished objects and normalise ``raw`` into an item (see the module docstring).

    Objects already invisible on frame 0 after the resize (too small) are dropped first. The augmentation is drawn up
    to ``affine_tries`` times until every object keeps a pixel on frame 0 (``require_first_visible``) or on some frame;
    if no draw works the clip gets the last draw without the affine (SAM 2: one try, then the affine is skipped).
    Objects still failing the rule are dropped. Raises ``BadSample`` empty_after_transform when no object is left.
    """
    masks, obj_ids = raw.masks, raw.obj_ids
    keep = masks[0].reshape(len(obj_ids), -1).any(1) if require_first_visible else masks.any((0, 2, 3))
    if not keep.all():
        masks, obj_ids = masks[:, keep], obj_ids[keep]
    if len(obj_ids) == 0:
        raise BadSample("empty_after_transform", raw.path, "every sampled object vanished when resized")
    tries = max(1, affine_tries) if augment.has_geometry else 1
    seed = 0
    for attempt in range(tries + 1):
        geometric = attempt < tries
        if geometric:  # the fallback keeps the last draw's flip and colours, without the affine
            seed = int(rng.integers(2**31))
        images, out_masks = augment(raw.frames, masks, seed=seed, orig_hw=raw.orig_hw, geometric=geometric)
        visible = out_masks.reshape(*out_masks.shape[:2], -1).any(2)  # (T, K)
        keep = visible[0] if require_first_visible else visible.any(0)
        if keep.all() or not augment.has_geometry:
            break
    if not keep.any():
        raise BadSample("empty_after_transform", raw.path, f"all {len(keep)} objects vanished after augmentation")
    if not keep.all():
        out_masks, obj_ids = out_masks[:, keep], obj_ids[keep]
    images, masks_t = to_tensors(images, out_masks)
    return {
        "images": images,
        "masks": masks_t,
        "obj_ids": torch.as_tensor(obj_ids, dtype=torch.int64),
        "frame_idx": torch.as_tensor(raw.frame_idx, dtype=torch.int64),
        "orig_hw": torch.tensor(raw.orig_hw, dtype=torch.int64),
        "video": raw.video,
        "path": raw.path,
        "dataset": dataset,
    }


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


class ClipDataset(Dataset):
    """Base of the video clip datasets: per-item randomness, augmentation and skipping of bad samples.

    Subclasses implement ``__len__`` and ``load_raw(index, rng) -> RawClip``, raising ``BadSample`` for unusable data.

    Args:
        image_size: output side S.
        clip_len: frames per clip (T).
        max_objects: most objects per clip (paper: 3).
        augment: a ``ClipAugment``, a dict of its arguments, or None for none (normalise only).
        reverse_p: probability of playing a clip backwards.
        affine_tries, require_first_visible: see ``finish_clip``.
        seed: base seed; an item depends only on (seed, epoch, index).
        max_skip_rate, min_attempts: the ``SkipCounter`` rule (config key ``data.max_skip_rate``).
        name: dataset name written into items (default: the class's ``name``).

    ``set_epoch`` changes the per-item randomness and reaches existing DataLoader workers (shared memory).
    """

    name = "clips"

    def __init__(
        self,
        image_size: int = 1024,
        clip_len: int = 8,
        max_objects: int = 3,
        augment: ClipAugment | Mapping[str, Any] | None = None,
        reverse_p: float = 0.0,
        affine_tries: int = 1,
        require_first_visible: bool = True,
        seed: int = 0,
        max_skip_rate: float = 0.05,
        min_attempts: int = 20,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if clip_len < 1 or max_objects < 1:
            raise ValueError(f"clip_len and max_objects must be >= 1, got {clip_len} and {max_objects}")
        if not 0.0 <= reverse_p <= 1.0:
            raise ValueError(f"reverse_p must be in [0, 1], got {reverse_p}")
        self.image_size, self.clip_len, self.max_objects, self.reverse_p = image_size, clip_len, max_objects, reverse_p
        self.augment = as_augment(augment, image_size)
        self.affine_tries, self.require_first_visible, self.seed = affine_tries, require_first_visible, seed
        if name is not None:
            self.name = name
        self.skips = SkipCounter(max_skip_rate=max_skip_rate, min_attempts=min_attempts, name=type(self).__name__)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        raise NotImplementedError

    def load_raw(self, index: int, rng: np.random.Generator) -> RawClip:
        """Read clip ``index`` (frames, sampled objects); raises ``BadSample``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the randomness of ``epoch`` (visible to existing DataLoader workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch set by ``set_epoch`` (0 initially)."""
        return int(self._epoch.item())

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """Item ``index`` for ``epoch`` (no skipping); raises ``BadSample``."""
        rng = np.random.default_rng([self.seed, epoch, index])
        raw = self.load_raw(index, rng)
        return finish_clip(raw, self.augment, rng, self.name, self.affine_tries, self.require_first_visible)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``, or if it is bad the next readable one (wrapping around), with ``skips`` filled in.

        Raises ``SkipRateExceeded`` (a RuntimeError) when too many samples were bad.
        """
        epoch = self.epoch
        return first_readable(lambda i: self.load(i, epoch), index, len(self), self.skips,
                              f"{type(self).__name__} ({self.name})")


class SA1BClipDataset(SA1BDataset):
    """SA-1B images as one-frame clips for the stage-2 mixture (items in this module's clip format).

    Same index, annotation sampling and skip rules as ``SA1BDataset`` (``max_objects`` annotations are sampled and
    decoded per image); the clip augmentation replaces its flip-only pipeline, so images get the augmentation the
    video frames get.

    Args:
        root: SA-1B directory tree; max_objects: annotations sampled per image.
        augment, affine_tries, require_first_visible: as for ``ClipDataset``.
        name: dataset name written into items.
        **kwargs: the other ``SA1BDataset`` arguments (image_size, index_cache, split_file, files, seed,
            max_skip_rate, min_attempts).
    """

    name = "sa1b"

    def __init__(
        self,
        root: str | Path,
        max_objects: int = 3,
        augment: ClipAugment | Mapping[str, Any] | None = None,
        affine_tries: int = 1,
        require_first_visible: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("hflip_p", None)
        super().__init__(root, max_masks=max_objects, hflip_p=0.0, **kwargs)
        self.clip_augment = as_augment(augment, self.image_size)
        self.affine_tries, self.require_first_visible = affine_tries, require_first_visible
        if name is not None:
            self.name = name

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """Read image ``index`` and its sampled masks as a one-frame clip; raises ``BadSample``."""
        rng = np.random.default_rng([self.seed, epoch, index])
        jpg, image, masks, ids = self.read_sample(index, rng)
        h, w = image.shape[:2]
        raw = RawClip(frames=[resize_square(image, self.image_size)], masks=masks[None], obj_ids=ids,
                      frame_idx=np.zeros(1, dtype=np.int64), orig_hw=(h, w), video=jpg.stem, path=str(jpg))
        return finish_clip(raw, self.clip_augment, rng, self.name, self.affine_tries, self.require_first_visible)


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------


def collate_clips(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch clip items of one length T; objects of all clips are concatenated along one axis (no padding).

    Returns, for B clips of T frames holding N = sum K_i objects:
        images: float32 (B, T, 3, S, S).
        masks: bool (T, N, S, S): frame-major, clip 0's objects first, then clip 1's, ...
        obj_to_img: int64 (N,), the clip index of each object (gathers per-clip features for every object).
        num_objects: int64 (B,) = K_i (``masks.split(num_objects.tolist(), dim=1)`` gives the per-clip stacks).
        obj_ids: int64 (N,); frame_idx: int64 (B, T); orig_hw: int64 (B, 2).
        videos, paths, datasets: list[str] (B); dataset: the datasets' common name ("mixed" if they differ;
            ``MixtureBatchSampler`` batches always come from one dataset).
        skips: dict reason -> count of samples skipped while producing this batch (as ``collate_sa1b``): this
            batch made ``B + sum(skips.values())`` attempts.

    Raises ``ValueError`` when the clips differ in length or size (one batch must not mix images and clips).
    """
    shapes = {tuple(item["images"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch clips of different shapes {sorted(shapes)} (T, 3, S, S); batches must come "
                         f"from one dataset (see MixtureBatchSampler)")
    counts = torch.tensor([item["masks"].shape[1] for item in batch], dtype=torch.int64)
    skips: dict[str, int] = {}
    for item in batch:
        for reason, n in item.get("skips", {}).items():
            skips[reason] = skips.get(reason, 0) + n
    datasets = [item.get("dataset", "") for item in batch]
    return {
        "images": torch.stack([item["images"] for item in batch]),
        "masks": torch.cat([item["masks"] for item in batch], dim=1),
        "obj_to_img": torch.repeat_interleave(torch.arange(len(batch)), counts),
        "num_objects": counts,
        "obj_ids": torch.cat([item["obj_ids"] for item in batch]),
        "frame_idx": torch.stack([item["frame_idx"] for item in batch]),
        "orig_hw": torch.stack([item["orig_hw"] for item in batch]),
        "videos": [item["video"] for item in batch],
        "paths": [item["path"] for item in batch],
        "datasets": datasets,
        "dataset": datasets[0] if len(set(datasets)) == 1 else "mixed",
        "skips": skips,
    }
