"""Input checks and the official preprocessing (so our predictors agree with the official ones on official weights).

Image predictor: RGB uint8 -> float [0, 1] -> square bilinear (antialiased) resize to S×S -> ImageNet mean/std.
Video predictor: each frame resized as uint8 with PIL to S×S (``imaging.resize_square``, bicubic: PIL's default
filter, which the official loader uses), then /255 and mean/std.

Training uses the same S×S geometry: ``imaging.resize_square`` (PIL bilinear, SAM 2 training's filter) resizes
every training image and frame; torch's antialiased bilinear here is the same filter on the float image, so a
training image and the image predictor's input differ only by the uint8 rounding (checked in the tests).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from edgetam_train.imaging import normalise, resize_square


def check_image(image: np.ndarray | Tensor | Image.Image, name: str = "image") -> np.ndarray:
    """An RGB image as (H, W, 3) uint8 numpy; raises ValueError naming what is wrong."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, torch tensor or PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(f"{name}: float values must lie in [0, 255] (uint8 range), got "
                             f"[{image.min():.3g}, {image.max():.3g}]; pass uint8 RGB")
        raise ValueError(f"{name}: expected dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name}: image too small: {image.shape[:2]}")
    return image


def image_to_input(image: np.ndarray, size: int, device: torch.device | str = "cpu") -> Tensor:
    """Image-predictor preprocessing of an (H, W, 3) uint8 image -> (1, 3, size, size)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalise(x)


def frame_to_input(frame: np.ndarray, size: int) -> Tensor:
    """Video-predictor preprocessing of an (H, W, 3) uint8 frame -> (3, size, size) (PIL uint8 resize first)."""
    resized = np.array(resize_square(frame, size, "bicubic"))  # writable copy for torch.from_numpy
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0
    return normalise(x)[0]


def scale_points(coords: Tensor, orig_hw: tuple[int, int], size: int) -> Tensor:
    """Pixel xy in the original (H, W) image -> xy in the S×S model input."""
    h, w = orig_hw
    return coords * coords.new_tensor([size / w, size / h])
