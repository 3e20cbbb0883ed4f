"""The picture of ``edgetam-predict image``: its one mask and prompts drawn by :mod:`edgetam_train.drawing` (the video
overlays use :func:`edgetam_train.drawing.draw_overlay` with :func:`edgetam_train.drawing.object_colours`)."""

from __future__ import annotations

import numpy as np

from edgetam_train.drawing import MASK_COLOUR, DrawnPrompt, draw_overlay


def overlay(image: np.ndarray, mask: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None,
            box: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture of one (H, W) bool ``mask`` in :data:`MASK_COLOUR` with its clicks (positive green,
    negative red) and box, on ``image`` (H, W, 3) uint8."""
    return draw_overlay(image, np.asarray(mask, dtype=bool)[None], [MASK_COLOUR],
                        [DrawnPrompt(points, labels, box)], alpha)
