"""Write small synthetic datasets in the formats users already have (quick start, tests, benchmarks).

Every format has one writer function ``write_<format>(out_root, args) -> list[Path]`` registered in ``WRITERS``;
``main(argv)`` runs the selected writers. Each writer puts its files under ``<out>/<format>/``:

- ``sa1b``: ``sa_XXXXXX.jpg`` + ``sa_XXXXXX.json`` in the SA-1B layout
  (``{"image": {...}, "annotations": [{"segmentation": {"size": [h, w], "counts": str}, ...}]}``, pycocotools RLE).
- ``sav``: SA-V videos ``sav_000/sav_XXXXXX.mp4`` (H.264, 24 fps) + ``sav_XXXXXX_manual.json`` / ``_auto.json``
  (official SA-V schema: ``masklet`` = per annotated frame, every 4th, the per-object RLEs) and the annotated frames
  extracted to ``JPEGImages_24fps/<video>/<frame:05d>.jpg``.
- ``sav_val``: the SA-V val / test layout, ``sav_val/JPEGImages_24fps/<video>/<frame:05d>.jpg`` (every frame) +
  ``Annotations_6fps/<video>/<object:03d>/<frame:05d>.png`` (binary PNG per object, every 4th frame) + ``sav_val.txt``;
  what ``edgetam-predict video --init-masks`` and ``edgetam-eval jf --protocol sav`` read (not written by default).
- ``davis``: ``JPEGImages/<video>/<frame:05d>.jpg`` + ``Annotations/<video>/<frame:05d>.png`` (palette PNG, index =
  object id, 255 = a void band around object 1).

- ``coco``: COCO instances, ``coco/{train,val}/*.jpg`` + ``coco/instances_{train,val}.json`` (polygons, compressed
  and uncompressed RLEs, one ``iscrowd`` region per image); fine-tuning input (not written by default).
- ``mask_folder``: ``mask_folder/{train,val}/images/<stem>.jpg`` + ``masks/<stem>.png`` (instance ids) or
  ``masks/<stem>/<k>.png`` (one binary PNG per object); fine-tuning input (not written by default).

The output is deterministic: item ``i`` of format ``f`` depends only on (``--seed``, ``f``, ``i``), so asking for
more items keeps the first ones unchanged. Scenes are textured backgrounds (gradient + low-frequency noise + pixel
noise) with coloured, textured ellipses, polygons and rectangles, some overlapping; each annotation is the *visible*
part of one shape (later shapes occlude earlier ones), as SA-1B masks describe what is seen. In the videos the
shapes move and occlude each other; object 0 leaves the frame and re-enters, and SA-V's object 3 appears late
(empty masks until then).

Usage::

    python scripts/make_sample_data.py --out data/sample            # 8 SA-1B images, 3 SA-V videos, 2 DAVIS videos
    python scripts/make_sample_data.py --out data/sample --formats sa1b,sav
    python scripts/make_sample_data.py --out data/sample --formats coco,mask_folder   # fine-tuning inputs
    python scripts/make_sample_data.py --out data/sample --formats sav_val            # SA-V val-format videos
    python scripts/make_sample_data.py --out /tmp/big --formats sa1b --size 2250x1500 --num-images 16 \\
        --min-masks 90 --max-masks 110
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetam_train.data.synthetic.davis import write_davis
from edgetam_train.data.synthetic.finetune import (
    write_coco,
    write_mask_folder,
)
from edgetam_train.data.synthetic.sa1b import write_sa1b
from edgetam_train.data.synthetic.sav import write_sav, write_sav_val
from edgetam_train.data.synthetic.scenes import (
    parse_size,
)

# Format name -> writer(out_root, parsed args) -> written paths.
WRITERS: dict[str, Callable[[Path, argparse.Namespace], list[Path]]] = {
    "sa1b": write_sa1b,
    "sav": write_sav,
    "sav_val": write_sav_val,
    "davis": write_davis,
    "coco": write_coco,
    "mask_folder": write_mask_folder,
}


# written when --formats is not given (the fine-tuning inputs coco and mask_folder only on request)
DEFAULT_FORMATS: tuple[str, ...] = ("sa1b", "sav", "davis")


def parse_formats(text: str) -> list[str]:
    """``"sa1b,sav"`` -> ["sa1b", "sav"]; raises ``argparse.ArgumentTypeError`` naming an unknown format."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown}; choose from {list(WRITERS)}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    """Command-line options shared by all writers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/sample"), help="output root (default data/sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", type=parse_formats, default=[list(DEFAULT_FORMATS)],
                   help=f"formats to write, comma- or space-separated, among {','.join(WRITERS)} "
                   f"(default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--num-images", type=int, default=8, help="SA-1B images; COCO / mask-folder training images "
                   "(default 8)")
    p.add_argument("--num-val-images", type=int, default=2, help="COCO / mask-folder validation images (default 2)")
    p.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT of image 0 (default 320x240); "
                   "the others keep the area and vary the aspect ratio")
    p.add_argument("--min-masks", type=int, default=3, help="fewest annotations per image (default 3)")
    p.add_argument("--max-masks", type=int, default=12, help="most annotations per image (default 12)")
    p.add_argument("--min-area-frac", type=float, default=1e-4, help="SA-1B: shapes whose visible part covers less "
                   "of the image are drawn but not annotated (default 1e-4; at least 16 px)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--num-videos", type=int, default=3, help="SA-V (and sav_val) videos (default 3)")
    p.add_argument("--num-davis-videos", type=int, default=2, help="DAVIS-format videos (default 2)")
    p.add_argument("--video-size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT of the videos "
                   "(default 320x240)")
    p.add_argument("--video-frames", type=int, default=16, help="annotated frames of SA-V video 0 (default 16; "
                   "videos cycle through +0, +4, +8; sav_val: every video); DAVIS videos get 4-8 more (all annotated)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the selected writers; returns {format: written paths}."""
    args = build_parser().parse_args(argv)
    args.formats = list(dict.fromkeys(f for group in args.formats for f in group))  # flatten, keep order, no repeats
    if not 1 <= args.min_masks <= args.max_masks:
        raise SystemExit(f"need 1 <= --min-masks <= --max-masks, got {args.min_masks} and {args.max_masks}")
    if args.video_frames < 2:
        raise SystemExit(f"need --video-frames >= 2, got {args.video_frames}")
    written = {}
    for fmt in args.formats:
        t0 = time.perf_counter()
        written[fmt] = WRITERS[fmt](args.out, args)
        print(f"{fmt}: wrote {len(written[fmt])} items to {args.out / fmt} in {time.perf_counter() - t0:.1f}s")
    return written

