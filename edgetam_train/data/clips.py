"""Video clips for stage-2 distillation: clip sampling, clip augmentation, the clip item and the clip batch.

A clip is T frames of one video (``clip_len``, 8 in the paper) with up to ``max_objects`` objects tracked through it;
SA-1B images enter stage 2 as clips of one frame (``SA1BClipDataset``). The loaders (``sav.SAVDataset``,
``vos.VOSDataset``, ``SA1BClipDataset``) read a ``RawClip`` (uint8 frames and masks already resized to longest side
S); ``finish_clip`` applies the same random augmentation to every frame, drops objects that vanished, normalises and
pads to S x S.

Temporal sampling follows SAM 2 training (``RandomUniformSampler``): ``clip_len`` consecutive annotated frames,
played backwards with probability ``reverse_p``, whose first clip frame shows at least one object; the objects are
drawn among those visible on that first frame.

Item (``ClipDataset[i]``), S = ``image_size``, T frames, K objects (1 <= K <= max_objects):
    images: float32 (T, 3, S, S), ImageNet-normalised, zero (after normalisation) outside the valid region.
    masks: bool (T, K, S, S). An empty ``masks[t, k]`` means object k is absent on frame t (occluded or out of view):
        a valid target, the object-score head learns it. Every object is visible on frame 0 (where it is prompted)
        unless ``require_first_visible`` is off; objects visible on no frame are always dropped.
    obj_ids: int64 (K,) object ids in the source (SA-V masklet index, palette index, SA-1B annotation id).
    frame_idx: int64 (T,) frame numbers in the source video in clip order (SA-V: index in the 24 fps video;
        DAVIS-style: the number in the file name, else the position; images: 0).
    valid_hw: int64 (2,) = (h, w) of the resized, unpadded frames (top-left corner).
    orig_hw: int64 (2,) = (H, W) of the source frames.
    video: str video id; path: str the file or directory read; dataset: str the dataset name.
    skips: dict reason -> count of samples skipped while producing this item (usually empty).

Batch (``collate_clips``): see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edgetam_train.data.sa1b import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SA1BDataset,
    build_resize,
)
from edgetam_train.data.skips import BadSample, SkipCounter, first_readable

# Affine fill: the mean colour, so filled corners become ~0 after normalisation, like the padding.
MEAN_RGB: tuple[int, int, int] = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104)


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


class ClipAugment:
    """The stage-2 augmentation, identical on every frame of a clip (``normalize_pad`` then makes the tensors).

    Pipeline (albumentations, after the loaders resized the frames to longest side S): HorizontalFlip(hflip_p) ->
    Affine(rotate ±degrees, x-shear ±shear, bilinear, mean-colour fill; masks nearest, 0 fill) -> ColorJitter
    (brightness, contrast, saturation, hue) -> ToGray(grayscale_p). The paper's recipe is the default (hflip,
    affine 25° / shear 20, colour jitter 0.1, grayscale 0.05).

    Frames 1..T-1 are ``additional_targets`` of frame 0, so albumentations draws the parameters once per clip; every
    object mask of every frame rides along as one ``masks`` stack. The affine is applied after the resize rather than
    before (SAM 2's order): rotation and shear about the centre commute with an aspect-preserving resize, so only the
    interpolation differs, and the warp runs on S-sized instead of full-size frames.

    Args:
        image_size: output side S (``normalize_pad`` pads to it).
        hflip_p, degrees, shear, brightness, contrast, saturation, hue, grayscale_p: see above (0 disables a step).
    """

    def __init__(
        self,
        image_size: int,
        hflip_p: float = 0.5,
        degrees: float = 25.0,
        shear: float = 20.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        saturation: float = 0.1,
        hue: float = 0.0,
        grayscale_p: float = 0.05,
    ) -> None:
        self.image_size = image_size
        self.hflip_p, self.degrees, self.shear, self.grayscale_p = hflip_p, degrees, shear, grayscale_p
        self.jitter = (brightness, contrast, saturation, hue)
        self._pipelines: dict[tuple[int, bool], A.Compose] = {}

    @classmethod
    def identity(cls, image_size: int) -> ClipAugment:
        """No augmentation (validation, tests): frames and masks pass through unchanged."""
        return cls(image_size, hflip_p=0.0, degrees=0.0, shear=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, grayscale_p=0.0)

    @property
    def has_geometry(self) -> bool:
        """True when the affine step can move pixels (what ``finish_clip`` retries or leaves out)."""
        return self.degrees > 0 or self.shear > 0

    def pipeline(self, num_frames: int, geometric: bool = True) -> A.Compose:
        """The albumentations Compose for ``num_frames`` frames (cached); ``geometric=False`` leaves out the affine."""
        key = (num_frames, geometric and self.has_geometry)
        if key not in self._pipelines:
            steps: list[A.BasicTransform] = []
            if self.hflip_p > 0:
                steps.append(A.HorizontalFlip(p=self.hflip_p))
            if key[1]:
                steps.append(A.Affine(rotate=(-self.degrees, self.degrees),
                                      shear={"x": (-self.shear, self.shear), "y": (0.0, 0.0)},
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=MEAN_RGB, fill_mask=0, p=1.0))
            if any(self.jitter):
                b, c, s, h = self.jitter
                steps.append(A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=1.0))
            if self.grayscale_p > 0:
                steps.append(A.ToGray(num_output_channels=3, p=self.grayscale_p))
            extra = {f"image{t}": "image" for t in range(1, num_frames)}
            self._pipelines[key] = A.Compose(steps, additional_targets=extra)
        return self._pipelines[key]

    def __call__(
        self, frames: Sequence[np.ndarray], masks: np.ndarray, seed: int, geometric: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment a clip with the parameters drawn from ``seed``.

        Args:
            frames: T uint8 (h, w, 3) frames of one size, h and w <= S.
            masks: uint8 (T, K, h, w) 0/1 object masks.
            seed: seeds albumentations' draw (same seed, same parameters).
            geometric: False leaves out the affine.
        Returns:
            uint8 (T, h, w, 3) frames; uint8 (T, K, h, w) masks.
        """
        t, k, h, w = masks.shape
        pipe = self.pipeline(len(frames), geometric)
        if not pipe.transforms:
            return np.stack(frames), masks
        pipe.set_random_seed(int(seed))
        inputs = {f"image{i}": frame for i, frame in enumerate(frames[1:], start=1)}
        out = pipe(image=frames[0], masks=masks.reshape(t * k, h, w), **inputs)
        images = np.stack([out["image"]] + [out[f"image{i}"] for i in range(1, len(frames))])
        return images, np.asarray(out["masks"]).reshape(t, k, h, w)


_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
_STD_255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0


def normalize_pad(frames: np.ndarray, masks: np.ndarray, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (T, h, w, 3) frames and (T, K, h, w) masks -> float32 (T, 3, S, S) ImageNet-normalised frames and bool
    (T, K, S, S) masks, padded bottom/right with 0 (after normalisation: the mean colour; SAM's convention).

    Written straight into the padded channel-first tensors (one pass per frame, no float HWC intermediate).
    """
    t, h, w, _ = frames.shape
    images = torch.empty(t, 3, image_size, image_size)  # each element written once: padding zeroed, the rest copied
    images[:, :, h:].zero_()
    images[:, :, :h, w:].zero_()
    valid = images[:, :, :h, :w]
    valid.copy_(torch.from_numpy(frames).permute(0, 3, 1, 2))
    valid.sub_(_MEAN_255).div_(_STD_255)
    out_masks = torch.zeros(t, masks.shape[1], image_size, image_size, dtype=torch.bool)
    out_masks[:, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(masks)).view(torch.bool)
    return images, out_masks


# --------------------------------------------------------------------------------------------------------------------
# From raw clip to item
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RawClip:
    """A clip as read, before augmentation; frames and masks already resized to longest side S.

    frames: T uint8 (h, w, 3) RGB frames in clip order.
    masks: uint8 (T, K, h, w) 0/1 masks of the sampled objects.
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
    affine_tries: int = 3,
    require_first_visible: bool = True,
) -> dict[str, Any]:
    """Augment, drop vanished objects, normalise and pad ``raw`` into an item (see the module docstring).

    Objects already invisible on frame 0 after the resize (too small) are dropped first. The augmentation is drawn up
    to ``affine_tries`` times until every object keeps a pixel on frame 0 (``require_first_visible``) or on some frame;
    if no draw works the clip gets the draw without the affine (SAM 2 likewise skips the affine then). Objects still
    failing the rule are dropped. Raises ``BadSample`` empty_after_transform when no object is left.
    """
    masks, obj_ids = raw.masks, raw.obj_ids
    keep = masks[0].reshape(len(obj_ids), -1).any(1) if require_first_visible else masks.any((0, 2, 3))
    if not keep.all():
        masks, obj_ids = masks[:, keep], obj_ids[keep]
    if len(obj_ids) == 0:
        raise BadSample("empty_after_transform", raw.path, "every sampled object vanished when resized")
    tries = max(1, affine_tries) if augment.has_geometry else 1
    for attempt in range(tries + 1):
        geometric = attempt < tries
        images, out_masks = augment(raw.frames, masks, seed=int(rng.integers(2**31)), geometric=geometric)
        visible = out_masks.reshape(*out_masks.shape[:2], -1).any(2)  # (T, K)
        keep = visible[0] if require_first_visible else visible.any(0)
        if keep.all() or not augment.has_geometry:
            break
    if not keep.any():
        raise BadSample("empty_after_transform", raw.path, f"all {len(keep)} objects vanished after augmentation")
    if not keep.all():
        out_masks, obj_ids = out_masks[:, keep], obj_ids[keep]
    h, w = raw.frames[0].shape[:2]
    images, masks_t = normalize_pad(images, out_masks, augment.image_size)
    return {
        "images": images,
        "masks": masks_t,
        "obj_ids": torch.as_tensor(obj_ids, dtype=torch.int64),
        "frame_idx": torch.as_tensor(raw.frame_idx, dtype=torch.int64),
        "valid_hw": torch.tensor((h, w), dtype=torch.int64),
        "orig_hw": torch.tensor(raw.orig_hw, dtype=torch.int64),
        "video": raw.video,
        "path": raw.path,
        "dataset": dataset,
    }


def resize_frames(frames: Sequence[np.ndarray], image_size: int) -> list[np.ndarray]:
    """Each uint8 (H, W, 3) frame resized to longest side ``image_size`` (area when shrinking, as for SA-1B)."""
    resize = build_resize(image_size)
    return [resize(image=f)["image"] for f in frames]


def resize_label(label: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) integer map to ``out_hw`` (what resizing each object mask gives)."""
    if label.shape == tuple(out_hw):
        return label
    return cv2.resize(label, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)


# --------------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------------


def as_augment(augment: ClipAugment | Mapping[str, Any] | None, image_size: int) -> ClipAugment:
    """A ``ClipAugment`` from an instance, a dict of its arguments (config ``data.augment``), or None (identity)."""
    if augment is None:
        return ClipAugment.identity(image_size)
    if isinstance(augment, ClipAugment):
        if augment.image_size != image_size:
            raise ValueError(f"ClipAugment pads to {augment.image_size} but the dataset's image_size is {image_size}")
        return augment
    return ClipAugment(image_size, **dict(augment))


class ClipDataset(Dataset):
    """Base of the video clip datasets: per-item randomness, augmentation and skipping of bad samples.

    Subclasses implement ``__len__`` and ``load_raw(index, rng) -> RawClip``, raising ``BadSample`` for unusable data.

    Args:
        image_size: output side S.
        clip_len: frames per clip (T).
        max_objects: most objects per clip (paper: 3).
        augment: a ``ClipAugment``, a dict of its arguments, or None for none (normalise and pad only).
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
        affine_tries: int = 3,
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
        affine_tries: int = 3,
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
        raw = RawClip(frames=[self.resize(image=image)["image"]], masks=masks[None], obj_ids=ids,
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
        obj_ids: int64 (N,); frame_idx: int64 (B, T); valid_hw: int64 (B, 2); orig_hw: int64 (B, 2).
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
        "valid_hw": torch.stack([item["valid_hw"] for item in batch]),
        "orig_hw": torch.stack([item["orig_hw"] for item in batch]),
        "videos": [item["video"] for item in batch],
        "paths": [item["path"] for item in batch],
        "datasets": datasets,
        "dataset": datasets[0] if len(set(datasets)) == 1 else "mixed",
        "skips": skips,
    }
