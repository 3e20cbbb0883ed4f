"""``edgetam-predict``: run a trained model from the command line.

Subcommands (each registered in :data:`SUBCOMMANDS` as ``(help, add_arguments, run)``):

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

``video`` -- clicks, a box or a mask for one or several objects on some frames, then tracking through every frame
(:mod:`.video_cli`); ``stream`` -- the same prompts over a video file, frame folder or camera, one frame at a time
(:mod:`.stream_cli`).

The checkpoint is a Lightning checkpoint from ``train.py`` or an official ``.pt``. Files this project wrote record
their architecture (trunk included) and input size, and are rebuilt from that alone; ``--model`` (``edgetam``,
``edgetam_*``, ``sam2.1_hiera_t`` ...) and ``--image-size`` are for files without a record (official releases) and
are errors when they contradict one (:func:`edgetam_train.models.build.load_model_file`).
``--runtime onnx|executorch|tflite --model-dir DIR`` runs an ``edgetam-export`` on-device directory instead (same
preprocessing and outputs; :mod:`edgetam_train.predictor.runtimes`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.cli_common import (
    add_model_arguments,
    check_output_folder,
    load_model,
    run_subcommand,
    subcommand_parser,
)
from edgetam_train.models.checkpoint import CheckpointMismatchError
from edgetam_train.predictor.image import ImagePrediction, ImagePredictor
from edgetam_train.predictor.image_io import read_rgb
from edgetam_train.predictor.overlay import overlay
from edgetam_train.predictor.prompt_text import parse_box, parse_labels, parse_points
from edgetam_train.predictor.runtimes import add_runtime_arguments, image_predictor
from edgetam_train.predictor.stream_cli import add_stream_arguments, run_stream
from edgetam_train.predictor.video_cli import add_video_arguments, run_video
from edgetam_train.progress import INTERRUPTED

# ----------------------------------------------------------------------------------------------- parsing

def parse_prompts(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(points (N, 2), labels (N,), box (4,)) from ``--points`` / ``--labels`` / ``--box`` (each None when absent);
    raises ValueError when points and labels do not pair up or no prompt is given."""
    points = parse_points(args.points) if args.points else None
    labels = parse_labels(args.labels) if args.labels else None
    if (points is None) != (labels is None):
        raise ValueError("--points and --labels go together (one label per point)")
    if points is not None and len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    box = parse_box(args.box) if args.box else None
    if points is None and box is None:
        raise ValueError("give --points/--labels and/or --box")
    return points, labels, box


def add_prompt_arguments(parser: argparse.ArgumentParser, where: str) -> None:
    """``--points``, ``--labels``, ``--box`` (coordinates in pixels of ``where``)."""
    parser.add_argument("--points", default=None, help=f'clicks "x,y;x,y" in {where} pixels')
    parser.add_argument("--labels", default=None, help='"1;0": 1 foreground, 0 background, one per point')
    parser.add_argument("--box", default=None, help=f'"x0,y0,x1,y1" in {where} pixels')


def output_prefix(out: Path) -> Path:
    """``OUT`` without a trailing .npz / .png."""
    return out.with_suffix("") if out.suffix.lower() in (".npz", ".png") else out


# ----------------------------------------------------------------------------------------------- image



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
    add_model_arguments(parser)  # --ckpt, --model, --image-size, --device
    add_runtime_arguments(parser)  # --runtime, --model-dir (exported graphs, predictor/runtimes.py)
    parser.add_argument("--image", required=True, type=Path, help="image file (RGB)")
    add_prompt_arguments(parser, "image")
    parser.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                        help="3 candidate masks (default: only for a single click without a box)")
    parser.add_argument("--out", required=True, type=Path, help="output prefix: writes OUT.npz and OUT.png")
    parser.add_argument("--fuse", action="store_true",
                        help="fuse RepViT / high-res projections for speed (outputs equal within ~1e-5)")


def run_image(args: argparse.Namespace) -> int:
    """``edgetam-predict image``: predict, write the npz and png, print a one-line summary."""
    points, labels, box = parse_prompts(args)
    multimask = args.multimask
    if multimask is None:
        multimask = box is None and points is not None and len(points) == 1
    check_output_folder(output_prefix(args.out).parent)
    image = read_rgb(args.image)
    predictor = image_predictor(args, lambda: ImagePredictor(load_model(args), fuse=args.fuse))
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
    "video": ("track objects through a video (prompts per --obj-id, --prompts JSON or --init-masks PNG, on any "
              "frames)", add_video_arguments, run_video),
    "stream": ("track objects over a video file, frame folder or camera, one frame at a time in bounded memory",
               add_stream_arguments, run_stream),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``edgetam-predict`` parser with one sub-parser per entry of :data:`SUBCOMMANDS`."""
    return subcommand_parser("edgetam-predict", "Run a trained EdgeTAM / SAM 2.1 model.", SUBCOMMANDS)


COORDINATE_OPTIONS = ("--points", "--box")


def attach_negative_values(argv: Sequence[str], options: Sequence[str] = COORDINATE_OPTIONS) -> list[str]:
    """``--points -5,10`` -> ``--points=-5,10``: argparse takes a value starting with ``-`` that is not a plain
    number for an option, so negative coordinates would be refused before they are checked against the image."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        if args[i] in options and i + 1 < len(args) and args[i + 1][:1] == "-" and \
                (args[i + 1][1:2].isdigit() or args[i + 1][1:2] == "."):
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 OK, 2 bad input: the message says what, 130 Ctrl-C: video and
    stream finish the files of the frames done)."""
    argv = attach_negative_values(sys.argv[1:] if argv is None else argv)
    try:
        return run_subcommand(build_parser(), argv, (CheckpointMismatchError, FileNotFoundError, ValueError))
    except KeyboardInterrupt:  # before the frame loop (loading, decoding) or a second Ctrl-C: one line, no traceback
        print("edgetam-predict: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
