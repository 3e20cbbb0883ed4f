"""Image + mask folders on disk: ``<root>/images/<stem>.{jpg,jpeg,png}`` with either

* ``<root>/masks/<stem>.png``: an instance-id PNG (palette, grey or 16-bit; 0 = background, every other value one
  object; an anti-aliased or soft PNG is refused unless ``mode="binary"``: :func:`read_instance_label`), or
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
MASK_MODES = ("instance", "binary")  # data.train.mode / data.val.mode: what a <stem>.png holds
RING_INTERIOR = 0.1  # a value with at most this fraction of interior pixels is a ring (an edge level)
MIN_RING_VALUES = 3  # fewer ring values are tiny objects, not anti-aliasing


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


def read_object_masks(masks_dir: Path, item: MaskFolderItem, hw: tuple[int, int], mode: str = "instance"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """bool (K, H, W) object masks of ``item`` and their int64 (K,) ids (instance values, or the ``<k>`` of
    ``<k>.png``), checked against the image size ``hw``; ``mode``: as :func:`read_instance_label`. Raises
    ``BadSample`` size_mismatch / no_masks / bad_annotation ... (empty per-object PNGs are left out)."""
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
    label, ids = read_instance_label(masks_dir / item.mask, hw, mode)
    return label[None] == ids[:, None, None], ids


def ring_only_values(label: np.ndarray) -> np.ndarray:
    """Non-zero values of ``label`` whose pixels lie (almost) only on edges: a pixel is an edge pixel when one of its
    4 neighbours holds another value. Anti-aliasing and soft masks make such values (a 1-2 px ring per grey level);
    a real object has interior pixels unless it is a few pixels wide."""
    edge = np.zeros(label.shape, dtype=bool)
    vertical, horizontal = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    values, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    interior = np.bincount(inverse.ravel(), weights=~edge.ravel(), minlength=len(values))
    ring = (interior <= RING_INTERIOR * counts) & (values != 0)
    return values[ring]


def read_instance_label(path: Path, hw: tuple[int, int], mode: str = "instance") -> tuple[np.ndarray, np.ndarray]:
    """(H, W) instance-id map of ``path`` and its int64 object ids (non-zero values), checked against ``hw``.

    ``mode`` "instance": every non-zero value is one object; a PNG with exactly two values is a binary mask (the
    higher one the object, whatever the lower is); a PNG that looks anti-aliased or soft (:func:`ring_only_values`
    for most of its values) raises ``BadSample`` bad_annotation saying what the PNG must hold, rather than training
    each edge ring as an object. ``mode`` "binary": one object (id 1), the pixels above half the PNG's maximum.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask folder mode={mode!r}: expected one of {MASK_MODES}")
    label = read_png(path)
    check_mask_size(label, hw, path)
    if mode == "binary":
        label = (label > label.max() / 2).astype(np.uint8)  # 0/1, 0/255, anti-aliased 0..255, 16-bit soft
    ids = np.unique(label)
    if ids.size == 2 and ids[0] != 0:  # two grey levels: background and object
        label = np.where(label == ids[1], ids[1], 0).astype(label.dtype)
        ids = np.unique(label)
    ids = ids[ids != 0].astype(np.int64)
    ring = ring_only_values(label) if ids.size >= MIN_RING_VALUES else ids[:0]
    if ring.size >= MIN_RING_VALUES and ring.size * 2 > ids.size:
        raise BadSample("bad_annotation", str(path), f"looks anti-aliased or soft: {ring.size} of its {ids.size} "
                        f"values (e.g. {', '.join(map(str, ring[:5].tolist()))}) occur only in thin rings at edges. An "
                        "instance-id PNG must hold 0 for background and one exact value per object (save without "
                        "smoothing, resize with nearest neighbour); for binary masks set data.train.mode=binary (and "
                        "data.val.mode=binary)")
    if ids.size == 0:
        raise BadSample("no_masks", str(path), "the instance-id PNG is all background (0)")
    return label, ids


def check_mask_size(mask: np.ndarray, hw: tuple[int, int], path: Path) -> None:
    if mask.shape[:2] != tuple(hw):
        raise BadSample("size_mismatch", str(path), f"mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                        f"{hw[1]}x{hw[0]} (W x H)")
