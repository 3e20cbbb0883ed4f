"""The ``edgetam-predict`` pictures (:mod:`edgetam_train.predictor.overlay`, drawn by torchvision): tint, outline,
box and clicks land on the expected pixels with the documented colours."""

from __future__ import annotations

import numpy as np
import pytest

from edgetam_train.predictor.overlay import (
    BOX_COLOR,
    MASK_COLOR,
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    DrawnPrompt,
    draw_overlay,
    object_colors,
    overlay,
)


def test_mask_tint_outline_box_and_clicks():
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    pic = overlay(image, mask, np.array([[35.0, 20.0], [70.0, 50.0]]), np.array([1, 0]), np.array([2, 40, 60, 55.0]))
    assert pic.shape == image.shape and pic.dtype == np.uint8
    blend = np.round(0.5 * 100 + 0.5 * np.array(MASK_COLOR)).astype(np.uint8)
    assert np.abs(pic[15, 25].astype(int) - blend).max() <= 1  # inside: half image, half colour (truncated)
    assert np.array_equal(pic[10, 30], MASK_COLOR) and np.array_equal(pic[29, 49], MASK_COLOR)  # outline, 1 px
    assert np.array_equal(pic[5, 5], image[5, 5])  # untouched outside
    assert np.array_equal(pic[40, 10], BOX_COLOR) and np.array_equal(pic[48, 2], BOX_COLOR)  # box edges
    assert np.array_equal(pic[20, 35], POSITIVE_COLOR) and np.array_equal(pic[50, 70], NEGATIVE_COLOR)


def test_several_objects_later_on_top_and_no_mask():
    image = np.zeros((20, 20, 3), np.uint8)
    a, b = np.zeros((2, 20, 20), bool)
    a[2:12, 2:12] = True
    b[6:16, 6:16] = True
    colors = object_colors(2)
    assert colors[0] == MASK_COLOR and colors[1] != MASK_COLOR
    pic = draw_overlay(image, np.stack([a, b]), colors, alpha=1.0)
    assert np.array_equal(pic[8, 8], colors[1]) and np.array_equal(pic[3, 3], colors[0])
    assert np.array_equal(draw_overlay(image, np.zeros((0, 20, 20), bool), [], [DrawnPrompt()]), image)
    with pytest.raises(ValueError, match="2 masks but 1 colours"):
        draw_overlay(image, np.stack([a, b]), colors[:1])
