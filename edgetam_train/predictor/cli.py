"""``edgetam-predict``: run a trained model from the command line.

Subcommands (each registered in :data:`SUBCOMMANDS` as ``(add_arguments, run)``; ``video`` is to be added there):

``image`` -- clicks and/or a box on one image::

    edgetam-predict image --ckpt last.ckpt --image photo.jpg --points "500,375;620,410" --labels "1;0" --out pred
    edgetam-predict image --ckpt edgetam.pt --image photo.jpg --box 100,80,700,560 --out pred --no-multimask

Writes ``OUT.npz`` and ``OUT.png`` (a suffix .npz / .png given with ``--out`` is dropped):

* ``masks``: bool (M, H, W) at the image's size; ``iou``: float32 (M,) predicted IoUs; ``low_res_logits``: float32
  (M, S/4, S/4) (256 x 256 at the default S = 1024), clamped to +-32, usable as the next mask prompt;
  ``object_score``: float32 scalar, the object-presence logit (> 0: present). M = 3 with multimask output, else 1.
* the PNG: the image with the highest-IoU mask overlaid, the clicks (green positive, red negative) and the box.

``--multimask`` / ``--no-multimask``: default multimask for a single click without a box (an ambiguous prompt),
single mask otherwise -- what SAM recommends. Coordinates are pixels of the image as stored (no EXIF rotation).
The checkpoint is a Lightning checkpoint from ``train.py`` or an official ``.pt``; ``--model`` names the
architecture (``edgetam`` default, ``sam2.1_hiera_t`` ... for teachers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..models.build import ALIASES, available_models, build_model
from ..models.checkpoint import CheckpointMismatchError
from .image import ImagePrediction, ImagePredictor

OVERLAY_COLOR = (30, 144, 255)  # RGB
POSITIVE_COLOR, NEGATIVE_COLOR, BOX_COLOR = (0, 220, 0), (230, 0, 0), (255, 200, 0)


# ----------------------------------------------------------------------------------------------- parsing

def parse_points(text: str) -> np.ndarray:
    """``"x,y;x,y"`` -> float32 (N, 2); raises ValueError naming the bad item."""
    points = []
    for item in (t.strip() for t in text.split(";")):
        if not item:
            continue
        parts = item.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            points.append([float(parts[0]), float(parts[1])])
        except ValueError:
            raise ValueError(f"--points: expected 'x,y;x,y;...', got item {item!r}") from None
    if not points:
        raise ValueError("--points: no point given")
    return np.asarray(points, dtype=np.float32)


def parse_labels(text: str) -> np.ndarray:
    """``"1;0"`` (or ``"1,0"``) -> int32 (N,) of 1 (foreground) / 0 (background)."""
    items = [t.strip() for t in text.replace(",", ";").split(";") if t.strip()]
    if not items or any(t not in ("0", "1") for t in items):
        raise ValueError(f"--labels: expected 1 (foreground) / 0 (background) separated by ';', got {text!r}")
    return np.asarray([int(t) for t in items], dtype=np.int32)


def parse_box(text: str) -> np.ndarray:
    """``"x0,y0,x1,y1"`` -> float32 (4,)."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise ValueError(f"--box: expected 'x0,y0,x1,y1', got {text!r}")
    return np.asarray(box, dtype=np.float32)


def output_prefix(out: Path) -> Path:
    """``OUT`` without a trailing .npz / .png."""
    return out.with_suffix("") if out.suffix.lower() in (".npz", ".png") else out


# ----------------------------------------------------------------------------------------------- image

def load_predictor(ckpt: Path, model: str, image_size: int | None, device: str, fuse: bool) -> ImagePredictor:
    """Build ``model``, load ``ckpt`` strictly, move to ``device``: an :class:`ImagePredictor`."""
    net = build_model(model, image_size=image_size, checkpoint=ckpt)
    return ImagePredictor(net.to(device), fuse=fuse)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file (stored orientation)."""
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # writable (torch.from_numpy warns on read-only arrays)


def overlay(image: np.ndarray, mask: np.ndarray, points: np.ndarray | None, labels: np.ndarray | None,
            box: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture: ``mask`` (H, W) bool tinted and outlined, clicks as dots, the box as a rectangle."""
    out = image.astype(np.float32)
    color = np.asarray(OVERLAY_COLOR, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * color
    out = np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thick = max(1, round(max(image.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, OVERLAY_COLOR, thick)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR, thick)
    if points is not None:
        radius = max(3, 3 * thick)
        for (x, y), label in zip(points, labels):
            c = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
            cv2.circle(out, (int(round(x)), int(round(y))), radius, c, -1)
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (255, 255, 255), max(1, thick // 2))
    return out


def save_image_prediction(prefix: Path, image: np.ndarray, pred: ImagePrediction, points, labels, box
                          ) -> tuple[Path, Path]:
    """Write ``prefix.npz`` (masks, iou, low_res_logits, object_score) and the overlay ``prefix.png``."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    npz, png = prefix.with_name(prefix.name + ".npz"), prefix.with_name(prefix.name + ".png")
    np.savez_compressed(npz, masks=pred.masks.astype(bool), iou=pred.iou.astype(np.float32),
                        low_res_logits=pred.low_res_logits.astype(np.float32),
                        object_score=np.float32(pred.object_score))
    best = int(np.argmax(pred.iou))
    Image.fromarray(overlay(image, pred.masks[best], points, labels, box)).save(png)
    return npz, png


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgetam-predict image``."""
    parser.add_argument("--ckpt", required=True, type=Path, help="Lightning checkpoint or official .pt")
    parser.add_argument("--model", default="edgetam",
                        help=f"architecture: {', '.join(available_models())} (aliases: {', '.join(ALIASES)})")
    parser.add_argument("--image-size", type=int, default=None, help="model input side S (default 1024)")
    parser.add_argument("--image", required=True, type=Path, help="image file (RGB)")
    parser.add_argument("--points", default=None, help='clicks "x,y;x,y" in image pixels')
    parser.add_argument("--labels", default=None, help='"1;0": 1 foreground, 0 background, one per point')
    parser.add_argument("--box", default=None, help='"x0,y0,x1,y1" in image pixels')
    parser.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                        help="3 candidate masks (default: only for a single click without a box)")
    parser.add_argument("--out", required=True, type=Path, help="output prefix: writes OUT.npz and OUT.png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fuse", action="store_true",
                        help="fuse RepViT / high-res projections for speed (outputs equal within ~1e-5)")


def run_image(args: argparse.Namespace) -> int:
    """``edgetam-predict image``: predict, write the npz and png, print a one-line summary."""
    points = parse_points(args.points) if args.points else None
    labels = parse_labels(args.labels) if args.labels else None
    if (points is None) != (labels is None):
        raise ValueError("--points and --labels go together (one label per point)")
    if points is not None and len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    box = parse_box(args.box) if args.box else None
    if points is None and box is None:
        raise ValueError("give --points/--labels and/or --box")
    multimask = args.multimask
    if multimask is None:
        multimask = box is None and points is not None and len(points) == 1
    image = read_rgb(args.image)
    predictor = load_predictor(args.ckpt, args.model, args.image_size, args.device, args.fuse)
    predictor.set_image(image)
    pred = predictor.predict(points=points, labels=labels, box=box, multimask_output=multimask)
    npz, png = save_image_prediction(output_prefix(args.out), image, pred, points, labels, box)
    ious = ", ".join(f"{v:.3f}" for v in pred.iou)
    print(f"wrote {npz} and {png}: {len(pred.iou)} mask(s), predicted IoU [{ious}], "
          f"object score {pred.object_score:.3f}")
    return 0


# ----------------------------------------------------------------------------------------------- entry point

# name -> (help, add_arguments(parser), run(args) -> exit status)
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "image": ("segment one image from clicks and/or a box", add_image_arguments, run_image),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``edgetam-predict`` parser with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="edgetam-predict", description="Run a trained EdgeTAM / SAM 2.1 model.",
                                     epilog="Exit status: 0 OK, 2 bad input.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 OK, 2 bad input: the message says what)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"edgetam-predict {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
