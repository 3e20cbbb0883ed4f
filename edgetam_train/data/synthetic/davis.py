"""DAVIS / MOSE / YouTube-VOS layout: ``JPEGImages/<video>/*.jpg`` + palette ``Annotations/<video>/*.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.data.synthetic.scenes import (
    item_rng,
)
from edgetam_train.data.synthetic.videos import (
    VideoScene,
    render_video,
)


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
