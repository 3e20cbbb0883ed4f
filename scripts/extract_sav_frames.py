#!/usr/bin/env python
"""Extract SA-V video frames to ``JPEGImages_24fps/<video>/<frame:05d>.jpg`` (what ``SAVDataset`` reads fastest).

By default only the annotated frames are written (every 4th frame of the 24 fps video: 00000, 00004, ...), which is
all that training reads; ``--all-frames`` writes every frame. Frame numbers are indices in the 24 fps video either
way, so both layouts serve the same annotations.

Resumable: a video directory gets a ``.extracted`` marker once complete and is skipped on the next run (a partly
written directory is redone); ``--overwrite`` redoes everything. Videos that cannot be decoded are listed at the end
and the exit status is 1 (the training loader would skip them anyway).

Usage::

    python scripts/extract_sav_frames.py --sav-root data/sav                      # -> data/sav/JPEGImages_24fps
    python scripts/extract_sav_frames.py --sav-root /datasets/sav_train --out /fast/JPEGImages_24fps --workers 16
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from edgetam_train.data.formats.sav import ANN_EVERY, DONE_MARKER, FRAMES_DIRNAME, extract_frames
from edgetam_train.data.skips import BadSample


def find_videos(root: Path, skip_dirs: Sequence[str]) -> list[Path]:
    """Sorted ``*.mp4`` paths under ``root``, not entering hidden directories or ``skip_dirs``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        found += [Path(dirpath) / f for f in filenames if f.endswith(".mp4") and not f.startswith(".")]
    return sorted(found)


def extract_one(mp4: Path, out_root: Path, every: int, quality: int, resume: bool) -> tuple[str, int, str]:
    """Extract one video (runs in a worker): (video id, frames written, error message or "")."""
    try:
        return mp4.stem, extract_frames(mp4, out_root / mp4.stem, every=every, quality=quality, resume=resume), ""
    except BadSample as bad:
        return mp4.stem, 0, str(bad)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sav-root", type=Path, required=True, help="directory tree holding sav_*.mp4")
    p.add_argument("--out", type=Path, default=None, help=f"output root (default <sav-root>/{FRAMES_DIRNAME})")
    p.add_argument("--all-frames", action="store_true", help=f"write every frame, not only every {ANN_EVERY}th")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all CPUs)")
    p.add_argument("--overwrite", action="store_true", help="redo videos already marked complete")
    p.add_argument("--videos", nargs="*", default=None, help="only these video ids (e.g. sav_000001)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Extract the frames; returns the exit status (0 when every video was readable)."""
    args = build_parser().parse_args(argv)
    out_root = args.out if args.out is not None else args.sav_root / FRAMES_DIRNAME
    videos = find_videos(args.sav_root, skip_dirs=(FRAMES_DIRNAME, out_root.name))
    if args.videos is not None:
        wanted = set(args.videos)
        videos = [v for v in videos if v.stem in wanted]
    if not videos:
        print(f"no .mp4 files under {args.sav_root}", file=sys.stderr)
        return 1
    every = 1 if args.all_frames else ANN_EVERY
    out_root.mkdir(parents=True, exist_ok=True)
    done = sum((out_root / v.stem / DONE_MARKER).exists() for v in videos) if not args.overwrite else 0
    print(f"{len(videos)} videos -> {out_root} (every {every} frame(s); {done} with a completion marker)")
    failed, written = [], 0
    jobs = [(v, out_root, every, args.quality, not args.overwrite) for v in videos]
    bar = tqdm(total=len(jobs), unit="video", dynamic_ncols=True)
    with ProcessPoolExecutor(args.workers) if args.workers > 1 else nullcontext() as pool:
        results = pool.map(extract_one, *zip(*jobs), chunksize=4) if pool else (extract_one(*job) for job in jobs)
        for video, n, error in results:
            written += n
            if error:
                failed.append(f"{video}: {error}")
            bar.set_postfix(frames=written, failed=len(failed))
            bar.update()
    bar.close()
    print(f"wrote {written} frames; {len(failed)} videos failed")
    for line in failed:
        print(f"  {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
