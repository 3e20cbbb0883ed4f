"""The image constants and conversions every layer shares: ImageNet mean/std, (de)normalisation, the square resize.

Only numpy, torch and PIL (no albumentations / OpenCV), so inference code and exports import it without the training
data stack. Geometry (SAM 2 training's ``RandomResizeAPI(square=True)`` and both official predictors): every image
and frame is stretched to S×S, no padding, no crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def normalise(x: Tensor, max_value: float = 1.0) -> Tensor:
    """(..., 3, H, W) float RGB in [0, ``max_value``] -> ImageNet-normalised (a new tensor).

    ``max_value=255`` normalises uint8-range values without a division by 255 first (the training loaders' path).
    """
    shape = (3, 1, 1)
    mean = x.new_tensor(IMAGENET_MEAN).view(shape) * max_value
    std = x.new_tensor(IMAGENET_STD).view(shape) * max_value
    return (x - mean) / std


def denormalise(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(3, H, W) normalised float tensor -> (3, H, W) uint8 RGB on the CPU (values clamped to 0..255)."""
    x = image.detach().float().cpu()
    x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def resize_square(image: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """uint8 (H, W, 3) or (H, W) -> uint8 (size, size[, 3]) with PIL: the frame is stretched to a square.

    ``bilinear`` (antialiased when shrinking, PIL always is) is SAM 2 training's resize (torchvision ``F.resize`` of a
    PIL image) and the filter of our image predictor (torch's antialiased bilinear, which matches PIL's); ``bicubic``
    is the official video predictor's ``Image.resize((S, S))``. Both training stages use ``bilinear``.
    """
    if resample not in _PIL_FILTERS:
        raise ValueError(f"resample={resample!r}: expected one of {sorted(_PIL_FILTERS)}")
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), _PIL_FILTERS[resample]))
