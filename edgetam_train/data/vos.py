"""DAVIS / MOSE / YouTube-VOS style clips: ``JPEGImages/<video>/<frame>.jpg`` + ``Annotations/<video>/<frame>.png``.

Each annotation is an indexed PNG (palette "P" mode, or 8-bit grey "L"): pixel value = object id, 0 = background,
255 = void (DAVIS marks uncertain borders with it; never an object, not part of any mask). The annotated frames of
a video are the frames that have both a jpg and a png (YouTube-VOS train annotates every 5th frame; DAVIS and MOSE
every frame); clips take ``clip_len`` consecutive annotated frames. Frame files are ordered by their number when all
names are numbers, else by name.

Layouts: MOSE and YouTube-VOS (``train/``) use the default ``image_dir="JPEGImages"``, ``mask_dir="Annotations"``;
DAVIS 2017 has a resolution level (``image_dir="JPEGImages/480p"``, ``mask_dir="Annotations/480p"``) and split
lists (``split_file=ImageSets/2017/train.txt``).

Bad videos are skipped and counted: fewer annotated frames than the clip (too_short), a video or frame that is
missing (missing_frame), a corrupt jpg (corrupt_image) or png (corrupt_mask), a png that is not indexed
(bad_annotation), png and jpg sizes that disagree (size_mismatch), no clip whose first frame has an object (no_masks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from edgetam_train.data.clips import ClipDataset, RawClip, clip_positions, resize_frames, resize_label, sample_objects
from edgetam_train.data.sa1b import read_image, resized_hw
from edgetam_train.data.skips import BadSample

VOID_ID = 255


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC palette DAVIS annotations use, as ``Image.putpalette`` takes it (768 ints: index 1 =
    dark red, 2 = green, ..., 255 = cream)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def list_stems(directory: Path, ext: str) -> dict[str, str]:
    """{stem: file name} of the non-hidden ``*<ext>`` files in ``directory``. Raises ``BadSample`` missing_frame."""
    try:
        with os.scandir(directory) as it:
            return {e.name[: -len(ext)]: e.name for e in it if e.name.endswith(ext) and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        raise BadSample("missing_frame", str(directory), "directory missing") from None


def frame_order(stems: Sequence[str]) -> list[str]:
    """``stems`` sorted by their number when all are numbers (``"5"`` before ``"10"``), else by name."""
    if all(s.isdigit() for s in stems):
        return sorted(stems, key=int)
    return sorted(stems)


def read_label(path: Path) -> np.ndarray:
    """uint8 (H, W) object ids of an indexed PNG. Raises ``BadSample`` missing_frame / corrupt_mask / bad_annotation."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise BadSample("bad_annotation", str(path),
                                f"expected an indexed (palette 'P' or grey 'L') PNG of object ids, got mode {im.mode}")
            return np.asarray(im)
    except FileNotFoundError:
        raise BadSample("missing_frame", str(path), "annotation missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("corrupt_mask", str(path), f"{type(e).__name__}: {e}") from None


def object_ids(label: np.ndarray, ignore: Sequence[int] = (0, VOID_ID)) -> np.ndarray:
    """Sorted int64 ids present in ``label`` other than background and void."""
    ids = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    return ids[~np.isin(ids, ignore)].astype(np.int64)


class VOSDataset(ClipDataset):
    """DAVIS / MOSE / YouTube-VOS clips (see the module docstring and ``clips``).

    Args:
        root: dataset root.
        image_dir, mask_dir: frame and annotation folders relative to ``root``.
        split_file: optional text file of video names to use, one per line ('#' comments); default: every video
            folder of ``mask_dir``.
        videos: optional explicit list of video names (wins over ``split_file``).
        first_frame_tries: clip windows tried until one starts on a frame with an object (SAM 2 retries likewise).
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

    def __len__(self) -> int:
        return len(self.videos)

    def annotated_frames(self, video: str) -> list[str]:
        """Ordered stems of the frames of ``video`` with both a jpg and a png."""
        jpgs = list_stems(self.image_root / video, ".jpg")
        pngs = list_stems(self.mask_root / video, ".png")
        return frame_order([s for s in jpgs if s in pngs])

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
        out_hw = resized_hw(h, w, self.image_size)
        masks = []
        for p, frame in zip(positions, frames):
            lab = label(int(p))
            if frame.shape[:2] != (h, w) or lab.shape != (h, w):
                raise BadSample("size_mismatch", str(self.mask_root / video / f"{stems[p]}.png"),
                                f"frame {frame.shape[1]}x{frame.shape[0]}, mask {lab.shape[1]}x{lab.shape[0]}, "
                                f"first frame {w}x{h}")
            small = resize_label(lab, out_hw)
            masks.append(small[None] == objects[:, None, None].astype(small.dtype))
        frame_idx = np.array([int(stems[p]) if stems[p].isdigit() else int(p) for p in positions], dtype=np.int64)
        return RawClip(frames=resize_frames(frames, self.image_size), masks=np.stack(masks).astype(np.uint8),
                       obj_ids=objects, frame_idx=frame_idx, orig_hw=(h, w), video=video,
                       path=str(self.image_root / video))
