"""Fine-tuning inputs: COCO instances json (polygons, RLEs, crowd regions) and image + mask folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from edgetam_train.data.synthetic.scenes import (
    Scene,
    Shape,
    image_size,
    item_rng,
    render_scene,
)


def instance_scene(seed: int, fmt: str, index: int, size: tuple[int, int], min_masks: int, max_masks: int
                   ) -> tuple[Scene, list[Shape]]:
    """A scene for ``fmt`` item ``index`` and its annotated shapes (visible part >= 16 px, at least ``min_masks``)."""
    rng = item_rng(seed, fmt, index)
    w, h = image_size(size, index)
    target = int(rng.integers(min_masks, max_masks + 1))
    for _attempt in range(10):
        scene = render_scene(rng, h, w, num_shapes=target + max(1, target // 2))
        kept = [s for s in scene.shapes if int(s.visible.sum()) >= 16]
        if len(kept) >= min_masks:
            return scene, kept[:target]
    raise RuntimeError(f"could not draw {min_masks} visible shapes on a {w}x{h} image; use a larger --size")


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (outer contours, >= 3 points each, pixel-corner coordinates) of a bool (h, w) mask."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}`` (column-major runs, starting with 0s)."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def coco_split(out: Path, split: str, args: argparse.Namespace, first: int, count: int) -> Path:
    """Write ``count`` images to ``<out>/<split>/`` and ``<out>/instances_<split>.json``; returns the json path.

    Annotation j of an image is a polygon (j % 3 == 0), a compressed RLE (1) or an uncompressed RLE (2); every image
    also has one ``iscrowd=1`` annotation (uncompressed RLE of two shapes together), which training skips by default.
    """
    (out / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(first, first + count):
        scene, shapes = instance_scene(args.seed, "coco", i, args.size, args.min_masks, args.max_masks)
        h, w = scene.image.shape[:2]
        name = f"{i:06d}.jpg"
        Image.fromarray(scene.image).save(out / split / name, quality=args.jpeg_quality)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for j, shape in enumerate(shapes):
            mask = shape.full_mask(h, w).astype(bool)
            if j % 3 == 0 and mask_polygons(mask):
                seg: object = mask_polygons(mask)
            elif j % 3 == 1:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            else:
                seg = uncompressed_rle(mask)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            anns.append({"id": (i + 1) * 1000 + j, "image_id": i + 1, "category_id": 1 + j % 2, "iscrowd": 0,
                         "segmentation": seg, "area": int(mask_utils.area(rle)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        crowd = shapes[0].full_mask(h, w).astype(bool) | shapes[-1].full_mask(h, w).astype(bool)
        anns.append({"id": (i + 1) * 1000 + 999, "image_id": i + 1, "category_id": 1, "iscrowd": 1,
                     "segmentation": uncompressed_rle(crowd), "area": int(crowd.sum()), "bbox": [0.0, 0.0, w, h]})
    path = out / f"instances_{split}.json"
    categories = [{"id": 1, "name": "shape"}, {"id": 2, "name": "other shape"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def write_coco(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """COCO instances: ``<out_root>/coco/{train,val}/*.jpg`` + ``instances_{train,val}.json`` (``--num-images``
    training images, ``--num-val-images`` validation images); returns the two json paths."""
    out = out_root / "coco"
    return [coco_split(out, "train", args, 0, args.num_images),
            coco_split(out, "val", args, args.num_images, args.num_val_images)]


def mask_folder_split(out: Path, args: argparse.Namespace, first: int, count: int) -> Path:
    """``<out>/images/<stem>.jpg`` with ``<out>/masks/<stem>.png`` (instance ids, even items) or
    ``<out>/masks/<stem>/<k>.png`` (binary, one per object, odd items); returns ``out``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        scene, shapes = instance_scene(args.seed, "mask_folder", i, args.size, args.min_masks, args.max_masks)
        h, w = scene.image.shape[:2]
        stem = f"img_{i:04d}"
        Image.fromarray(scene.image).save(out / "images" / f"{stem}.jpg", quality=args.jpeg_quality)
        if i % 2 == 0:
            label = np.zeros((h, w), dtype=np.uint8)
            for k, shape in enumerate(shapes, start=1):
                label[shape.full_mask(h, w).astype(bool)] = k
            Image.fromarray(label).save(out / "masks" / f"{stem}.png")
        else:
            (out / "masks" / stem).mkdir(exist_ok=True)
            for k, shape in enumerate(shapes, start=1):
                Image.fromarray(shape.full_mask(h, w) * 255).save(out / "masks" / stem / f"{k}.png")
    return out


def write_mask_folder(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Image + mask folders ``<out_root>/mask_folder/{train,val}``; returns the two roots."""
    out = out_root / "mask_folder"
    return [mask_folder_split(out / "train", args, 0, args.num_images),
            mask_folder_split(out / "val", args, args.num_images, args.num_val_images)]
