"""Image + mask folders on disk: ``<root>/images/<stem>.{jpg,jpeg,png}`` with either

* ``<root>/masks/<stem>.png``: an instance-id PNG (palette, grey or 16-bit; 0 = background, every other value one
  object), or
* ``<root>/masks/<stem>/<k>.png``: one binary PNG per object (any non-zero pixel belongs to it).

:func:`index_mask_folder` pairs images and masks by stem (names only; nothing is decoded) and reports what is left
unpaired; :func:`read_object_masks` decodes one image's masks, raising ``BadSample`` with the file and the problem
(unreadable PNG, colour PNG, no object).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetam_train.data.formats.images import read_label_png
from edgetam_train.data.skips import BadSample

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SINGLE_CHANNEL_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class MaskFolderItem:
    """One training image: its file name under ``images/`` and its mask (``<stem>.png`` or the ``<stem>`` folder)."""

    stem: str
    image: str
    mask: str
    per_object: bool


def _names(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return [e for e in it if not e.name.startswith(".")]


def index_mask_folder(root: str | Path, image_dir: str = "images", mask_dir: str = "masks") -> list[MaskFolderItem]:
    """The image/mask pairs under ``root`` sorted by stem. Images without a mask and masks without an image are
    left out and logged (the first few by name). Raises ``FileNotFoundError`` naming a missing folder or an empty
    pairing."""
    root = Path(root)
    images_dir, masks_dir = root / image_dir, root / mask_dir
    for folder, key in ((images_dir, "image_dir"), (masks_dir, "mask_dir")):
        if not folder.is_dir():
            raise FileNotFoundError(f"mask folder: {folder} is not a directory (root {root}, {key}={folder.name!r}; "
                                    f"expected {image_dir}/<stem>.jpg and {mask_dir}/<stem>.png or {mask_dir}/<stem>/)")
    images = {}
    for e in _names(images_dir):
        stem, ext = os.path.splitext(e.name)
        if ext.lower() in IMAGE_EXTS and e.is_file():
            images.setdefault(stem, e.name)
    masks = {}
    for e in _names(masks_dir):
        if e.is_dir():
            masks[e.name] = (e.name, True)
        elif e.name.lower().endswith(".png"):
            masks.setdefault(e.name[:-4], (e.name, False))
    items = [MaskFolderItem(s, images[s], *masks[s]) for s in sorted(images) if s in masks]
    for what, names in (("images without a mask", sorted(set(images) - set(masks))),
                        ("masks without an image", sorted(set(masks) - set(images)))):
        if names:
            log.warning("%s: %d %s left out (first: %s)", root, len(names), what, ", ".join(names[:5]))
    if not items:
        raise FileNotFoundError(f"mask folder {root}: no image in {images_dir} has a mask in {masks_dir} "
                                f"({len(images)} images, {len(masks)} masks; stems must match)")
    return items


def read_png(path: Path) -> np.ndarray:
    """(H, W) integer array of a single-channel PNG. Raises ``BadSample`` corrupt_mask / bad_annotation."""
    return read_label_png(path, SINGLE_CHANNEL_MODES, "a single-channel PNG (palette, grey or 16-bit) of object ids / "
                          "a binary mask", ("corrupt_mask", "mask missing"))


def read_object_masks(masks_dir: Path, item: MaskFolderItem, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """bool (K, H, W) object masks of ``item`` and their int64 (K,) ids (instance values, or the ``<k>`` of
    ``<k>.png``), checked against the image size ``hw``. Raises ``BadSample`` size_mismatch / no_masks / ...
    (empty per-object PNGs are left out)."""
    if item.per_object:
        folder = masks_dir / item.mask
        files = sorted((e.name for e in _names(folder) if e.name.lower().endswith(".png")),
                       key=lambda n: (not n[:-4].isdigit(), int(n[:-4]) if n[:-4].isdigit() else 0, n))
        masks, ids = [], []
        for k, name in enumerate(files):
            m = read_png(folder / name)
            check_mask_size(m, hw, folder / name)
            if m.any():
                masks.append(m > 0)
                ids.append(int(name[:-4]) if name[:-4].isdigit() else k)
        if not masks:
            raise BadSample("no_masks", str(folder), "no non-empty <k>.png object mask")
        return np.stack(masks), np.asarray(ids, dtype=np.int64)
    label, ids = read_instance_label(masks_dir / item.mask, hw)
    return label[None] == ids[:, None, None], ids


def read_instance_label(path: Path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) instance-id map of ``path`` and its int64 object ids (non-zero values), checked against ``hw``."""
    label = read_png(path)
    check_mask_size(label, hw, path)
    ids = np.unique(label)
    ids = ids[ids != 0].astype(np.int64)
    if ids.size == 0:
        raise BadSample("no_masks", str(path), "the instance-id PNG is all background (0)")
    return label, ids


def check_mask_size(mask: np.ndarray, hw: tuple[int, int], path: Path) -> None:
    if mask.shape[:2] != tuple(hw):
        raise BadSample("size_mismatch", str(path), f"mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                        f"{hw[1]}x{hw[0]} (W x H)")
