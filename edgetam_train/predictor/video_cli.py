"""``edgetam-predict video``: clicks, a box or a mask for one or several objects on some frames, then tracking
through every frame::

    edgetam-predict video --ckpt last.ckpt --frames video_frames/ --frame-idx 0 --points "210,350" --labels 1 --out res
    edgetam-predict video --ckpt edgetam.pt --frames clip.mp4 --frame-idx 30 --box 300,0,500,400 --out res
    edgetam-predict video --ckpt edgetam.pt --frames clip/ --obj-id 1 --points "210,350" --labels 1 \
        --obj-id 2 --box 300,0,500,400 --obj-id 3 --mask m3.png --out res      # three objects
    edgetam-predict video --ckpt edgetam.pt --frames DAVIS/JPEGImages/480p/bike-packing \
        --init-masks DAVIS/Annotations/480p/bike-packing/00000.png --out res/bike-packing   # DAVIS semi-supervised
    edgetam-predict video --ckpt edgetam.pt --frames sav_val/JPEGImages_24fps/sav_000001 \
        --init-masks sav_val/Annotations_6fps/sav_000001 --out res/sav_000001             # SA-V semi-supervised

Prompts (grouped by ``--obj-id``, or ``--prompts JSON``, or ``--init-masks PNG|FOLDER``): :mod:`.video_prompts`.
``--init-masks`` an SA-V annotation folder (``<object>/<frame>.png``) changes the tracking and the PNGs written:
each object forward from its first non-empty mask, ``OUT/<object>/<frame>.png`` per object
(:mod:`.object_folders`); everything below is for the other prompts.
``--frames``: a folder of .jpg/.jpeg/.png frames (all-integer names in numeric order, else by name; one size) or a
video file decoded frame by frame with PyAV into a temporary folder of PNGs (never all in memory);
``--max-frames N``: the first N frames only. Tracking runs forward from the earliest prompted frame K
to the last frame, then, if K > 0, backward from K to frame 0 (two ``VideoPredictor.propagate`` calls, the second
``reverse=True``: the official predictors' usage). Writes into the folder ``OUT``:

* ``<frame>.png`` per frame (the frame file's stem, ``00000`` ... for a video file): a palette PNG (DAVIS / VOC
  palette) whose pixel value is the object id on the object's mask (later objects on top), 0 elsewhere -- the layout
  ``edgetam-eval jf --protocol davis`` reads;
* ``masks.npz``: ``logits`` float16 (T, N, H, W) mask logits at the video size (N objects in order of first prompt;
  > 0 is the mask; -1024 where the object is predicted absent), ``object_score`` float32 (T, N) object-presence
  logits (> 0: present), ``obj_ids`` int64 (N,), ``frames`` str (T,) the frame names; ``--no-logits`` skips it;
* ``overlay.gif``: the frames with each object's mask tinted in its colour and its clicks and boxes drawn on their
  frames in the same colour (positive clicks filled dots, negative ones hollow rings; :mod:`edgetam_train.drawing`),
  longer side at most ``--gif-max-side`` pixels.

The PNGs are thresholded from the float32 logits (float16 keeps the sign of every logit of magnitude >= 6e-8).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgetam_train.cli_common import add_model_arguments, check_output_folder, load_model
from edgetam_train.drawing import DrawnPrompt, draw_overlay, object_colours
from edgetam_train.predictor.image_io import image_hw, read_rgb
from edgetam_train.predictor.mask_pngs import label_png, save_png
from edgetam_train.predictor.object_folders import (
    object_names,
    object_score,
    track_from_first_masks,
    write_object_pngs,
)
from edgetam_train.predictor.runtimes import add_runtime_arguments, video_predictor
from edgetam_train.predictor.stream_source import open_source
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_prompts import add_video_prompt_arguments, apply_prompts, collect_prompts
from edgetam_train.predictor.video_state import VideoState, named_frame_files
from edgetam_train.progress import INTERRUPTED, StopOnCtrlC

GIF_FPS = 10.0  # overlay frame rate for a frame folder (a video file keeps its own)


@dataclass
class VideoFrames:
    """The frames given with ``--frames``.

    Attributes:
        source: what :meth:`VideoPredictor.init_state` takes: the frame folder (read lazily; for a video file the
            scratch folder of its decoded frames).
        names: output name (no suffix) of each frame, in order: the frame file's stem, or ``00000`` ... (T,).
        hw: (H, W) of the frames.
        fps: the video file's average frame rate; None for a folder.
        files: the frame files.
    """

    source: Path
    names: list[str]
    hw: tuple[int, int]
    fps: float | None = None
    files: list[Path] | None = None

    def rgb(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB pixels of frame ``t``."""
        return read_rgb(self.files[t])


def read_frames(path: Path, max_frames: int | None = None, scratch: Path | None = None) -> VideoFrames:
    """A folder of .jpg/.jpeg/.png frames (listed, read later) or a video file, decoded one frame at a time with
    PyAV into lossless PNGs in the folder ``scratch`` (so the whole video is never in memory; the predictor reads
    them lazily like a frame folder); the first ``max_frames`` frames when given. Raises FileNotFoundError /
    ValueError naming ``path`` (no frames, undecodable file, two frames with one stem)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    if path.is_dir():
        files = named_frame_files(path, max_frames, "--frames")
        return VideoFrames(path, [p.stem for p in files], image_hw(files[0]), files=files)
    if not path.exists():
        raise FileNotFoundError(f"--frames {path} does not exist (expected a frame folder or a video file)")
    if scratch is None:
        raise ValueError("read_frames: a video file needs a scratch folder for its decoded frames")
    try:
        source = open_source(path, max_frames)
        files = []
        for name, rgb in source:
            files.append(scratch / f"{name}.png")
            Image.fromarray(rgb).save(files[-1], compress_level=1)  # lossless: the pixels the decoder gave
    except ValueError as err:
        raise ValueError(str(err).replace("--source", "--frames", 1)) from None
    return VideoFrames(scratch, [p.stem for p in files], source.hw, source.fps, files=files)


def track(predictor: VideoPredictor, state: VideoState, frame_idx: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Every frame once, as (frame index, logits (N, H, W) float32 at video size): forward from ``frame_idx`` to
    the last frame, then (``frame_idx`` > 0) backward from ``frame_idx - 1`` to frame 0."""
    for t, _, logits in predictor.propagate(state, start_frame_idx=frame_idx):
        yield t, logits
    if frame_idx > 0:
        for t, _, logits in predictor.propagate(state, start_frame_idx=frame_idx, reverse=True):
            if t != frame_idx:  # the prompted frame again (kept, not recomputed)
                yield t, logits


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgetam-predict video``."""
    add_model_arguments(parser)  # --ckpt, --model, --image-size, --device
    add_runtime_arguments(parser)  # --runtime, --model-dir (exported graphs, predictor/runtimes.py)
    parser.add_argument("--frames", required=True, type=Path,
                        help="folder of .jpg/.jpeg/.png frames (integer names in numeric order, else sorted by "
                             "name) or a video file (.mp4 ..., decoded frame by frame with PyAV into a temporary "
                             "folder of PNGs)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="only the first N frames of the folder or video (default: all)")
    # --obj-id, --frame-idx, --points, --labels, --box, --mask, --prompts, --init-masks
    add_video_prompt_arguments(parser)
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: <frame>.png per frame, masks.npz, overlay.gif")
    parser.add_argument("--fill-hole-area", type=int, default=8,
                        help="fill background holes up to this many low-res pixels (default 8, the official video "
                             "predictor's; 0: off)")
    parser.add_argument("--fps", type=float, default=None,
                        help=f"overlay.gif frame rate (default: the video file's, {GIF_FPS:g} for a frame folder)")
    parser.add_argument("--gif-max-side", type=int, default=480,
                        help="shrink overlay.gif so its longer side is at most this (default 480; 0: video size)")
    parser.add_argument("--no-logits", action="store_true",
                        help="do not write masks.npz (T x H x W float16 logits: ~4 GB for 1000 frames at 1080p)")
    parser.add_argument("--fuse", action="store_true",
                        help="fuse RepViT / high-res projections for speed (outputs equal within ~1e-5)")
    parser.epilog = ("Each --obj-id starts an object; the prompt options after it are its prompts. Tracks forward from "
                     "the earliest prompted frame K to the last frame, then, if K > 0, backward from K to frame 0 (the "
                     "official predictor's propagate, then propagate with reverse=True). PNGs: palette, pixel value = "
                     "object id on its mask, 0 elsewhere (DAVIS layout, for edgetam-eval jf). --init-masks FOLDER "
                     "(SA-V): each object forward from its first mask, OUT/<object>/<frame>.png (SA-V layout).")


def run_video(args: argparse.Namespace) -> int:
    """``edgetam-predict video``: prompt the objects, track them through the video, write PNGs, masks.npz and
    overlay.gif."""
    if args.gif_max_side < 0 or args.fill_hole_area < 0 or (args.fps is not None and args.fps <= 0):
        raise ValueError("--gif-max-side and --fill-hole-area must be >= 0 and --fps > 0, got "
                         f"{args.gif_max_side}, {args.fill_hole_area}, {args.fps}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; expected a folder (created if missing)")
    check_output_folder(args.out)
    with tempfile.TemporaryDirectory(prefix="edgetam-frames-") as scratch:
        return _run_video(args, read_frames(args.frames, args.max_frames, Path(scratch)))


def _run_video(args: argparse.Namespace, frames: VideoFrames) -> int:
    """:func:`run_video` once the frames are listed (a video file's decoded into a scratch folder)."""
    from tqdm import tqdm

    from edgetam_train.data.formats.vos import voc_palette

    num = len(frames.names)
    prompts = collect_prompts(args, frames.names, frames.hw)  # checks them (frames in range, masks' size ...)
    # SA-V: one PNG per object folder of --init-masks, each object tracked forward from its first mask
    per_object = object_names(args.init_masks) if args.init_masks is not None and args.init_masks.is_dir() else None
    predictor = video_predictor(args, lambda: VideoPredictor(load_model(args), fill_hole_area=args.fill_hole_area,
                                                             fuse=args.fuse))
    state = predictor.init_state(frames.source)
    apply_prompts(predictor, state, prompts)  # checks the clicks / boxes (inside the frame ...)
    obj_ids, k = state.obj_ids, min(p.frame_idx for p in prompts)
    tracked = (track(predictor, state, k) if per_object is None else
               track_from_first_masks(predictor, state, {p.obj_id: p.frame_idx for p in prompts}))
    colours = dict(zip(obj_ids, object_colours(len(obj_ids))))  # the same colour for an object's mask and clicks

    args.out.mkdir(parents=True, exist_ok=True)
    h, w = frames.hw
    logits_all = None if args.no_logits else np.zeros((num, len(obj_ids), h, w), dtype=np.float16)
    scores = np.zeros((num, len(obj_ids)), dtype=np.float32)
    gif: dict[int, Image.Image] = {}  # frame -> overlay picture, for every frame tracked
    palette = voc_palette()
    # Ctrl-C: stop after the frame and write masks.npz and overlay.gif of the frames tracked (a second one: at once)
    with StopOnCtrlC() as ctrl_c, tqdm(total=num, desc=f"tracking {len(obj_ids)} object(s)", unit="frame",
                                       disable=None) as bar:
        for t, logits in tracked:
            masks = predictor.masks_from_logits(logits).cpu().numpy()  # (N, H, W) bool, from the float32 logits
            if per_object is None:
                save_png(label_png(masks, obj_ids, palette), args.out / f"{frames.names[t]}.png")
            else:
                write_object_pngs(args.out, per_object, frames.names[t], masks, obj_ids, palette)
            if logits_all is not None:
                logits_all[t] = logits.cpu().numpy()
            scores[t] = [object_score(predictor, state, t, i) for i in obj_ids]
            drawn = [DrawnPrompt(p.points, p.labels, p.box, colours[p.obj_id]) for p in prompts if p.frame_idx == t]
            im = Image.fromarray(draw_overlay(frames.rgb(t), masks, [colours[i] for i in obj_ids], drawn))
            if args.gif_max_side:
                im.thumbnail((args.gif_max_side, args.gif_max_side), Image.Resampling.BILINEAR)
            gif[t] = im
            bar.update()
            if ctrl_c.requested:
                break

    with StopOnCtrlC():  # a Ctrl-C now does not cut these files short (a second one does)
        done = sorted(gif)  # every frame unless interrupted
        if len(done) < num:  # keep the frames tracked, in frame order
            logits_all = None if logits_all is None else logits_all[done]
            scores = scores[done]
        written = [f"{len(done)} mask PNGs" if per_object is None else
                   f"{len(done)} x {len(per_object)} per-object mask PNGs"]
        if logits_all is not None:
            np.savez_compressed(args.out / "masks.npz", logits=logits_all, object_score=scores,
                                obj_ids=np.asarray(obj_ids, dtype=np.int64), frames=np.asarray(frames.names)[done])
            written.append("masks.npz")
        fps = args.fps or frames.fps or GIF_FPS
        ordered = [gif[t] for t in done]
        ordered[0].save(args.out / "overlay.gif", save_all=True, append_images=ordered[1:], loop=0,
                        duration=round(1000 / fps))
        written.append("overlay.gif")
    present = int((scores > 0).any(1).sum())
    prompted = sorted({p.frame_idx for p in prompts})
    how = "forward and backward" if k > 0 else "forward"
    if per_object is not None:
        how = "forward from each object's first mask"
        empty = [name for i, name in per_object.items() if i not in obj_ids]
        if empty:
            print(f"object folder(s) {', '.join(empty)} of {args.init_masks}: every PNG empty, written empty")
    over = f"{len(done)} of {num}" if ctrl_c.requested else f"{num}"
    print(f"{'interrupted: ' if ctrl_c.requested else ''}wrote {', '.join(written)} to {args.out}: object(s) "
          f"{', '.join(map(str, obj_ids))} prompted on frame(s) "
          f"{', '.join(f'{t} ({frames.names[t]})' for t in prompted)}, tracked {how} over {over} frames, present "
          f"(object score > 0) on {present}")
    return INTERRUPTED if ctrl_c.requested else 0
