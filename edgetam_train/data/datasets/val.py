"""Validation sets for validation during training (config ``data.val``, read by both data modules).

* ``data.val.vos``: a DAVIS-format VOS set (``<root>/<image_dir>/<video>/<frame>.jpg`` + palette PNGs
  ``<root>/<mask_dir>/<video>/<frame>.png``, every frame annotated, 255 = void): one whole video per batch, scored
  with J&F (DAVIS 2017 semi-supervised protocol: the first frame's GT masks are the prompts).
* ``data.val.miou``: SA-1B-format images (``<name>.jpg`` + ``<name>.json``, searched recursively): one image and its
  masks per batch, scored with 1-click mIoU. ``SA1BDataModule`` uses its ``val_fraction`` held-out images here when
  ``data.val.miou.root`` is null.

Batches are plain dicts of numpy arrays at the original resolution (the predictors do the model's preprocessing):

* ``{"kind": "vos", "video": str, "frame_names": [str] * T, "frames": (T, H, W, 3) uint8 RGB, "labels": (T, H, W)
  uint8 object ids (0 background, 255 void)}``
* ``{"kind": "miou", "name": str, "image": (H, W, 3) uint8 RGB, "masks": (M, H, W) bool}`` (empty masks dropped)
* ``{"kind": "padding"}``: filler so that every rank runs the same number of validation batches (see
  :class:`ShardSampler`); it is not scored.
* ``{"kind": "skipped", "set": "vos" | "miou", "name": str, "reason": str, "path": str, "detail": str}``: a video or
  image that cannot be scored (a corrupt or missing jpg / png, sizes that disagree; the reasons of
  :mod:`edgetam_train.data.skips`). Validation counts it (``val/skipped``) and logs the file, and goes on: one bad
  file does not stop every validation of the run. A DAVIS-format video whose jpg has no png (every frame is
  annotated there) is skipped as ``missing_frame``, not scored on the remaining frames.

Under DDP each rank gets a disjoint shard of each set (no sample is repeated, so sums over ranks are exact).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.rle import decode_annotations
from edgetam_train.data.formats.sa1b import read_record, scan_pairs
from edgetam_train.data.formats.vos import frame_order, list_stems, read_label
from edgetam_train.data.skips import BadSample

log = logging.getLogger(__name__)

PADDING: dict[str, str] = {"kind": "padding"}


def skipped_item(which: str, name: str, bad: BadSample) -> dict[str, str]:
    """The item standing for a video / image of set ``which`` that cannot be scored (module docstring)."""
    return {"kind": "skipped", "set": which, "name": name, "reason": bad.reason, "path": bad.path,
            "detail": bad.detail}


class VOSValDataset(Dataset):
    """Whole DAVIS-format videos (module docstring), listed and checked when constructed.

    Args:
        root: dataset root.
        image_dir / mask_dir: frame and annotation folders relative to ``root`` (DAVIS 2017: ``JPEGImages/480p``,
            ``Annotations/480p``).
        split_file: text file of video names, one per line ('#' comments), relative to ``root`` unless absolute
            (DAVIS 2017 val: ``ImageSets/2017/val.txt``); default: every video folder of ``mask_dir``.
        max_videos: only the first videos (in split-file / name order).
        max_frames: only the first frames of each video (>= 3: J&F leaves out the first and the last frame).
    """

    def __init__(self, root: str | Path, image_dir: str = "JPEGImages", mask_dir: str = "Annotations",
                 split_file: str | Path | None = None, max_videos: int | None = None,
                 max_frames: int | None = None) -> None:
        self.root = Path(root)
        self.image_root, self.mask_root = self.root / image_dir, self.root / mask_dir
        if max_frames is not None and max_frames < 3:
            raise ValueError(f"data.val.vos.max_frames={max_frames}: need >= 3 (J&F skips the first and last frame)")
        for folder, key in ((self.image_root, "image_dir"), (self.mask_root, "mask_dir")):
            if not folder.is_dir():
                raise FileNotFoundError(f"data.val.vos: {folder} is not a directory (root {self.root}, {key})")
        if split_file is not None:
            path = Path(split_file) if Path(split_file).is_absolute() else self.root / split_file
            if not path.is_file():
                raise FileNotFoundError(f"data.val.vos.split_file: {path} does not exist")
            lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
            videos = [line for line in lines if line]
        else:
            videos = sorted(e.name for e in os.scandir(self.mask_root) if e.is_dir() and not e.name.startswith("."))
        videos = videos[:max_videos] if max_videos else videos
        if not videos:
            raise FileNotFoundError(f"data.val.vos: no videos under {self.mask_root}")
        self.videos: list[tuple[str, list[str]]] = []
        self.missing: dict[str, BadSample] = {}  # video -> its first frame without both a jpg and a png
        for video in videos:
            jpgs = list_stems(self.image_root / video, ".jpg")
            pngs = list_stems(self.mask_root / video, ".png")
            stems = frame_order([s for s in jpgs if s in pngs])[:max_frames]
            if len(stems) < 3:
                raise ValueError(f"data.val.vos: video {video!r} has {len(stems)} frames with both a jpg in "
                                 f"{self.image_root / video} and a png in {self.mask_root / video}; need >= 3")
            self.videos.append((video, stems))
            missing = self._first_missing(video, jpgs, pngs, stems if max_frames else None)
            if missing is not None:
                self.missing[video] = missing
                log.warning("data.val.vos: video %r is skipped at every validation: %s", video, missing)

    def _first_missing(self, video: str, jpgs: Mapping[str, str], pngs: Mapping[str, str],
                       scored: list[str] | None) -> BadSample | None:
        """The first frame (up to the last ``scored`` one, all when None) that has a jpg but no png or the reverse:
        DAVIS-format validation sets annotate every frame, so a missing file is a broken video, not a shorter one."""
        ordered = frame_order(list(set(jpgs) | set(pngs)))
        if scored is not None:
            ordered = ordered[: ordered.index(scored[-1]) + 1]
        for s in ordered:
            if s not in pngs:
                return BadSample("missing_frame", str(self.mask_root / video / f"{s}.png"),
                                 f"annotation missing: {self.image_root / video / jpgs[s]} has no png")
            if s not in jpgs:
                return BadSample("missing_frame", str(self.image_root / video / f"{s}.jpg"),
                                 f"frame missing: {self.mask_root / video / pngs[s]} has no jpg")
        return None

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int | None) -> dict[str, Any]:
        """One video (module docstring); ``None`` (from :class:`ShardSampler`) gives the padding item."""
        if index is None:
            return dict(PADDING)
        video, stems = self.videos[index]
        if video in self.missing:
            return skipped_item("vos", video, self.missing[video])
        try:
            frames = [read_image(self.image_root / video / f"{s}.jpg") for s in stems]
            labels = [read_label(self.mask_root / video / f"{s}.png") for s in stems]
            for s, frame, label in zip(stems, frames, labels):
                if frame.shape[:2] != frames[0].shape[:2] or label.shape != frame.shape[:2]:
                    raise BadSample("size_mismatch", str(self.mask_root / video / f"{s}.png"),
                                    f"jpg {frame.shape[1]}x{frame.shape[0]}, png {label.shape[1]}x{label.shape[0]}, "
                                    f"first frame {frames[0].shape[1]}x{frames[0].shape[0]} (W x H); all must match")
        except BadSample as bad:
            return skipped_item("vos", video, bad)
        return {"kind": "vos", "video": video, "frame_names": list(stems), "frames": np.stack(frames),
                "labels": np.stack(labels)}


class MIoUValDataset(Dataset):
    """SA-1B-format images with their masks (module docstring).

    Args:
        root: folder searched recursively for ``<name>.jpg`` + ``<name>.json``.
        files: relative jpg paths to use instead of searching (e.g. the ``val_fraction`` held-out images).
        max_images: only the first images (sorted by path).
        max_masks: at most this many masks per image (the first annotations of the json, as ``edgetam-eval miou``).
    """

    def __init__(self, root: str | Path, files: list[str] | None = None, max_images: int | None = None,
                 max_masks: int | None = None) -> None:
        self.root = Path(root)
        if files is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"data.val.miou.root: {self.root} is not a directory")
            files = scan_pairs(self.root)
        files = sorted(files)[:max_images] if max_images else sorted(files)
        if not files:
            raise FileNotFoundError(f"data.val.miou: no <name>.jpg + <name>.json pairs (SA-1B layout) under "
                                    f"{self.root}")
        self.files, self.max_masks = files, max_masks

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int | None) -> dict[str, Any]:
        """One image and its non-empty masks; ``None`` gives the padding item."""
        if index is None:
            return dict(PADDING)
        jpg = self.root / self.files[index]
        try:
            _, annotations = read_record(jpg.with_suffix(".json"))
            image = read_image(jpg)
            annotations = annotations[: self.max_masks] if self.max_masks else annotations
            decoded = decode_annotations(annotations, *image.shape[:2], jpg.with_suffix(".json"))
        except BadSample as bad:
            return skipped_item("miou", self.files[index], bad)
        except ValueError as e:  # decode_annotations: a malformed RLE, named in the message
            return skipped_item("miou", self.files[index], BadSample("bad_rle", str(jpg.with_suffix(".json")), str(e)))
        masks = [m for m in decoded if m.any()]
        stacked = np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), dtype=bool)
        return {"kind": "miou", "name": self.files[index], "image": image, "masks": stacked}


class ShardSampler(DistributedSampler):
    """Rank ``r`` of ``n`` gets items r, r + n, r + 2n, ... and then ``None`` up to ceil(len / n) items.

    No item is repeated (a plain ``DistributedSampler`` repeats items to even out the shards, which would count them
    twice), and every rank runs the same number of batches, also when a set has fewer items than there are ranks
    (a rank without a batch would skip ``on_validation_epoch_end`` and leave the others waiting in the all-reduce).
    A ``DistributedSampler`` subclass, so Lightning keeps it instead of injecting its own.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil(len(dataset) / num_replicas)

    def __iter__(self) -> Iterator[int | None]:
        own = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(own + [None] * (self.num_samples - len(own)))

    def __len__(self) -> int:
        return self.num_samples


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for one-item batches: keep the numpy arrays (no tensors, no device copy)."""
    return item


def plain_config(node: Any) -> Any:
    """``node`` with every mapping (e.g. an OmegaConf ``DictConfig`` from Hydra) turned into a plain dict and every
    sequence (``ListConfig``) into a list, so that the data module's saved hyper-parameters load with
    ``torch.load(weights_only=True)`` (Lightning's resume loads that way)."""
    if isinstance(node, Mapping):
        return {str(k): plain_config(v) for k, v in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        return [plain_config(v) for v in node]
    return node


def build_val_sets(val: Mapping[str, Any] | None, holdout: tuple[str | Path, list[str]] | None = None
                   ) -> list[Dataset]:
    """The validation datasets of config ``data.val`` (VOS first, then mIoU); [] when none is configured.

    Args:
        val: ``{"vos": {"root", "image_dir", "mask_dir", "split_file", "max_videos", "max_frames"},
            "miou": {"root", "max_images", "max_masks"}, "num_workers": int}``; a null root leaves that set out.
        holdout: (root, relative jpg paths) used for mIoU when ``val.miou.root`` is null (``val_fraction``).
    """
    val = dict(val or {})
    unknown = sorted(set(val) - {"vos", "miou", "num_workers"})
    if unknown:
        raise ValueError(f"data.val: unknown keys {unknown}; expected vos, miou, num_workers")
    sets: list[Dataset] = []
    vos = dict(val.get("vos") or {})
    if vos.get("root") is not None:
        sets.append(VOSValDataset(**vos))
    miou = dict(val.get("miou") or {})
    if miou.get("root") is not None:
        sets.append(MIoUValDataset(**miou))
    elif holdout is not None and holdout[1]:
        sets.append(MIoUValDataset(holdout[0], files=list(holdout[1]), max_images=miou.get("max_images"),
                                   max_masks=miou.get("max_masks")))
    if sets:
        log.info("validation sets: %s", ", ".join(f"{type(s).__name__} ({len(s)} items, {getattr(s, 'root', '')})"
                                                  for s in sets))
    else:
        log.info("validation off: data.val.vos.root and data.val.miou.root are null (and no val_fraction hold-out)")
    return sets


def val_loaders(sets: list[Dataset], world: int, rank: int, num_workers: int = 0,
                worker_init_fn: Callable[[int], None] | None = None) -> list[DataLoader]:
    """One DataLoader per set: one item per batch, this rank's :class:`ShardSampler` shard, in order.

    Workers are started for each validation run and end with it (validation is rare; idle workers would hold memory).
    """
    return [DataLoader(s, batch_size=None, sampler=ShardSampler(s, world, rank), collate_fn=_as_is,
                       num_workers=num_workers, worker_init_fn=worker_init_fn) for s in sets]
