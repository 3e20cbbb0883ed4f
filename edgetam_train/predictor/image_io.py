"""Reading the images and frames users hand to the predictors (``edgetam-predict``, ``VideoPredictor`` folders).

Every failure is a ``ValueError`` / ``FileNotFoundError`` naming the file (the command-line tools turn these into an
exit-2 message instead of a traceback). Images of more than 8 bits per sample are scaled to 0..255, not clipped:
PIL's ``convert("RGB")`` of a 16-bit grayscale PNG (mode ``I;16`` / ``I``) saturates every value above 255, which
turns a normal 16-bit image into a white one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

UINT16_MAX = 65535


def _open_error(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: not an image that can be read ({type(err).__name__}: {err}); expected a JPEG or PNG")


def image_hw(path: Path) -> tuple[int, int]:
    """(H, W) from the header of the image file ``path`` (nothing decoded). Raises ValueError / FileNotFoundError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _open_error(path, e) from None


def to_uint8_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a loaded PIL image; high-bit-depth grey is scaled (x 255 / 65535 for 16-bit integer
    images, x 255 for float images in [0, 1]); other value ranges are refused naming ``path``."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(im, dtype=np.int64) if im.mode == "I" else np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > UINT16_MAX):
            raise ValueError(f"{path}: {im.mode} image with values in [{values.min()}, {values.max()}]; expected "
                             f"8-bit or 16-bit (0..{UINT16_MAX}) samples")
        grey = np.rint(values * (255.0 / UINT16_MAX)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float32)
        if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
            raise ValueError(f"{path}: floating-point image with values outside [0, 1]; expected 8-bit or 16-bit "
                             "samples or floats in [0, 1]")
        grey = np.rint(values * 255.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))  # writable (torch.from_numpy warns on read-only arrays)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file (stored orientation, no EXIF rotation).

    Raises FileNotFoundError (no such file) or ValueError naming the file (not an image, truncated, an unsupported
    value range)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _open_error(path, e) from None
    try:
        return to_uint8_rgb(im, path)
    finally:
        im.close()
