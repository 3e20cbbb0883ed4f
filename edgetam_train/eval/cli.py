"""``edgetam-eval``: video J&F of predicted masks, and interactive N-click mIoU of a checkpoint.

Usage::

    edgetam-eval jf --gt DAVIS/Annotations/480p --pred results/ --protocol davis     # palette PNGs per frame
    edgetam-eval jf --gt sav_val/Annotations_6fps --pred results/ --protocol sav     # <video>/<obj>/<frame>.png
    edgetam-eval jf --gt DAVIS/Annotations/480p --pred results/ --videos DAVIS/ImageSets/2017/val.txt  # a subset
    edgetam-eval miou --ckpt last.ckpt --data sa23/ --clicks 5                       # SA-1B-format images
    edgetam-eval miou --ckpt best.ckpt --data coco:val.json:val_images/ --max-masks 16 --csv miou.csv
    edgetam-eval miou --ckpt best.ckpt --data masks:my_val/      # or sa1b:DIR (the fine-tuning formats)
    edgetam-eval jf --ckpt best.ckpt --data vos:my_val_videos/   # track + score a data=vos_finetune folder

``jf`` writes one CSV row per video and object (``video,object,frames,J&F,J,F``; ``--csv``, default
``<pred>/jf_<protocol>.csv``) and prints ``J&F=... J=... F=...`` (fractions) as its last line; a GT video without a
prediction folder is an error unless ``--allow-missing``, which scores the predicted videos and prints how many (and
which) were left out; ``--videos FILE`` scores only the listed GT videos (DAVIS 2017 val: ``ImageSets/2017/val.txt``
of the trainval download, whose ``Annotations/480p`` also holds the train videos); layouts, protocols
and the empty-mask conventions are in :mod:`edgetam_train.eval.jf`. ``miou`` prints ``clicks=k mIoU=...`` for k =
1..N (the click simulation is in :mod:`edgetam_train.eval.miou`). ``--data coco:...|masks:...|sa1b:...`` (and
``jf --ckpt --data vos:DIR``) read the fine-tuning formats with validation's datasets and predictor, so their numbers
are the in-training ``val/mIoU_1click`` / ``val/J&F`` of that split (:mod:`edgetam_train.eval.own_data`); miou then
also writes one CSV row per image (``--csv``, default ``miou_per_image.csv`` next to the checkpoint).

Exit status: 0 OK, 2 bad input (missing frames, size mismatches, a checkpoint that does not match ``--model`` or
whose recorded architecture / size a flag contradicts: the message names the video / frame / keys / settings).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from edgetam_train.cli_common import (
    IMAGE_SIZE_HELP,
    add_model_arguments,
    load_model,
    model_help,
    run_subcommand,
    subcommand_parser,
)
from edgetam_train.data.skips import BadSample
from edgetam_train.eval.jf import BOUND_TH, PROTOCOLS, evaluate, write_csv
from edgetam_train.models.checkpoint import CheckpointMismatchError
from edgetam_train.progress import stage


def add_jf_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgetam-eval jf``."""
    parser.add_argument("--gt", type=Path, default=None, help="GT root: one folder per video")
    parser.add_argument("--pred", type=Path, default=None, help="prediction root, same layout as --gt")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="instead of --gt/--pred: track the videos of --data vos:DIR with this checkpoint")
    parser.add_argument("--data", default=None, help="vos:DIR (JPEGImages/ + Annotations/, data=vos_finetune)")
    parser.add_argument("--model", default=None, help=model_help())
    parser.add_argument("--image-size", type=int, default=None, help=IMAGE_SIZE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-videos", type=int, default=None, help="--data: only the first videos")
    parser.add_argument("--protocol", default="davis", choices=PROTOCOLS,
                        help="davis: davis2017-evaluation; sav: SA-V sav_benchmark (objects scored from first "
                             "appearance)")
    parser.add_argument("--csv", type=Path, default=None, help="per-object CSV (default <pred>/jf_<protocol>.csv)")
    parser.add_argument("--bound-th", type=float, default=BOUND_TH,
                        help="boundary tolerance: fraction of the image diagonal (default 0.008), pixels if >= 1")
    parser.add_argument("--keep-first-last", action="store_true",
                        help="also score the first and last annotated frames (not the official protocols)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--videos", type=Path, default=None,
                        help="text file of the video names to score, one per line (e.g. DAVIS' "
                             "ImageSets/2017/val.txt; default: every GT video folder)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the GT videos that have a prediction folder and say how many were left out "
                             "(default: a missing video is an error)")


def run_jf(args: argparse.Namespace) -> int:
    """``edgetam-eval jf``."""
    if args.ckpt is not None or args.data is not None:
        return run_jf_checkpoint(args)
    if args.gt is None or args.pred is None:
        raise ValueError("jf: pass --gt and --pred (predicted masks), or --ckpt and --data vos:DIR (track and score)")
    result = evaluate(args.gt, args.pred, args.protocol, bound_th=args.bound_th,
                      skip_first_last=not args.keep_first_last, workers=args.workers,
                      videos=None if args.videos is None else read_video_list(args.videos),
                      allow_missing=args.allow_missing)
    csv_path = write_csv(result, args.csv or args.pred / f"jf_{args.protocol}.csv")
    videos = len({o.video for o in result.objects})
    if result.left_out:
        shown = ", ".join(result.left_out[:10]) + (", ..." if len(result.left_out) > 10 else "")
        print(f"left out {len(result.left_out)} GT video(s) without a prediction folder (--allow-missing): {shown}")
    print(f"{len(result.objects)} objects in {videos} videos; per-object scores: {csv_path}")
    print(result.summary())
    return 0


def read_video_list(path: Path) -> list[str]:
    """The video names of a ``--videos`` file (one per line; blank lines and ``#`` comments skipped); raises
    FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"--videos {path} does not exist (expected a text file, one video name per line)")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"--videos {path} lists no video (expected one video name per line)")
    return names


def run_jf_checkpoint(args: argparse.Namespace) -> int:
    """``edgetam-eval jf --ckpt CKPT --data vos:DIR``: validation's tracking and J&F on a video folder."""
    from edgetam_train.eval.own_data import build_dataset, evaluate_dataset_jf, parse_data_spec

    if args.ckpt is None or args.data is None:
        raise ValueError("jf: --ckpt and --data vos:DIR go together")
    spec = parse_data_spec(args.data, image_only=False)
    if spec is None:
        raise ValueError(f"jf: --data {args.data}: expected vos:DIR")
    with stage("edgetam-eval jf", f"loading {args.ckpt}"):
        model = load_model(args)
    result = evaluate_dataset_jf(model, build_dataset(spec, max_images=args.max_videos))
    csv_path = write_csv(result, args.csv or args.ckpt.parent / "jf_per_object.csv")
    print(f"{len(result.objects)} objects in {len({o.video for o in result.objects})} videos; per-object scores: "
          f"{csv_path}")
    print(result.summary())
    return 0


def add_miou_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgetam-eval miou``."""
    add_model_arguments(parser)  # --ckpt, --model, --image-size, --device
    parser.add_argument("--data", required=True,
                        help="coco:ANN.json:IMAGES | masks:DIR | sa1b:DIR (validation's datasets), or a folder of "
                             "SA-1B-format <name>.jpg + <name>.json")
    parser.add_argument("--csv", type=Path, default=None,
                        help="per-image CSV of a coco/masks/sa1b --data (default: miou_per_image.csv next to --ckpt)")
    parser.add_argument("--clicks", type=int, default=1, help="clicks per mask N (default 1)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first images (sorted by path)")
    parser.add_argument("--max-masks", type=int, default=None, help="at most this many masks per image")


def run_miou(args: argparse.Namespace) -> int:
    """``edgetam-eval miou``."""
    from edgetam_train.eval.miou import evaluate_miou
    from edgetam_train.eval.own_data import build_dataset, evaluate_dataset_miou, parse_data_spec, write_miou_csv
    from edgetam_train.predictor.image import ImagePredictor

    spec = parse_data_spec(args.data)
    if spec is not None:  # a fine-tuning format: validation's dataset and (unfused) predictor
        dataset = build_dataset(spec, max_images=args.max_images, max_masks=args.max_masks)
        with stage("edgetam-eval miou", f"loading {args.ckpt}"):
            model = load_model(args)
        own = evaluate_dataset_miou(model, dataset, args.clicks)
        csv_path = write_miou_csv(own, args.clicks, args.csv or args.ckpt.parent / "miou_per_image.csv")
        skipped = f", {len(own.skipped)} image(s) skipped" if own.skipped else ""
        print(f"{len(own.per_mask)} masks in {len(own.images)} images{skipped}; per-image scores: {csv_path}")
        print(own.summary())
        return 0
    with stage("edgetam-eval miou", f"loading {args.ckpt} as {args.model}"):
        predictor = ImagePredictor(load_model(args), fuse=True)
    result = evaluate_miou(predictor, Path(args.data), args.clicks, max_images=args.max_images,
                           max_masks=args.max_masks)
    print(f"{len(result.per_mask)} masks")
    print(result.summary())
    return 0


SUBCOMMANDS = {
    "jf": ("J&F of predicted video masks against GT masks", add_jf_arguments, run_jf),
    "miou": ("interactive N-click mIoU on COCO / mask-folder / SA-1B images", add_miou_arguments, run_miou),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``edgetam-eval`` parser (subcommands ``jf``, ``miou``)."""
    return subcommand_parser("edgetam-eval", "Evaluate EdgeTAM predictions / checkpoints.", SUBCOMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_subcommand(build_parser(), argv, (CheckpointMismatchError, FileNotFoundError, ValueError, BadSample))


if __name__ == "__main__":
    sys.exit(main())
