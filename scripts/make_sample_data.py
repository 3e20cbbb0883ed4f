#!/usr/bin/env python
"""Write small synthetic datasets in the formats users already have (quick start, tests, benchmarks).

Every format has one writer function ``write_<format>(out_root, args) -> list[Path]`` registered in ``WRITERS``;
``main(argv)`` runs the selected writers. Each writer puts its files under ``<out>/<format>/``:

- ``sa1b``: ``sa_XXXXXX.jpg`` + ``sa_XXXXXX.json`` in the SA-1B layout
  (``{"image": {...}, "annotations": [{"segmentation": {"size": [h, w], "counts": str}, ...}]}``, pycocotools RLE).
- ``sav``: SA-V videos ``sav_000/sav_XXXXXX.mp4`` (H.264, 24 fps) + ``sav_XXXXXX_manual.json`` / ``_auto.json``
  (official SA-V schema: ``masklet`` = per annotated frame, every 4th, the per-object RLEs) and the annotated frames
  extracted to ``JPEGImages_24fps/<video>/<frame:05d>.jpg``.
- ``davis``: ``JPEGImages/<video>/<frame:05d>.jpg`` + ``Annotations/<video>/<frame:05d>.png`` (palette PNG, index =
  object id, 255 = a void band around object 1).

- ``coco``: COCO instances, ``coco/{train,val}/*.jpg`` + ``coco/instances_{train,val}.json`` (polygons, compressed
  and uncompressed RLEs, one ``iscrowd`` region per image); fine-tuning input (not written by default).
- ``mask_folder``: ``mask_folder/{train,val}/images/<stem>.jpg`` + ``masks/<stem>.png`` (instance ids) or
  ``masks/<stem>/<k>.png`` (one binary PNG per object); fine-tuning input (not written by default).

The output is deterministic: item ``i`` of format ``f`` depends only on (``--seed``, ``f``, ``i``), so asking for
more items keeps the first ones unchanged. Scenes are textured backgrounds (gradient + low-frequency noise + pixel
noise) with coloured, textured ellipses, polygons and rectangles, some overlapping; each annotation is the *visible*
part of one shape (later shapes occlude earlier ones), as SA-1B masks describe what is seen. In the videos the
shapes move and occlude each other; object 0 leaves the frame and re-enters, and SA-V's object 3 appears late
(empty masks until then).

Usage::

    python scripts/make_sample_data.py --out data/sample            # 8 SA-1B images, 3 SA-V videos, 2 DAVIS videos
    python scripts/make_sample_data.py --out data/sample --formats sa1b,sav
    python scripts/make_sample_data.py --out data/sample --formats coco,mask_folder   # fine-tuning inputs
    python scripts/make_sample_data.py --out /tmp/big --formats sa1b --size 2250x1500 --num-images 16 \\
        --min-masks 90 --max-masks 110
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# (width, height) aspect ratios that the images cycle through; every image keeps about the requested area.
ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((4, 3), (3, 4), (16, 9), (1, 1), (3, 2), (2, 3), (9, 16))
SHAPE_KINDS: tuple[str, ...] = ("ellipse", "polygon", "rectangle")


# --------------------------------------------------------------------------------------------------------------------
# Randomness and sizes
# --------------------------------------------------------------------------------------------------------------------


def item_rng(seed: int, fmt: str, index: int) -> np.random.Generator:
    """Generator for item ``index`` of format ``fmt``: independent of how many items or formats are written."""
    return np.random.default_rng([seed, zlib.crc32(fmt.encode()), index])


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> (width 320, height 240). Raises ``argparse.ArgumentTypeError`` on bad input."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must look like 320x240 (WIDTHxHEIGHT), got {text!r}") from e
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def image_size(base_wh: tuple[int, int], index: int) -> tuple[int, int]:
    """(width, height) of image ``index``: cycles through ``ASPECT_RATIOS`` keeping about the area of ``base_wh``.

    Image 0 is exactly ``base_wh``; the others have the same area and the next aspect ratio, rounded to even sizes.
    """
    if index == 0:
        return base_wh
    area = base_wh[0] * base_wh[1]
    aw, ah = ASPECT_RATIOS[index % len(ASPECT_RATIOS)]
    w = math.sqrt(area * aw / ah)
    h = area / w
    return max(16, 2 * round(w / 2)), max(16, 2 * round(h / 2))


# --------------------------------------------------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    """One drawn shape.

    kind: "ellipse" | "polygon" | "rectangle".
    box: (x0, y0, x1, y1) half-open pixel box of ``crop`` inside the image.
    crop: bool (y1 - y0, x1 - x0), the full (unoccluded) shape inside ``box``.
    visible: bool (y1 - y0, x1 - x0), the part left visible by later shapes (filled in by ``render_scene``).
    analytic_area: the shape's area in pixels from its geometry (pi*a*b, w*h, shoelace).
    """

    kind: str
    box: tuple[int, int, int, int]
    crop: np.ndarray
    analytic_area: float
    visible: np.ndarray | None = None

    def full_mask(self, h: int, w: int, visible: bool = True) -> np.ndarray:
        """The shape (visible part by default) pasted into an uint8 (h, w) Fortran-ordered array (pycocotools)."""
        out = np.zeros((h, w), dtype=np.uint8, order="F")
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.visible if visible else self.crop
        return out


@dataclass
class Scene:
    """A rendered image: uint8 (h, w, 3) RGB ``image`` and the ``shapes`` drawn on it, back to front."""

    image: np.ndarray
    shapes: list[Shape]


def textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 (h, w, 3) in [0, 255]: a two-colour linear gradient at a random angle + low-frequency colour noise."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(angle) / w + ys * math.sin(angle) / h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    grid = rng.normal(0, 30, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.float32)
    # Bilinear upsampling of the coarse noise grid, one channel at a time (PIL "F" images are single channel).
    low = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)], -1)
    return img + low


def polygon_mask(px: np.ndarray, py: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool (h, w): pixels whose centre lies inside the polygon (px, py) (even-odd rule, vectorised over pixels)."""
    yc, xc = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    inside = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in zip(px, py, np.roll(px, -1), np.roll(py, -1)):
        if y1 == y2:
            continue
        crosses = (y1 > yc) != (y2 > yc)
        x_at = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xc < x_at)
    return inside


def random_shape(rng: np.random.Generator, h: int, w: int, scale: float, anchor: tuple[float, float] | None) -> Shape:
    """Draw one random shape whose size is about ``scale`` x the short image side, centred on ``anchor`` if given.

    Pixels belong to a shape when their centre is inside its geometry, so pixel counts are unbiased estimates of
    ``analytic_area`` (rectangles are pixel-aligned: exact). Shapes are clipped by the image border (then
    ``analytic_area`` is the area before clipping; compare areas only for shapes whose box is inside the image).
    """
    kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
    side = min(h, w)
    rx, ry = (max(3.0, float(v)) for v in rng.uniform(0.04, 0.22, size=2) * side * scale)
    if anchor is None:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    else:
        cx, cy = anchor[0] + rng.normal(0, rx), anchor[1] + rng.normal(0, ry)
    x0, y0 = max(0, int(math.floor(cx - rx - 1))), max(0, int(math.floor(cy - ry - 1)))
    x1, y1 = min(w, int(math.ceil(cx + rx + 2))), min(h, int(math.ceil(cy + ry + 2)))
    if x1 <= x0 or y1 <= y0:  # entirely outside the image: an empty crop at the border
        x0, y0, x1, y1 = 0, 0, 1, 1
    ch, cw = y1 - y0, x1 - x0
    ox, oy = cx - x0, cy - y0  # centre in crop coordinates
    if kind == "ellipse":
        yc, xc = np.mgrid[0:ch, 0:cw].astype(np.float64) + 0.5
        crop = ((xc - ox) / rx) ** 2 + ((yc - oy) / ry) ** 2 <= 1.0
        area = math.pi * rx * ry
    elif kind == "rectangle":
        left, top = round(cx - rx), round(cy - ry)
        width, height = max(1, round(2 * rx)), max(1, round(2 * ry))
        crop = np.zeros((ch, cw), dtype=bool)
        crop[max(0, top - y0) : max(0, top - y0 + height), max(0, left - x0) : max(0, left - x0 + width)] = True
        area = float(width * height)
        x0c, y0c = left, top  # the box must contain the whole rectangle for the area to be exact
        if x0c < x0 or y0c < y0 or x0c + width > x1 or y0c + height > y1:
            area = float("nan")  # clipped (by the border or the crop): no analytic comparison
    else:  # star-convex polygon with 3..8 vertices
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.5, 1.0, size=n)
        px, py = ox + rx * radii * np.cos(angles), oy + ry * radii * np.sin(angles)
        crop = polygon_mask(px, py, ch, cw)
        area = 0.5 * abs(float(np.dot(px, np.roll(py, 1)) - np.dot(py, np.roll(px, 1))))
    return Shape(kind=kind, box=(x0, y0, x1, y1), crop=crop, analytic_area=area)


def render_scene(rng: np.random.Generator, h: int, w: int, num_shapes: int, noise_std: float = 6.0) -> Scene:
    """Render ``num_shapes`` textured shapes over a textured background; fill every shape's ``visible`` mask.

    About a third of the shapes are centred near an earlier one, so the scene always has overlaps.
    Returns a ``Scene`` with an uint8 (h, w, 3) image.
    """
    img = textured_background(rng, h, w)
    scale = min(1.0, max(0.15, math.sqrt(8.0 / max(num_shapes, 1))))
    shapes: list[Shape] = []
    for i in range(num_shapes):
        anchor = None
        if shapes and i % 3 == 2:
            bx0, by0, bx1, by1 = shapes[int(rng.integers(len(shapes)))].box
            anchor = ((bx0 + bx1) / 2, (by0 + by1) / 2)
        shape = random_shape(rng, h, w, scale, anchor)
        x0, y0, x1, y1 = shape.box
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        # Texture: a colour gradient across the shape plus stripes, so shapes are not flat fills.
        ys, xs = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
        stripes = 20.0 * np.sin(xs * rng.uniform(0.05, 0.5) + ys * rng.uniform(0.05, 0.5))
        fill = colour + stripes[..., None] + rng.uniform(-40, 40, size=3).astype(np.float32) * (ys / max(y1 - y0, 1))[
            ..., None
        ]
        region = img[y0:y1, x0:x1]
        region[shape.crop] = fill[shape.crop]
        shapes.append(shape)
    covered = np.zeros((h, w), dtype=bool)
    for shape in reversed(shapes):
        x0, y0, x1, y1 = shape.box
        shape.visible = shape.crop & ~covered[y0:y1, x0:x1]
        covered[y0:y1, x0:x1] |= shape.crop
    img += rng.normal(0, noise_std, size=img.shape).astype(np.float32)
    return Scene(image=np.clip(img, 0, 255).astype(np.uint8), shapes=shapes)


# --------------------------------------------------------------------------------------------------------------------
# SA-1B
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Videos: moving, occluding textured shapes (shared by SA-V and DAVIS)
# --------------------------------------------------------------------------------------------------------------------

VIDEO_FPS = 24
SAV_ANN_EVERY = 4  # SA-V annotates every 4th frame of its 24 fps videos


@dataclass
class Sprite:
    """A textured shape that moves: ``crop`` bool (ch, cw) its pixels, ``fill`` float32 (ch, cw, 3) its colours."""

    crop: np.ndarray
    fill: np.ndarray


@dataclass
class VideoScene:
    """A rendered video: uint8 (N, h, w, 3) RGB ``frames`` and bool (N, K, h, w) ``visible`` masks of its K objects
    (later objects are drawn on top, so a mask is the part of its object that no later object covers)."""

    frames: np.ndarray
    visible: np.ndarray


def make_sprite(rng: np.random.Generator, side: float) -> Sprite:
    """A random ellipse / polygon / rectangle 0.15-0.45 x ``side`` across, with a striped colour-gradient texture."""
    canvas = int(4 * side)  # large enough that random_shape never clips the shape
    while True:
        shape = random_shape(rng, canvas, canvas, scale=0.25, anchor=(canvas / 2, canvas / 2))
        ys, xs = np.nonzero(shape.crop)
        if len(ys) and min(np.ptp(ys), np.ptp(xs)) >= 0.15 * side:
            break
    crop = shape.crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ch, cw = crop.shape
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    stripes = 25.0 * np.sin(xx * rng.uniform(0.1, 0.6) + yy * rng.uniform(0.1, 0.6))
    fill = colour + stripes[..., None] + rng.uniform(-40, 40, size=3).astype(np.float32) * (yy / max(ch, 1))[..., None]
    return Sprite(crop=crop, fill=fill)


def paste_box(cx: float, cy: float, ch: int, cw: int, h: int, w: int) -> tuple[slice, slice, slice, slice] | None:
    """(image rows, image cols, sprite rows, sprite cols) slices of a (ch, cw) sprite centred at (cx, cy), clipped to
    the (h, w) image; None when it is entirely outside."""
    x0, y0 = int(round(cx - cw / 2)), int(round(cy - ch / 2))
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(w, x0 + cw), min(h, y0 + ch)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)


def object_paths(rng: np.random.Generator, sprites: list[Sprite], h: int, w: int, num_frames: int,
                 late_object: bool) -> np.ndarray:
    """float (N, K, 2) centre (x, y) of every object on every frame.

    Object 0 swings left-right far enough to leave the frame on both sides and come back (period ~2 s); the others
    drift on slow Lissajous paths that cross each other (occlusions); with ``late_object`` the last object enters
    from the left after about a third of the video (its masks are empty before).
    """
    t = np.arange(num_frames, dtype=np.float64)
    paths = np.zeros((num_frames, len(sprites), 2))
    for k, sprite in enumerate(sprites):
        ch, cw = sprite.crop.shape
        if k == 0:  # fully outside while |sin| > 0.8
            amp = (w / 2 + cw / 2 + 1) / 0.8 * rng.choice([-1.0, 1.0])
            period = rng.uniform(1.6, 2.4) * VIDEO_FPS
            paths[:, k, 0] = w / 2 + amp * np.sin(2 * np.pi * t / period)
            paths[:, k, 1] = rng.uniform(0.3, 0.7) * h
        elif late_object and k == len(sprites) - 1:
            enter = num_frames / 3
            speed = (w / 2 + cw) / max(num_frames - enter, 1)
            paths[:, k, 0] = -cw + speed * (t - enter) + cw / 2
            paths[:, k, 1] = rng.uniform(0.3, 0.7) * h
        else:
            cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            ax, ay = rng.uniform(0.15, 0.3) * w, rng.uniform(0.1, 0.25) * h
            px, py = rng.uniform(1.5, 3.0, size=2) * VIDEO_FPS
            phx, phy = rng.uniform(0, 2 * np.pi, size=2)
            paths[:, k, 0] = cx + ax * np.sin(2 * np.pi * t / px + phx)
            paths[:, k, 1] = cy + ay * np.sin(2 * np.pi * t / py + phy)
    return paths


def render_video(rng: np.random.Generator, h: int, w: int, num_frames: int, num_objects: int,
                 late_object: bool = True, noise_std: float = 3.0) -> VideoScene:
    """Render ``num_frames`` frames of ``num_objects`` moving textured shapes over a static textured background."""
    background = textured_background(rng, h, w)
    side = min(h, w)
    sprites = [make_sprite(rng, side * rng.uniform(0.7, 1.1)) for _ in range(num_objects)]
    paths = object_paths(rng, sprites, h, w, num_frames, late_object)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    visible = np.zeros((num_frames, num_objects, h, w), dtype=bool)
    for n in range(num_frames):
        img = background.copy()
        owner = np.full((h, w), -1, dtype=np.int64)
        for k, sprite in enumerate(sprites):
            box = paste_box(*paths[n, k], *sprite.crop.shape, h, w)
            if box is None:
                continue
            iy, ix, sy, sx = box
            crop = sprite.crop[sy, sx]
            img[iy, ix][crop] = sprite.fill[sy, sx][crop]
            owner[iy, ix][crop] = k
        for k in range(num_objects):
            visible[n, k] = owner == k
        img += rng.normal(0, noise_std, size=img.shape).astype(np.float32)
        frames[n] = np.clip(img, 0, 255).astype(np.uint8)
    return VideoScene(frames=frames, visible=visible)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a bool (h, w) mask with str counts (an empty mask gives the one-run empty RLE)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_mp4(path: Path, frames: np.ndarray, fps: int = VIDEO_FPS, qp: int = 20, gop: int = VIDEO_FPS) -> None:
    """H.264 (libx264, yuv420p) mp4 of uint8 (N, h, w, 3) RGB frames, as SA-V ships; a key frame every ``gop``
    frames (so readers must seek). Constant quantiser ``qp`` and one thread: x264's CRF rate control with its SIMD
    code was measured to give different bytes from run to run on the same frames, this setting never did."""
    import av  # the video decoder dependency; only the video writers need it

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.time_base = Fraction(1, fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qp": str(qp), "g": str(gop), "preset": "veryfast"}
        stream.thread_count = 1
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i  # explicit timestamps (in 1 / fps): nothing is left for the encoder to guess
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------------------------------------------------
# SA-V
# --------------------------------------------------------------------------------------------------------------------


def sav_num_frames(index: int, annotated: int) -> int:
    """24 fps frame count of SA-V video ``index`` with ``annotated`` annotated frames (every 4th, from frame 0)."""
    return SAV_ANN_EVERY * (annotated - 1) + 1 + index % SAV_ANN_EVERY


def sav_record(video_id: str, scene: VideoScene, num_frames: int, objects: Sequence[int], kind: str,
               rng: np.random.Generator) -> dict:
    """SA-V json record (official schema) for ``objects`` of ``scene``, annotated on frames 0, 4, 8, ..."""
    h, w = scene.frames.shape[1:3]
    annotated = scene.visible[::SAV_ANN_EVERY][:, list(objects)]  # (n_ann, K, h, w)
    areas = annotated.sum((2, 3))  # (n_ann, K)
    present = areas > 0
    size_abs = [float(areas[present[:, k], k].mean()) if present[:, k].any() else 0.0 for k in range(len(objects))]
    changes = [int(np.count_nonzero(np.diff(present[np.argmax(present[:, k]):, k].astype(int))))
               for k in range(len(objects))]
    n_ann = len(annotated)
    return {
        "video_id": video_id,
        "video_duration": round(num_frames / VIDEO_FPS, 6),
        "video_frame_count": float(num_frames),
        "video_height": float(h),
        "video_width": float(w),
        "video_resolution": float(h * w),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[encode_rle(m) for m in frame] for frame in annotated],
        "masklet_id": list(range(len(objects))),
        "masklet_size_rel": [round(a / (h * w), 10) for a in size_abs],
        "masklet_size_abs": [round(a, 10) for a in size_abs],
        "masklet_size_bucket": ["small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in size_abs],
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": [float(np.argmax(present[:, k])) for k in range(len(objects))],
        "masklet_frame_count": [n_ann] * len(objects),
        "masklet_edited_frame_count": [int(rng.integers(0, n_ann)) if kind == "manual" else 0 for _ in objects],
        "masklet_type": [kind] * len(objects),
        "masklet_stability_score": [
            None if kind == "manual" else [round(float(s), 6) for s in rng.uniform(0.9, 1.0, size=n_ann)]
            for _ in objects
        ],
        "masklet_num": len(objects),
    }


def make_sav_item(seed: int, index: int, size: tuple[int, int], annotated: int) -> tuple[VideoScene, dict, dict]:
    """Render SA-V video ``index`` (``sav_<index + 1:06d>``): returns (scene, manual record, auto record).

    4 objects; object 0 leaves the frame and re-enters, object 3 appears after a third of the video. The manual
    json annotates all of them; the auto json the objects visible on frame 0.
    """
    rng = item_rng(seed, "sav", index)
    w, h = size
    num_frames = sav_num_frames(index, annotated)
    scene = render_video(rng, h, w, num_frames, num_objects=4, late_object=True)
    video_id = f"sav_{index + 1:06d}"
    manual = sav_record(video_id, scene, num_frames, range(4), "manual", rng)
    first = [k for k in range(4) if scene.visible[0, k].any()]
    auto = sav_record(video_id, scene, num_frames, first, "auto", rng)
    return scene, manual, auto


def write_sav(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Write ``args.num_videos`` SA-V videos into ``<out_root>/sav/``: ``sav_000/sav_XXXXXX.mp4`` + ``_manual.json`` +
    ``_auto.json``, and their annotated frames extracted to ``JPEGImages_24fps/<video>/<frame:05d>.jpg`` the way
    ``scripts/extract_sav_frames.py`` does. Returns the mp4 paths."""
    from edgetam_train.data.formats.sav import FRAMES_DIRNAME, extract_frames

    out = out_root / "sav"
    (out / "sav_000").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.num_videos):
        annotated = args.video_frames + 4 * (i % 3)
        scene, manual, auto = make_sav_item(args.seed, i, args.video_size, annotated)
        mp4 = out / "sav_000" / f"{manual['video_id']}.mp4"
        write_mp4(mp4, scene.frames)
        mp4.with_name(f"{manual['video_id']}_manual.json").write_text(json.dumps(manual))
        mp4.with_name(f"{manual['video_id']}_auto.json").write_text(json.dumps(auto))
        extract_frames(mp4, out / FRAMES_DIRNAME / manual["video_id"], every=SAV_ANN_EVERY, resume=False)
        paths.append(mp4)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# DAVIS / MOSE / YouTube-VOS
# --------------------------------------------------------------------------------------------------------------------


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool (..., h, w) dilation of the last two axes by a (2 radius + 1)-pixel square (separable shifts)."""
    out = mask.copy()
    for axis in (-2, -1):
        grown = out.copy()
        for d in range(1, radius + 1):
            for shift in (d, -d):
                moved = np.roll(out, shift, axis=axis)
                edge = [slice(None)] * out.ndim  # np.roll wraps around: clear what came from the other side
                edge[axis] = slice(0, d) if shift > 0 else slice(-d, None)
                moved[tuple(edge)] = False
                grown |= moved
        out = grown
    return out


def davis_labels(scene: VideoScene, void_width: int = 2) -> np.ndarray:
    """uint8 (N, h, w) label maps: object k -> id k + 1, background 0, and a ``void_width``-pixel band of 255 (void)
    on the background around object id 1 (DAVIS marks uncertain borders that way)."""
    n, k, h, w = scene.visible.shape
    labels = np.zeros((n, h, w), dtype=np.uint8)
    for obj in range(k):
        labels[scene.visible[:, obj]] = obj + 1
    labels[dilate(scene.visible[:, 0], void_width) & (labels == 0)] = 255
    return labels


def make_davis_item(seed: int, index: int, size: tuple[int, int], num_frames: int) -> tuple[VideoScene, np.ndarray]:
    """Render DAVIS-format video ``index``: 3 objects (object 0 = id 1 leaves the frame and re-enters); returns
    (scene, uint8 (N, h, w) label maps as written to the PNGs)."""
    rng = item_rng(seed, "davis", index)
    w, h = size
    scene = render_video(rng, h, w, num_frames, num_objects=3, late_object=False)
    return scene, davis_labels(scene)


def write_davis(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Write ``args.num_davis_videos`` videos into ``<out_root>/davis/``: ``JPEGImages/<video>/<frame:05d>.jpg`` and
    ``Annotations/<video>/<frame:05d>.png`` (palette PNG, VOC palette); returns the video frame directories."""
    from edgetam_train.data.formats.vos import voc_palette

    out = out_root / "davis"
    palette = voc_palette()
    paths = []
    for i in range(args.num_davis_videos):
        name = f"video_{i:03d}"
        scene, labels = make_davis_item(args.seed, i, args.video_size, args.video_frames + 4 + 2 * (i % 3))
        jpg_dir, png_dir = out / "JPEGImages" / name, out / "Annotations" / name
        jpg_dir.mkdir(parents=True, exist_ok=True)
        png_dir.mkdir(parents=True, exist_ok=True)
        for f, (frame, label) in enumerate(zip(scene.frames, labels)):
            Image.fromarray(frame).save(jpg_dir / f"{f:05d}.jpg", quality=args.jpeg_quality)
            png = Image.fromarray(label)  # mode L; putpalette makes it a palette (P) image of the same indices
            png.putpalette(palette)
            png.save(png_dir / f"{f:05d}.png")
        paths.append(jpg_dir)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning inputs: COCO instances json, image + mask folders
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------

# Format name -> writer(out_root, parsed args) -> written paths.
WRITERS: dict[str, Callable[[Path, argparse.Namespace], list[Path]]] = {
    "sa1b": write_sa1b,
    "sav": write_sav,
    "davis": write_davis,
    "coco": write_coco,
    "mask_folder": write_mask_folder,
}


# written when --formats is not given (the fine-tuning inputs coco and mask_folder only on request)
DEFAULT_FORMATS: tuple[str, ...] = ("sa1b", "sav", "davis")


def parse_formats(text: str) -> list[str]:
    """``"sa1b,sav"`` -> ["sa1b", "sav"]; raises ``argparse.ArgumentTypeError`` naming an unknown format."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown}; choose from {list(WRITERS)}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    """Command-line options shared by all writers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/sample"), help="output root (default data/sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", type=parse_formats, default=[list(DEFAULT_FORMATS)],
                   help=f"formats to write, comma- or space-separated, among {','.join(WRITERS)} "
                   f"(default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--num-images", type=int, default=8, help="SA-1B images; COCO / mask-folder training images "
                   "(default 8)")
    p.add_argument("--num-val-images", type=int, default=2, help="COCO / mask-folder validation images (default 2)")
    p.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT of image 0 (default 320x240); "
                   "the others keep the area and vary the aspect ratio")
    p.add_argument("--min-masks", type=int, default=3, help="fewest annotations per image (default 3)")
    p.add_argument("--max-masks", type=int, default=12, help="most annotations per image (default 12)")
    p.add_argument("--min-area-frac", type=float, default=1e-4, help="SA-1B: shapes whose visible part covers less "
                   "of the image are drawn but not annotated (default 1e-4; at least 16 px)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--num-videos", type=int, default=3, help="SA-V videos (default 3)")
    p.add_argument("--num-davis-videos", type=int, default=2, help="DAVIS-format videos (default 2)")
    p.add_argument("--video-size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT of the videos "
                   "(default 320x240)")
    p.add_argument("--video-frames", type=int, default=16, help="annotated frames of SA-V video 0 (default 16; "
                   "videos cycle through +0, +4, +8); DAVIS videos get 4-8 more (all annotated)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the selected writers; returns {format: written paths}."""
    args = build_parser().parse_args(argv)
    args.formats = list(dict.fromkeys(f for group in args.formats for f in group))  # flatten, keep order, no repeats
    if not 1 <= args.min_masks <= args.max_masks:
        raise SystemExit(f"need 1 <= --min-masks <= --max-masks, got {args.min_masks} and {args.max_masks}")
    if args.video_frames < 2:
        raise SystemExit(f"need --video-frames >= 2, got {args.video_frames}")
    written = {}
    for fmt in args.formats:
        t0 = time.perf_counter()
        written[fmt] = WRITERS[fmt](args.out, args)
        print(f"{fmt}: wrote {len(written[fmt])} items to {args.out / fmt} in {time.perf_counter() - t0:.1f}s")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
