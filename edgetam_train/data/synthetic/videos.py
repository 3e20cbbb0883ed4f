"""Videos: moving, occluding textured shapes (shared by the SA-V and DAVIS writers), RLE and H.264 mp4 writing."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from edgetam_train.data.synthetic.scenes import (
    random_shape,
    textured_background,
)

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
