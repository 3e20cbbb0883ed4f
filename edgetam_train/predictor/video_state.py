"""The video predictor's per-video state: frames, cached features and each tracked object's memory and outputs
(:class:`~edgetam_train.predictor.video.VideoPredictor` creates and updates it), and how a frame folder is listed."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from edgetam_train.models.memory_bank import MemoryBank

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class ObjectOutput:
    """Stored result of one object on one frame.

    Attributes:
        low_res_logits: (1, S/4, S/4) mask logits (after hole filling when enabled).
        iou: (1,) predicted IoU of the kept mask (1 for mask prompts).
        object_score_logit: (1,) object-presence logit (> 0: present).
        is_conditioning: True on the object's initial conditioning frames.
    """

    low_res_logits: Tensor
    iou: Tensor
    object_score_logit: Tensor
    is_conditioning: bool


@dataclass
class _TrackedObject:
    """Per-object tracking state: memory bank, prompts and which frames were tracked (and in which direction)."""

    obj_id: int
    bank: MemoryBank = field(default_factory=MemoryBank)
    points: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # frame -> ((1,N,2) S-px xy, (1,N))
    masks: dict[int, Tensor] = field(default_factory=dict)  # frame -> (1, 1, S, S) binary float
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse
    fresh: set[int] = field(default_factory=set)  # prompted frames not yet visited by a propagation


@dataclass(eq=False)
class VideoState:
    """Everything :class:`VideoPredictor` knows about one video (create with ``init_state*``).

    Attributes:
        num_frames: T.
        video_hw: (H, W) of the original frames; clicks, boxes, masks and returned logits use it.
        objects: obj_id -> tracking state, in order of first prompt.
    """

    num_frames: int
    video_hw: tuple[int, int]
    objects: dict[int, _TrackedObject] = field(default_factory=dict, repr=False)
    # per-frame uint8 arrays / file paths, or (T, 3, S, S) normalised pixels
    _source: list | Tensor | None = field(default=None, repr=False)
    _features: OrderedDict = field(default_factory=OrderedDict, repr=False)  # frame -> ImageFeatures (LRU)
    # memory position encoding: depends only on the size, so one tensor is shared by all stored frames
    _memory_pos: Tensor | None = field(default=None, repr=False)

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder, numerically sorted when every stem is an integer, else by name."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise ValueError(f"no {'/'.join(FRAME_EXTENSIONS)} frames found in {str(folder)!r}")
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files, key=lambda p: p.name)


def named_frame_files(folder: Path, max_frames: int | None, option: str) -> list[Path]:
    """:func:`frame_files` of ``folder`` (the first ``max_frames``), refusing two frames with one stem (e.g. ``.jpg``
    and ``.png``): the stem names each frame's mask PNG. ``option`` (``--frames``, ``--source``) starts the error."""
    files = frame_files(folder)[:max_frames]  # ValueError naming the folder when it holds no frames
    names = [p.stem for p in files]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{option} {folder}: several frames share the name(s) {dup[:5]} (e.g. .jpg and .png); "
                         "one file per frame name is needed to name the mask PNGs")
    return files
