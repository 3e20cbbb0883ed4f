"""COCO RLE masks, validated before decoding: the one RLE decoder of training, validation and evaluation.

pycocotools fills a short or malformed RLE with uninitialised memory instead of failing, so every RLE is checked
(``check_rle``: size, alphabet, runs summing to h*w) before ``pycocotools.mask.decode`` sees it. Decoded masks are
(h, w) uint8 in Fortran order; ``transforms.resize_mask_square`` resizes them without a full-size transpose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from edgetam_train.data.skips import BadSample
from edgetam_train.data.transforms import resize_mask_square


def rle_runs(counts: str | bytes) -> np.ndarray:
    """int64 run lengths of a COCO compressed RLE string (vectorised re-implementation of ``rleFrString``).

    Each run is coded in 5-bit groups (chars '0'..'o'), bit 0x20 = more groups follow, bit 0x10 of the last group =
    negative; runs from the 4th on are stored as the difference to the run two before. Raises ``ValueError`` on
    characters outside the alphabet or a truncated last run.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts contain characters outside '0'..'o'")
    last = (c & 0x20) == 0  # the group that ends each run
    if not last[-1]:
        raise ValueError("RLE counts end inside a run")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    pos = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its run
    if pos.max() > 11:
        raise ValueError("RLE run longer than 12 groups")
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * (pos[ends] + 1))), x)
    runs = x.copy()
    for parity in (0, 1):  # runs[i] = x[i] + runs[i - 2] for i >= 3 (runs 0, 1, 2 are stored as is)
        first = 2 if parity == 0 else 1
        runs[first::2] = np.cumsum(x[first::2])
    return runs



def check_rle(segmentation: Any, h: int, w: int) -> dict:
    """Validate an SA-1B ``segmentation`` for an h x w image; returns the RLE dict for ``pycocotools.mask.decode``.

    Raises ``ValueError`` naming what is wrong (not a dict, size mismatch, counts not a string, runs that are negative
    or do not sum to h*w). pycocotools itself fills a short RLE with uninitialised memory, hence this check.
    """
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise ValueError("segmentation is not a {'size', 'counts'} dict")
    size = segmentation["size"]
    if list(size) != [h, w]:
        raise ValueError(f"segmentation size {size} != image size [{h}, {w}]")
    counts = segmentation["counts"]
    if not isinstance(counts, (str, bytes)):
        raise ValueError(f"counts must be a compressed RLE string, got {type(counts).__name__}")
    runs = rle_runs(counts)
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs sum to {int(runs.sum())} (negative runs: {bool((runs < 0).any())}), need {h * w}")
    return {"size": [h, w], "counts": counts}


def decode_rle(segmentation: Any, h: int, w: int) -> np.ndarray:
    """uint8 (h, w) 0/1 mask (Fortran order) of a compressed RLE ``{"size": [h, w], "counts": str | bytes}``,
    checked by ``check_rle`` first. Raises ``ValueError`` naming what is wrong."""
    return mask_utils.decode(check_rle(segmentation, h, w))


def decode_resized(rles: Sequence[Any], h: int, w: int, size: int, path: str | Path,
                   what: str = "annotation", none_is_empty: bool = False) -> np.ndarray:
    """uint8 (K, size, size) masks of ``rles``: each RLE is checked, decoded (one ``pycocotools.mask.decode`` call
    per mask) and immediately resized to the S×S training grid (``transforms.resize_mask_square``), so at most one
    full-resolution mask exists at a time. ``None`` entries are empty
    masks when ``none_is_empty`` (SA-V: an absent object), else malformed. Raises ``BadSample`` bad_rle naming
    ``path`` and the ``what`` index.
    """
    out = np.zeros((len(rles), size, size), dtype=np.uint8)
    for k, rle in enumerate(rles):
        if rle is None and none_is_empty:
            continue
        try:
            full = decode_rle(rle, h, w)
        except (ValueError, TypeError, KeyError) as e:
            raise BadSample("bad_rle", str(path), f"{what} {k}: {e}") from None
        out[k] = resize_mask_square(full, size)
    return out


def decode_annotations(annotations: Sequence[Any], h: int, w: int,
                       path: str | Path = "<annotations>") -> list[np.ndarray]:
    """bool (h, w) masks of SA-1B-style annotations (``{"segmentation": RLE, ...}``), each RLE checked by
    ``check_rle``. Raises ``ValueError`` naming ``path``, the annotation and what is wrong."""
    masks = []
    for k, ann in enumerate(annotations):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        try:
            masks.append(decode_rle(seg, h, w).astype(bool))
        except (ValueError, TypeError, KeyError) as e:
            ident = ann.get("id", k) if isinstance(ann, dict) else k
            raise ValueError(f"{path}: annotation {ident}: {e}") from None
    return masks
