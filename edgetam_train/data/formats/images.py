"""Image files: ``read_image`` decodes a jpg (or any PIL-readable image) to uint8 RGB, refusing truncated files,
images whose header declares more than ``max_image_pixels`` pixels and images smaller than ``min_image_side``.

The two limits are process-wide settings, like PIL's ``Image.MAX_IMAGE_PIXELS`` (config ``data.max_image_pixels``
and ``data.min_image_side``; the data modules call :func:`set_image_limits` in the training process and in every
DataLoader worker). Every failure is a ``BadSample`` (skipped and counted by the loaders), never a decoder crash.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from edgetam_train.data.skips import BadSample

_CV2_RGB_FLAGS = (
    cv2.IMREAD_COLOR_RGB if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.IMREAD_COLOR
) | cv2.IMREAD_IGNORE_ORIENTATION

# SA-1B's largest images are ~1500 x 2250 (3.4 MP), DAVIS full resolution 3840 x 2160 (8.3 MP): 100 MP (300 MB as
# uint8 RGB) leaves room for any real dataset and still refuses a header claiming 20000 x 20000 (400 MP, 1.2 GB).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
# A 1 x 1 image with a 1 x 1 mask would be trained as a full-frame object; the sample data is at least 16 x 16.
DEFAULT_MIN_IMAGE_SIDE = 16

_limits = {"max_pixels": DEFAULT_MAX_IMAGE_PIXELS, "min_side": DEFAULT_MIN_IMAGE_SIDE}


def set_image_limits(max_pixels: int | None = None, min_side: int | None = None) -> None:
    """Set the process-wide limits of :func:`read_image` (None keeps a limit as it is).

    Args:
        max_pixels: largest W x H accepted, read from the file header before decoding (``data.max_image_pixels``).
        min_side: smallest accepted min(W, H) (``data.min_image_side``).
    """
    if max_pixels is not None:
        if int(max_pixels) < 1:
            raise ValueError(f"data.max_image_pixels must be >= 1, got {max_pixels}")
        _limits["max_pixels"] = int(max_pixels)
    if min_side is not None:
        if int(min_side) < 1:
            raise ValueError(f"data.min_image_side must be >= 1, got {min_side}")
        _limits["min_side"] = int(min_side)


def image_limits() -> tuple[int, int]:
    """The current (max_pixels, min_side) of :func:`read_image`."""
    return _limits["max_pixels"], _limits["min_side"]


def header_size(data: np.ndarray, path: Path) -> tuple[int, int]:
    """(W, H) declared by the header of the encoded image ``data`` (nothing is decoded).

    PIL's decompression-bomb guard is off while the header is parsed (only the header is read; the size is checked
    by :func:`check_size` against ``data.max_image_pixels``). Raises ``BadSample`` corrupt_image (no recognisable
    header).
    """
    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = guard


def check_size(w: int, h: int, path: Path) -> None:
    """Raise ``BadSample`` too_large / too_small when (W, H) is outside the limits of :func:`set_image_limits`."""
    max_pixels, min_side = image_limits()
    if w * h > max_pixels:
        raise BadSample("too_large", str(path), f"{w}x{h} = {w * h} pixels > data.max_image_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise BadSample("too_small", str(path), f"{w}x{h}: a side is below data.min_image_side={min_side}")


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of a jpg, in stored orientation (EXIF ignored, as the json sizes and RLEs are).

    The size is read from the header first and checked against the limits (:func:`set_image_limits`). Decodes with
    OpenCV (faster than PIL here), but only when the file ends with the JPEG end-of-image marker: OpenCV fills a
    truncated file with grey without an error, so other files go through PIL, which raises on truncation.
    Raises ``BadSample`` missing_image / corrupt_image / too_large / too_small.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise BadSample("missing_image", str(path)) from None
    except OSError as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None
    check_size(*header_size(data, path), path)
    if data.size >= 4 and data[-2] == 0xFF and data[-1] == 0xD9:
        try:
            image = cv2.imdecode(data, _CV2_RGB_FLAGS)
        except cv2.error as e:
            raise BadSample("corrupt_image", str(path), f"OpenCV: {str(e).strip()}") from None
        if image is not None and image.ndim == 3:
            return image if hasattr(cv2, "IMREAD_COLOR_RGB") else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked above
            with Image.open(io.BytesIO(data.tobytes())) as im:
                im.load()
                return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        raise BadSample("corrupt_image", str(path), f"{type(e).__name__}: {e}") from None


def read_label_png(path: Path, modes: tuple[str, ...], expected: str, missing: tuple[str, str]) -> np.ndarray:
    """(H, W) integer array of a single-channel PNG of object ids / a binary mask (VOS annotations, mask folders).

    Raises ``BadSample``: ``missing`` = (reason, text) when the file does not exist, ``bad_annotation`` when its mode
    is not in ``modes`` (the message says ``expected <expected>``), ``corrupt_mask`` when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in modes:
                raise BadSample("bad_annotation", str(path), f"expected {expected}, got mode {im.mode}")
            return np.asarray(im)
    except FileNotFoundError:
        raise BadSample(missing[0], str(path), missing[1]) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("corrupt_mask", str(path), f"{type(e).__name__}: {e}") from None
