"""Drawing masks and prompts on pictures: one palette, one outline, one way to draw clicks and boxes.

Used by the training pictures (:mod:`edgetam_train.callbacks.mask_pictures`) and by ``edgetam-predict``
(:mod:`edgetam_train.predictor.overlay`, :mod:`edgetam_train.predictor.cli`). Everything is drawn by
``torchvision.utils`` (``draw_segmentation_masks``, ``draw_bounding_boxes``, ``draw_keypoints``) on (3, H, W) uint8
tensors; :func:`draw_overlay` is the same for (H, W, 3) uint8 numpy pictures.

- Masks: tinted with their colour (``alpha``) and outlined by :func:`outline` (the mask pixels within ``width`` of
  the background); with ``halo`` the outline sits on a one-pixel black band so it shows on light and dark frames.
  Several masks are made disjoint first, later ones on top (:func:`on_top`).
- Clicks (:func:`draw_prompt`): dots with a white ring. Without an object colour, positive clicks are
  :data:`POSITIVE_COLOUR` and negative ones :data:`NEGATIVE_COLOUR` (filled dots); with one (a video object), both are
  in the object's colour, positive filled, negative hollow (a ring around a black centre).
- Boxes: rectangles in :data:`BOX_COLOUR` (or the object's colour) over a black band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

Colour = tuple[int, int, int]

# the palette (RGB)
MASK_COLOUR: Colour = (30, 144, 255)       # the single mask of ``edgetam-predict image``, the first video object
# further objects of a video: saturated colours distinct from each other and from the click colours
MORE_COLOURS: tuple[Colour, ...] = ((255, 127, 14), (214, 39, 240), (23, 190, 207), (255, 240, 40), (140, 86, 75),
                                    (247, 129, 191), (188, 189, 34), (127, 127, 255))
GT_COLOUR: Colour = (255, 190, 0)          # training pictures: ground truth amber
STUDENT_COLOUR: Colour = (255, 0, 220)     # student magenta
TEACHER_COLOUR: Colour = (0, 200, 255)     # teacher cyan
POSITIVE_COLOUR: Colour = (0, 230, 0)
NEGATIVE_COLOUR: Colour = (255, 40, 40)
BOX_COLOUR: Colour = (255, 255, 255)
HALO: Colour = (0, 0, 0)                   # bands under outlines and boxes, click centres of hollow rings
RING: Colour = (255, 255, 255)             # the ring around every click


@dataclass
class DrawnPrompt:
    """Prompts to draw on a picture (pixels of the picture).

    Attributes:
        points: (P, 2) xy clicks, or None.
        labels: (P,) with ``points``: 1 positive, 0 negative; 2 and 3 (box corners) and -1 (none) are not drawn.
        box: (4,) x0, y0, x1, y1, or None.
        colour: the object's colour (video), or None: positive / negative click colours and the box colour.
    """

    points: np.ndarray | torch.Tensor | None = None
    labels: np.ndarray | torch.Tensor | None = None
    box: np.ndarray | torch.Tensor | None = None
    colour: Colour | None = None


def object_colours(n: int) -> list[Colour]:
    """Colours of ``n`` objects: :data:`MASK_COLOUR` first, then :data:`MORE_COLOURS`, repeating."""
    palette = (MASK_COLOUR, *MORE_COLOURS)
    return [palette[i % len(palette)] for i in range(n)]


def line_width(hw: Sequence[int]) -> int:
    """Outline / box width in pixels for a picture of size (H, W): 1 px per 400 px of the longer side, at least 1."""
    return max(1, round(max(hw) / 400))


def outline(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Inner boundary bands (N, H, W) bool of ``masks`` (N, H, W) bool: mask pixels within ``width`` px of the
    background (a ``2 width + 1`` square erosion, the picture border counting as background)."""
    m = masks[:, None].float()
    eroded = -F.max_pool2d(-F.pad(m, (width,) * 4), 2 * width + 1, stride=1)  # min-pool, zero-padded
    return (m - eroded)[:, 0] > 0


def _dilate(masks: torch.Tensor, r: int) -> torch.Tensor:
    """(N, H, W) bool grown by ``r`` px (square)."""
    return F.max_pool2d(masks[:, None].float(), 2 * r + 1, stride=1, padding=r)[:, 0] > 0


def on_top(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks made disjoint, later masks winning: ``draw_segmentation_masks`` paints pixels covered by
    several masks black, so each pixel is handed to the last mask that covers it first."""
    covered_later = torch.zeros_like(masks[0])
    out = torch.empty_like(masks)
    for i in range(len(masks) - 1, -1, -1):
        out[i] = masks[i] & ~covered_later
        covered_later |= masks[i]
    return out


def draw_masks(pic: torch.Tensor, masks: torch.Tensor, colours: Sequence[Colour], alpha: float = 0.5,
               width: int = 1, halo: bool = False) -> torch.Tensor:
    """``pic`` (3, H, W) uint8 with ``masks`` (N, H, W) bool tinted (``alpha``; 0: outline only) and outlined
    (``width`` px, over a black band with ``halo``) in their ``colours`` (N RGB), later masks on top."""
    if len(colours) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(colours)} colours")
    if not len(masks) or not masks.any():
        return pic
    masks = masks.bool()
    cols = [tuple(int(v) for v in c) for c in colours]
    if alpha > 0:
        pic = draw_segmentation_masks(pic, on_top(masks), alpha=alpha, colors=cols)
    edges = outline(masks, width)
    if halo:
        band = _dilate(edges, 1).any(dim=0, keepdim=True)
        pic = draw_segmentation_masks(pic, band, alpha=1.0, colors=[HALO])
    return draw_segmentation_masks(pic, on_top(edges), alpha=1.0, colors=cols)


def draw_prompt(pic: torch.Tensor, prompt: DrawnPrompt, width: int = 1) -> torch.Tensor:
    """``pic`` (3, H, W) uint8 with the prompt's box and clicks (module docstring); ``width``: the line width
    (:func:`line_width`), which sets the click radius (``max(3, 3 width)``) too."""
    if prompt.box is not None:
        box = torch.as_tensor(np.asarray(prompt.box, dtype=np.float32)).round().reshape(1, 4)
        pic = draw_bounding_boxes(pic, box, colors=HALO, width=width + 2)
        pic = draw_bounding_boxes(pic, box, colors=prompt.colour or BOX_COLOUR, width=width)
    if prompt.points is None or prompt.labels is None:
        return pic
    pts = torch.as_tensor(np.asarray(prompt.points, dtype=np.float32)).reshape(-1, 2).round()
    labels = torch.as_tensor(np.asarray(prompt.labels)).reshape(-1).long()
    radius, ring = max(3, 3 * width), max(1, width // 2)
    for label in (1, 0):
        sel = pts[labels == label]
        if not len(sel):
            continue
        colour = prompt.colour or (POSITIVE_COLOUR if label == 1 else NEGATIVE_COLOUR)
        pic = draw_keypoints(pic, sel[None], colors=RING, radius=radius + ring)
        pic = draw_keypoints(pic, sel[None], colors=colour, radius=radius)
        if label == 0 and prompt.colour is not None:  # one colour for both: a negative click is a hollow ring
            pic = draw_keypoints(pic, sel[None], colors=HALO, radius=max(1, radius // 2))
    return pic


def draw_overlay(image: np.ndarray, masks: np.ndarray, colours: Sequence[Colour],
                 prompts: Sequence[DrawnPrompt] = (), alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture: each of ``masks`` (N, H, W) bool tinted with its colour (``alpha``) and outlined,
    later masks on top, then the prompts in order, all at :func:`line_width` of the picture.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool (N may be 0).
        colours: N RGB colours.
        prompts: drawn in order over the masks.
    """
    pic = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
    width = line_width(image.shape[:2])
    pic = draw_masks(pic, torch.from_numpy(np.asarray(masks, dtype=bool)).reshape(-1, *image.shape[:2]), colours,
                     alpha, width)
    for p in prompts:
        pic = draw_prompt(pic, p, width)
    return np.ascontiguousarray(pic.permute(1, 2, 0).numpy())
