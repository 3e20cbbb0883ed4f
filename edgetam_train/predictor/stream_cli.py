"""``edgetam-predict stream``: track objects over a video file, a frame folder or a camera, one frame at a time in
bounded memory (:class:`~edgetam_train.predictor.streaming.StreamingTracker`)::

    edgetam-predict stream --ckpt edgetam.pt --source clip.mp4 --obj-id 1 --points "210,350" --labels 1 \
        --obj-id 2 --frame-idx 30 --box 300,0,500,400 --out res            # object 2 enters on frame 30
    edgetam-predict stream --ckpt edgetam.pt --source camera:0 --points "320,240" --labels 1 --out cam --max-frames 300

Prompts: the options of ``edgetam-predict video`` (:mod:`.video_prompts`); ``--frame-idx`` is the frame at which the
object enters the stream (or gets another conditioning frame). Frames are decoded and processed one by one; nothing
runs backwards, so an object has no mask before its entry frame (``edgetam-predict video`` tracks it backwards there;
from its entry frame on the two commands write the same PNGs). Writes into ``OUT``:

* ``<frame>.png`` per frame: the palette PNG of ``edgetam-predict video`` (pixel value = object id);
* ``overlay.mp4``: the frames with each object's mask in its colour and its prompts drawn on their frame, longer
  side at most ``--video-max-side``.

Ctrl-C stops after the current frame, closes ``overlay.mp4`` and prints one line (exit status 130); a second Ctrl-C
stops at once, still closing ``overlay.mp4``. PNGs are written under a temporary name and renamed, so none is ever
left half-written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.cli_common import add_model_arguments, check_output_folder, load_model
from edgetam_train.drawing import DrawnPrompt, draw_overlay, object_colours
from edgetam_train.predictor.mask_pngs import label_png, save_png
from edgetam_train.predictor.runtimes import add_runtime_arguments, video_predictor
from edgetam_train.predictor.stream_source import open_source
from edgetam_train.predictor.streaming import StreamingTracker
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_prompts import ObjectPrompt, add_video_prompt_arguments, collect_prompts
from edgetam_train.progress import INTERRUPTED, StopOnCtrlC

DEFAULT_FPS = 10.0  # overlay.mp4 frame rate for a frame folder


class Mp4Writer:
    """H.264 mp4 written frame by frame with PyAV (the size is fixed by the first frame, rounded down to even)."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=max(round(fps), 1))
        self.stream.pix_fmt, self.stream.options = "yuv420p", {"crf": "23", "preset": "veryfast"}
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import av

        if self.size is None:
            self.size = (rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2)
            self.stream.width, self.stream.height = self.size
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self.size[1], : self.size[0]]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.size is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgetam-predict stream``."""
    add_model_arguments(parser)  # --ckpt, --model, --image-size, --device
    add_runtime_arguments(parser)  # --runtime, --model-dir
    parser.add_argument("--source", required=True,
                        help="video file (decoded frame by frame with PyAV), folder of .jpg/.jpeg/.png frames, or "
                             "camera:N (OpenCV camera index N)")
    add_video_prompt_arguments(parser)  # --obj-id groups, --frame-idx (entry frame), --prompts, --init-masks
    parser.add_argument("--out", required=True, type=Path, help="output folder: <frame>.png per frame, overlay.mp4")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: all)")
    parser.add_argument("--fill-hole-area", type=int, default=8,
                        help="fill background holes up to this many low-res pixels (default 8; 0: off)")
    parser.add_argument("--video-max-side", type=int, default=480,
                        help="shrink overlay.mp4 so its longer side is at most this (default 480; 0: frame size)")
    parser.add_argument("--fuse", action="store_true", help="fuse RepViT / high-res projections for speed")
    parser.epilog = ("Each --obj-id starts an object, its --frame-idx is the frame it enters on (default 0). Frames "
                     "are processed one by one, forward only; Ctrl-C stops after the current frame with the files "
                     "written so far complete (exit status 130).")


def _prompt(tracker: StreamingTracker, rgb: np.ndarray, p: ObjectPrompt) -> None:
    try:
        if p.mask is not None:
            tracker.add_object(rgb, p.obj_id, mask=p.mask)
        else:
            tracker.add_object(rgb, p.obj_id, points=p.points, labels=p.labels, box=p.box)
    except ValueError as err:
        raise ValueError(f"{p.source}: {err}") from None


def run_stream(args: argparse.Namespace) -> int:
    """``edgetam-predict stream``: prompt objects as their entry frames arrive, track every frame, write PNGs and
    overlay.mp4 as it goes."""
    from tqdm import tqdm

    from edgetam_train.data.formats.vos import voc_palette

    if args.video_max_side < 0 or args.fill_hole_area < 0:
        raise ValueError(f"--video-max-side and --fill-hole-area must be >= 0, got {args.video_max_side}, "
                         f"{args.fill_hole_area}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; expected a folder (created if missing)")
    check_output_folder(args.out)
    source = open_source(args.source, args.max_frames)  # reads the first frame: a bad source fails here
    prompts = collect_prompts(args, source.names, source.hw)
    predictor = video_predictor(args, lambda: VideoPredictor(load_model(args), fill_hole_area=args.fill_hole_area,
                                                             fuse=args.fuse))
    tracker = StreamingTracker(predictor)
    obj_ids = list(dict.fromkeys(p.obj_id for p in prompts))  # order of first mention = PNG stacking order
    colours = dict(zip(obj_ids, object_colours(len(obj_ids))))
    by_frame: dict[int, list[ObjectPrompt]] = {}
    for p in prompts:
        by_frame.setdefault(p.frame_idx, []).append(p)

    args.out.mkdir(parents=True, exist_ok=True)
    writer = Mp4Writer(args.out / "overlay.mp4", source.fps or DEFAULT_FPS)
    palette, h, w = voc_palette(), *source.hw
    count, start = 0, time.perf_counter()
    with StopOnCtrlC() as ctrl_c:  # the first Ctrl-C ends the loop after the frame; a second one stops it at once
        try:
            with tqdm(desc=f"streaming {source.kind}", unit="frame", total=args.max_frames, disable=None) as bar:
                for t, (name, rgb) in enumerate(source):
                    for p in by_frame.get(t, []):
                        _prompt(tracker, rgb, p)
                    logits = tracker.track(rgb)
                    masks = np.zeros((len(obj_ids), h, w), dtype=bool)
                    for k, i in enumerate(obj_ids):
                        if i in logits:
                            masks[k] = predictor.masks_from_logits(logits[i]).cpu().numpy()
                    save_png(label_png(masks, obj_ids, palette), args.out / f"{name}.png")
                    drawn = [DrawnPrompt(p.points, p.labels, p.box, colours[p.obj_id]) for p in by_frame.get(t, [])]
                    im = Image.fromarray(draw_overlay(rgb, masks, [colours[i] for i in obj_ids], drawn))
                    if args.video_max_side:
                        im.thumbnail((args.video_max_side, args.video_max_side), Image.Resampling.BILINEAR)
                    writer.write(np.asarray(im))
                    count += 1
                    bar.update()
                    if ctrl_c.requested:
                        break
        except KeyboardInterrupt:
            ctrl_c.requested = True
        finally:
            writer.close()
    interrupted = ctrl_c.requested
    fps = count / max(time.perf_counter() - start, 1e-9)
    missed = sorted({p.frame_idx for p in prompts if p.frame_idx >= count})
    print(f"{'interrupted: ' if interrupted else ''}wrote {count} mask PNGs and overlay.mp4 to {args.out}: "
          f"object(s) {', '.join(map(str, obj_ids))} over {count} frames of {source.spec} at {fps:.1f} frames/s"
          + (f"; prompt frame(s) {missed} never reached" if missed else ""))
    return INTERRUPTED if interrupted else 0
