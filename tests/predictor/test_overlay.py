"""The ``edgetam-predict`` pictures (:mod:`edgetam_train.predictor.overlay` on :mod:`edgetam_train.drawing`, drawn by
torchvision): tint, outline, box and clicks land on the expected pixels with the documented colours; a video object's
clicks are drawn in the object's colour, positive filled, negative hollow."""

from __future__ import annotations

import numpy as np
import pytest

from edgetam_train.drawing import (
    BOX_COLOUR,
    HALO,
    MASK_COLOUR,
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    DrawnPrompt,
    draw_overlay,
    object_colours,
)
from edgetam_train.predictor.overlay import overlay


def test_mask_tint_outline_box_and_clicks():
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    pic = overlay(image, mask, np.array([[35.0, 20.0], [70.0, 50.0]]), np.array([1, 0]), np.array([2, 40, 60, 55.0]))
    assert pic.shape == image.shape and pic.dtype == np.uint8
    blend = np.round(0.5 * 100 + 0.5 * np.array(MASK_COLOUR)).astype(np.uint8)
    assert np.abs(pic[15, 25].astype(int) - blend).max() <= 1  # inside: half image, half colour (truncated)
    assert np.array_equal(pic[10, 30], MASK_COLOUR) and np.array_equal(pic[29, 49], MASK_COLOUR)  # outline, 1 px
    assert np.array_equal(pic[5, 5], image[5, 5])  # untouched outside
    assert np.array_equal(pic[40, 10], BOX_COLOUR) and np.array_equal(pic[48, 2], BOX_COLOUR)  # box edges
    assert np.array_equal(pic[41, 10], HALO)  # the box's black band, inside the line
    assert np.array_equal(pic[20, 35], POSITIVE_COLOUR) and np.array_equal(pic[50, 70], NEGATIVE_COLOUR)


def test_several_objects_later_on_top_and_no_mask():
    image = np.zeros((20, 20, 3), np.uint8)
    a, b = np.zeros((2, 20, 20), bool)
    a[2:12, 2:12] = True
    b[6:16, 6:16] = True
    colours = object_colours(2)
    assert colours[0] == MASK_COLOUR and colours[1] != MASK_COLOUR
    pic = draw_overlay(image, np.stack([a, b]), colours, alpha=1.0)
    assert np.array_equal(pic[8, 8], colours[1]) and np.array_equal(pic[3, 3], colours[0])
    assert np.array_equal(draw_overlay(image, np.zeros((0, 20, 20), bool), [], [DrawnPrompt()]), image)
    with pytest.raises(ValueError, match="2 masks but 1 colours"):
        draw_overlay(image, np.stack([a, b]), colours[:1])


def test_object_clicks_take_the_object_colour_positive_filled_negative_hollow():
    image = np.full((60, 80, 3), 128, np.uint8)
    first, second = object_colours(2)
    prompts = [DrawnPrompt(np.array([[15.0, 15.0], [40.0, 15.0]]), np.array([1, 0]), colour=first),
               DrawnPrompt(np.array([[15.0, 45.0]]), np.array([1]), colour=second)]
    pic = draw_overlay(image, np.zeros((0, 60, 80), bool), [], prompts)
    assert np.array_equal(pic[15, 15], first) and np.array_equal(pic[45, 15], second)  # positive: filled dots
    assert np.array_equal(pic[15, 40], HALO)  # negative: a hollow centre ...
    assert np.array_equal(pic[15, 40 - 2], first) or np.array_equal(pic[15, 40 + 2], first)  # ... in a coloured ring
    # without an object colour the clicks keep the positive / negative colours
    plain = draw_overlay(image, np.zeros((0, 60, 80), bool), [], [DrawnPrompt(prompts[0].points, prompts[0].labels)])
    assert np.array_equal(plain[15, 15], POSITIVE_COLOUR) and np.array_equal(plain[15, 40], NEGATIVE_COLOUR)
