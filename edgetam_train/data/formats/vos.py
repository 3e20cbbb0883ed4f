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
from typing import Sequence

import numpy as np

from edgetam_train.data.formats.images import read_label_png
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


def numbering_gaps(ordered: Sequence[str]) -> list[tuple[str, str]]:
    """(before, after) pairs of consecutive numbered frame stems whose numbers differ by more than one (frames
    missing from the folder: a jpg and its png both gone); [] when the stems are not all numbers."""
    if not ordered or not all(s.isdigit() for s in ordered):
        return []
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if int(b) - int(a) > 1]


def read_label(path: Path) -> np.ndarray:
    """uint8 (H, W) object ids of an indexed PNG. Raises ``BadSample`` missing_frame / corrupt_mask / bad_annotation."""
    return read_label_png(path, ("P", "L"), "an indexed (palette 'P' or grey 'L') PNG of object ids",
                          ("missing_frame", "annotation missing"))


def object_ids(label: np.ndarray, ignore: Sequence[int] = (0, VOID_ID)) -> np.ndarray:
    """Sorted int64 ids present in ``label`` other than background and void."""
    ids = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    return ids[~np.isin(ids, ignore)].astype(np.int64)


