"""Still scenes: textured backgrounds with coloured, textured, partly occluding shapes; seeds and sizes."""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

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
