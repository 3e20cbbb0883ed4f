"""Image files: ``read_image`` decodes a jpg (or any PIL-readable image) to uint8 RGB, refusing truncated files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edgetam_train.data.skips import BadSample

_CV2_RGB_FLAGS = (
    cv2.IMREAD_COLOR_RGB if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.IMREAD_COLOR
) | cv2.IMREAD_IGNORE_ORIENTATION


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of a jpg, in stored orientation (EXIF ignored, as the json sizes and RLEs are).

    Decodes with OpenCV (faster than PIL here), but only when the file ends with the JPEG end-of-image marker:
    OpenCV fills a truncated file with grey without an error, so other files go through PIL, which raises on
    truncation. Raises ``BadSample`` missing_image / corrupt_image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise BadSample("missing_image", str(path)) from None
    except OSError as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None
    if data.size >= 4 and data[-2] == 0xFF and data[-1] == 0xD9:
        image = cv2.imdecode(data, _CV2_RGB_FLAGS)
        if image is not None and image.ndim == 3:
            return image if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None
