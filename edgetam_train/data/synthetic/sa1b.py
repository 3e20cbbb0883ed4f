"""SA-1B layout: ``sa_XXXXXX.jpg`` + ``sa_XXXXXX.json`` (pycocotools RLE of each visible shape)."""

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


def sa1b_annotation(shape: Shape, ann_id: int, h: int, w: int, rng: np.random.Generator) -> dict:
    """SA-1B annotation dict for the visible part of ``shape`` (RLE counts as str, bbox [x, y, w, h])."""
    full = shape.full_mask(h, w)
    rle = mask_utils.encode(full)
    ys, xs = np.nonzero(shape.visible)
    k = int(rng.integers(len(ys)))
    point = [float(xs[k] + shape.box[0]) + 0.5, float(ys[k] + shape.box[1]) + 0.5]
    return {
        "id": ann_id,
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": int(mask_utils.area(rle)),
        "point_coords": [point],
        "predicted_iou": round(float(rng.uniform(0.8, 1.0)), 6),
        "stability_score": round(float(rng.uniform(0.9, 1.0)), 6),
        "crop_box": [0.0, 0.0, float(w), float(h)],
    }


def make_sa1b_item(
    seed: int, index: int, size: tuple[int, int], min_masks: int, max_masks: int, min_area_frac: float = 1e-4
) -> tuple[Scene, dict]:
    """Render SA-1B image ``index`` (image_id = index + 1) and its json record.

    Shapes whose visible part is smaller than ``min_area_frac`` of the image (or 16 px) are drawn but not annotated;
    the scene is re-drawn (up to 10 times) until it has at least ``min_masks`` annotations.
    Returns (scene, record) with ``record`` = {"image": {...}, "annotations": [...]}.
    """
    rng = item_rng(seed, "sa1b", index)
    w, h = image_size(size, index)
    target = int(rng.integers(min_masks, max_masks + 1))
    min_area = max(16, int(min_area_frac * h * w))
    for _attempt in range(10):
        scene = render_scene(rng, h, w, num_shapes=target + max(1, target // 2))
        kept = [s for s in scene.shapes if int(s.visible.sum()) >= min_area]
        if len(kept) >= min_masks:
            break
    else:
        raise RuntimeError(f"could not draw {min_masks} visible shapes on a {w}x{h} image; use a larger --size")
    kept = kept[:target]
    image_id = index + 1
    stem = f"sa_{image_id:06d}"
    anns = [sa1b_annotation(s, image_id * 1000 + j, h, w, rng) for j, s in enumerate(kept)]
    record = {"image": {"image_id": image_id, "width": w, "height": h, "file_name": f"{stem}.jpg"}, "annotations": anns}
    scene.shapes = kept
    return scene, record


def write_sa1b(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Write ``args.num_images`` SA-1B images (jpg + json) into ``<out_root>/sa1b/``; returns the jpg paths."""
    out = out_root / "sa1b"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.num_images):
        scene, record = make_sa1b_item(args.seed, i, args.size, args.min_masks, args.max_masks, args.min_area_frac)
        jpg = out / record["image"]["file_name"]
        Image.fromarray(scene.image).save(jpg, quality=args.jpeg_quality)
        jpg.with_suffix(".json").write_text(json.dumps(record))
        paths.append(jpg)
    return paths
