"""Pictures of predictions for ``edgetam-predict``: masks tinted and outlined, clicks as dots, boxes as rectangles,
all drawn by ``torchvision.utils`` (``draw_segmentation_masks``, ``draw_bounding_boxes``, ``draw_keypoints``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

MASK_COLOR = (30, 144, 255)  # RGB: the single mask of ``edgetam-predict image``
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = (0, 220, 0), (230, 0, 0), (255, 200, 0)
WHITE = (255, 255, 255)
# further objects of a video: saturated colours distinct from each other and from the prompt colours (RGB)
MORE_COLORS = ((255, 127, 14), (214, 39, 240), (23, 190, 207), (255, 240, 40), (140, 86, 75), (247, 129, 191),
               (188, 189, 34), (127, 127, 255))

Color = tuple[int, int, int]


@dataclass
class DrawnPrompt:
    """Prompts to draw on a picture (pixels of the picture).

    Attributes:
        points: (N, 2) xy clicks, or None.
        labels: (N,) 1 = positive (green), 0 = negative (red), with ``points``.
        box: (4,) x0, y0, x1, y1, or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None


def object_colors(n: int) -> list[Color]:
    """Colours of ``n`` objects: :data:`MASK_COLOR` first, then :data:`MORE_COLORS`, repeating."""
    palette = (MASK_COLOR, *MORE_COLORS)
    return [palette[i % len(palette)] for i in range(n)]


def line_width(hw: Sequence[int]) -> int:
    """Outline / box width in pixels for a picture of size (H, W): 1 px per 400 px of the longer side, at least 1."""
    return max(1, round(max(hw) / 400))


def outline(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Inner boundary bands (N, H, W) bool of ``masks`` (N, H, W) bool: mask pixels within ``width`` px of the
    background (a ``2 width + 1`` square erosion, the image border counting as background)."""
    m = masks[:, None].float()
    eroded = -F.max_pool2d(-F.pad(m, (width,) * 4), 2 * width + 1, stride=1)  # min-pool, zero-padded
    return (m - eroded)[:, 0] > 0


def on_top(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks made disjoint, later masks winning: ``draw_segmentation_masks`` paints pixels covered by
    several masks black, so each pixel is handed to the last mask that covers it first."""
    covered_later = torch.zeros_like(masks[0])
    out = torch.empty_like(masks)
    for i in range(len(masks) - 1, -1, -1):
        out[i] = masks[i] & ~covered_later
        covered_later |= masks[i]
    return out


def draw_overlay(image: np.ndarray, masks: np.ndarray, colors: Sequence[Color],
                 prompts: Sequence[DrawnPrompt] = (), alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture: each of ``masks`` (N, H, W) bool tinted with its colour (``alpha``) and outlined,
    later masks on top, then the prompts: boxes as rectangles, clicks as dots with a white ring.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool (N may be 0).
        colors: N RGB colours.
        prompts: drawn in order over the masks.
    """
    if len(colors) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(colors)} colours")
    pic = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
    width = line_width(image.shape[:2])
    if len(masks):
        m = torch.from_numpy(np.asarray(masks, dtype=bool))
        cols = [tuple(int(v) for v in c) for c in colors]
        pic = draw_segmentation_masks(pic, on_top(m), alpha=alpha, colors=cols)
        pic = draw_segmentation_masks(pic, on_top(outline(m, width)), alpha=1.0, colors=cols)
    radius = max(3, 3 * width)
    for p in prompts:
        if p.box is not None:
            box = torch.as_tensor(np.asarray(p.box, dtype=np.float32)).round().reshape(1, 4)
            pic = draw_bounding_boxes(pic, box, colors=BOX_COLOR, width=width)
        if p.points is not None:
            pts = torch.as_tensor(np.asarray(p.points, dtype=np.float32)).round()
            labels = np.asarray(p.labels).reshape(-1)
            for label, color in ((1, POSITIVE_COLOR), (0, NEGATIVE_COLOR)):
                sel = pts[torch.from_numpy(labels == label)]
                if len(sel):
                    ring = max(1, width // 2)
                    pic = draw_keypoints(pic, sel[None], colors=WHITE, radius=radius + ring)
                    pic = draw_keypoints(pic, sel[None], colors=color, radius=radius)
    return np.ascontiguousarray(pic.permute(1, 2, 0).numpy())


def overlay(image: np.ndarray, mask: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None,
            box: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture of one (H, W) bool ``mask`` in :data:`MASK_COLOR` with its clicks and box."""
    return draw_overlay(image, np.asarray(mask, dtype=bool)[None], [MASK_COLOR],
                        [DrawnPrompt(points, labels, box)], alpha)
