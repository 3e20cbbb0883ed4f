"""DAVIS / MOSE / YouTube-VOS clip dataset (stage 2) over the layout read by :mod:`edgetam_train.data.formats.vos`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetam_train.data.datasets.clips import ClipDataset, RawClip, clip_positions, sample_objects
from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.vos import frame_order, list_stems, numbering_gaps, object_ids, read_label
from edgetam_train.data.skips import BadSample
from edgetam_train.data.transforms import resize_frames, resize_mask_square

log = logging.getLogger(__name__)


class VOSDataset(ClipDataset):
    """DAVIS / MOSE / YouTube-VOS clips (see the module docstring and ``clips``).

    Args:
        root: dataset root.
        image_dir, mask_dir: frame and annotation folders relative to ``root``.
        split_file: optional text file of video names to use, one per line ('#' comments); default: every video
            folder of ``mask_dir``.
        videos: optional explicit list of video names (wins over ``split_file``).
        first_frame_tries: clip windows tried until one starts on a frame with an object (SAM 2 retries likewise).
        every_frame_annotated: every jpg has its png (DAVIS, MOSE): a jpg without a png is a missing annotation and
            the video is skipped (``missing_frame``, naming the png) instead of silently joining the frames around
            the gap; False for sets annotated sparsely (YouTube-VOS: every 5th frame). A png without its jpg is
            always a missing frame.
        **clip_kwargs: ``ClipDataset`` arguments (image_size, clip_len, max_objects, augment, reverse_p, seed, ...).
    """

    name = "vos"

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "JPEGImages",
        mask_dir: str = "Annotations",
        split_file: str | Path | None = None,
        videos: Sequence[str] | None = None,
        first_frame_tries: int = 10,
        every_frame_annotated: bool = True,
        **clip_kwargs: Any,
    ) -> None:
        super().__init__(**clip_kwargs)
        self.root = Path(root)
        self.image_root, self.mask_root = self.root / image_dir, self.root / mask_dir
        if not self.mask_root.is_dir():
            raise FileNotFoundError(f"annotation folder {self.mask_root} is not a directory (root {self.root}, "
                                    f"mask_dir {mask_dir!r})")
        if videos is None:
            if split_file is not None:
                lines = (line.split("#", 1)[0].strip() for line in Path(split_file).read_text().splitlines())
                videos = [line for line in lines if line]
            else:
                videos = sorted(e.name for e in os.scandir(self.mask_root) if e.is_dir() and not e.name.startswith("."))
        self.videos = list(videos)
        if not self.videos:
            raise FileNotFoundError(f"no videos under {self.mask_root}")
        self.first_frame_tries = first_frame_tries
        self.every_frame_annotated = every_frame_annotated
        self._gaps_warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.videos)

    def annotated_frames(self, video: str) -> list[str]:
        """Ordered stems of the frames of ``video`` with both a jpg and a png. Raises ``BadSample`` missing_frame
        naming the first missing file: a png without its jpg, or (``every_frame_annotated``) a jpg without its png;
        a clip across such a gap would join frames that are not consecutive."""
        jpgs = list_stems(self.image_root / video, ".jpg")
        pngs = list_stems(self.mask_root / video, ".png")
        stems = frame_order([s for s in jpgs if s in pngs])
        for s in frame_order(list(pngs)):
            if s not in jpgs:
                raise BadSample("missing_frame", str(self.image_root / video / f"{s}.jpg"),
                                f"frame missing: {self.mask_root / video / pngs[s]} has no jpg")
        if self.every_frame_annotated:
            for s in frame_order(list(jpgs)):
                if s not in pngs:
                    raise BadSample("missing_frame", str(self.mask_root / video / f"{s}.png"),
                                    f"annotation missing: {self.image_root / video / jpgs[s]} has no png")
            self._warn_gaps(video, stems)
        return stems

    def _warn_gaps(self, video: str, stems: list[str]) -> None:
        """Warn once per video when frame numbers jump (a jpg and its png both missing): clips still join the frames
        around the gap, which may be a cut in the video (sparse sets, ``every_frame_annotated=False``, skip this)."""
        gaps = numbering_gaps(stems)
        if gaps and video not in self._gaps_warned:
            self._gaps_warned.add(video)
            missing = sum(int(b) - int(a) - 1 for a, b in gaps)
            log.warning("%s: frame numbers jump from %s to %s%s (%d frame(s) missing, jpg and png); clips join the "
                        "frames around the gap", self.image_root / video, *gaps[0],
                        f" and at {len(gaps) - 1} more place(s)" if len(gaps) > 1 else "", missing)

    def load_raw(self, index: int, rng: np.random.Generator) -> RawClip:
        """List the video's frames, draw a window whose first frame has objects, read only the clip's files."""
        video = self.videos[index]
        stems = self.annotated_frames(video)
        if len(stems) < self.clip_len:
            raise BadSample("too_short", str(self.mask_root / video),
                            f"{len(stems)} annotated frames < clip_len {self.clip_len}")
        labels: dict[int, np.ndarray] = {}

        def label(pos: int) -> np.ndarray:
            if pos not in labels:
                labels[pos] = read_label(self.mask_root / video / f"{stems[pos]}.png")
            return labels[pos]

        for _ in range(self.first_frame_tries):
            start = int(rng.integers(len(stems) - self.clip_len + 1))
            positions = clip_positions(start, self.clip_len, reverse=bool(rng.random() < self.reverse_p))
            candidates = object_ids(label(int(positions[0])))
            if len(candidates):
                break
        else:
            raise BadSample("no_masks", str(self.mask_root / video),
                            f"no object on the first frame of {self.first_frame_tries} sampled clips")
        objects = sample_objects(candidates, self.max_objects, rng)
        frames = [read_image(self.image_root / video / f"{stems[p]}.jpg") for p in positions]
        h, w = frames[0].shape[:2]
        masks = []
        for p, frame in zip(positions, frames):
            lab = label(int(p))
            if frame.shape[:2] != (h, w) or lab.shape != (h, w):
                raise BadSample("size_mismatch", str(self.mask_root / video / f"{stems[p]}.png"),
                                f"frame {frame.shape[1]}x{frame.shape[0]}, mask {lab.shape[1]}x{lab.shape[0]}, "
                                f"first frame {w}x{h}")
            small = resize_mask_square(lab, self.image_size)
            masks.append(small[None] == objects[:, None, None].astype(small.dtype))
        frame_idx = np.array([int(stems[p]) if stems[p].isdigit() else int(p) for p in positions], dtype=np.int64)
        return RawClip(frames=resize_frames(frames, self.image_size), masks=np.stack(masks).astype(np.uint8),
                       obj_ids=objects, frame_idx=frame_idx, orig_hw=(h, w), video=video,
                       path=str(self.image_root / video))
