"""Per-frame mask PNGs that ``edgetam-predict video`` and ``stream`` write: one palette PNG of object ids per frame
(the DAVIS layout ``edgetam-eval jf --protocol davis`` reads), each written under a temporary name and renamed, so an
interrupted run leaves whole files only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def label_png(masks: np.ndarray, obj_ids: Sequence[int], palette: list[int]) -> Image.Image:
    """Palette ("P") image of bool ``masks`` (N, H, W): pixel value = object id (later objects on top), 0 elsewhere."""
    label = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, obj_id in zip(masks, obj_ids):
        label[mask] = obj_id
    im = Image.fromarray(label)  # uint8 (H, W): mode L; putpalette makes it P with the same indices
    im.putpalette(palette)
    return im


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` to ``path`` as a PNG under a temporary name, then rename it: an interrupted run leaves whole
    files only."""
    part = path.with_name(path.name + ".part")
    try:
        image.save(part, format="PNG")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
