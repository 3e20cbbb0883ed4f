"""SA-V videos for stage-2 distillation: ``sav_*.mp4`` or extracted frames + ``sav_*_manual.json`` / ``_auto.json``.

Layout (the official tars extract to ``sav_train/sav_000/...``; any depth works, videos are found by their json)::

    <root>/sav_000/sav_000001.mp4
    <root>/sav_000/sav_000001_manual.json      (and sav_000001_auto.json)
    <root>/JPEGImages_24fps/sav_000001/00000.jpg, 00004.jpg, ...   optional, scripts/extract_sav_frames.py

The json (official SA-V schema) holds ``masklet``: a list over the annotated frames (every 4th frame of the 24 fps
video, i.e. 6 fps) of per-object COCO RLEs (an object absent on a frame has an empty RLE; ``None`` is accepted too),
and metadata: ``video_id``, ``video_frame_count``, ``video_height``, ``video_width``, ``masklet_num``,
``masklet_frame_count`` (per object: the number of annotated frames), ``masklet_first_appeared_frame``, ...
Annotated frame ``k`` is frame ``4 k`` of the video, ``JPEGImages_24fps/<video>/<4k:05d>.jpg`` once extracted.

Frames come from the extracted jpgs when ``<frames_root>/<video>`` exists (``source="auto"``; faster: no video
decoding), else from the mp4, decoded with PyAV (FFmpeg): seek to the key frame before the clip, decode forward,
frames identified by their timestamps. Both give the same clip up to JPEG re-encoding (tested).

Bad videos are skipped and counted (``SkipCounter``): unreadable json (bad_json), inconsistent masklet
(bad_annotation), fewer annotated frames than the clip (too_short), masklet length that disagrees with the video's
frame count (frame_count_mismatch), a missing or short frame source (missing_frame), an unreadable mp4
(corrupt_video) or jpg (corrupt_image), frame / RLE sizes that disagree (size_mismatch), a malformed RLE (bad_rle),
no frame with a visible object (no_masks).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import av
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.rle import decode_resized
from edgetam_train.data.skips import BadSample, read_json

ANN_EVERY = 4  # SA-V annotates every 4th frame of its 24 fps videos (6 fps)
FRAMES_DIRNAME = "JPEGImages_24fps"
DONE_MARKER = ".extracted"  # written by extract_frames when a video directory is complete


# --------------------------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------------------------


def scan_annotations(root: str | Path, kinds: Sequence[str] = ("manual",), skip_dirs: Sequence[str] = (FRAMES_DIRNAME,)
                     ) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of every ``*_<kind>.json`` (kind in ``kinds``).

    Walks ``root`` with ``os.scandir`` (names only); hidden entries and directories named in ``skip_dirs`` (the
    extracted frames: millions of jpgs) are not entered.
    """
    suffixes = tuple(f"_{k}.json" for k in kinds)
    root = str(root)
    found: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir)) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir():
                    if entry.name not in skip_dirs:
                        stack.append(rel)
                elif entry.name.endswith(suffixes):
                    found.append(rel)
    return sorted(found)


def video_id_of(json_name: str) -> str:
    """``"sav_000/sav_000001_manual.json"`` -> ``"sav_000001"`` (the name before the last ``_<kind>.json``)."""
    return Path(json_name).name.rsplit("_", 1)[0]


# --------------------------------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------------------------------


def _as_int(value: Any, key: str, path: Path) -> int | None:
    """An integral json number (SA-V stores some counts as floats, e.g. 483.0) as int; None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise BadSample("bad_annotation", str(path), f"{key} must be an integer, got {value!r}")


def read_sav_json(path: Path) -> dict[str, Any]:
    """Parse and check an SA-V annotation json.

    Returns {"video_id", "masklet" (list over annotated frames of K RLE dicts or None), "num_objects" K,
    "height", "width" (None when not given), "video_frame_count" (None when not given)}.
    Raises ``BadSample`` bad_json (not json / no masklet list), bad_annotation (frames with different object counts,
    counts that disagree with ``masklet_num``), frame_count_mismatch (``masklet_frame_count`` or
    ``video_frame_count`` disagree with the masklet length), no_masks (no objects).
    """
    record = read_json(path)
    masklet = record.get("masklet") if isinstance(record, dict) else None
    if not isinstance(masklet, list) or not all(isinstance(frame, list) for frame in masklet):
        raise BadSample("bad_json", str(path), "expected {'masklet': [[rle per object] per annotated frame], ...}")
    counts = {len(frame) for frame in masklet}
    if len(counts) > 1:
        raise BadSample("bad_annotation", str(path), f"annotated frames have different object counts {sorted(counts)}")
    num_objects = counts.pop() if counts else 0
    declared = _as_int(record.get("masklet_num"), "masklet_num", path)
    if declared is not None and declared != num_objects:
        raise BadSample("bad_annotation", str(path), f"masklet_num={declared} but frames hold {num_objects} objects")
    if num_objects == 0:
        raise BadSample("no_masks", str(path), "the masklet has no objects")
    frame_counts = record.get("masklet_frame_count")
    if frame_counts is not None:
        if not isinstance(frame_counts, list) or len(frame_counts) != num_objects:
            raise BadSample("bad_annotation", str(path), f"masklet_frame_count must list {num_objects} counts")
        wrong = sorted({_as_int(c, "masklet_frame_count", path) for c in frame_counts} - {len(masklet)})
        if wrong:
            raise BadSample("frame_count_mismatch", str(path),
                            f"masklet_frame_count says {wrong} annotated frames, the masklet has {len(masklet)}")
    video_frames = _as_int(record.get("video_frame_count"), "video_frame_count", path)
    if video_frames is not None:
        check_frame_count(video_frames, len(masklet), path, "video_frame_count")
    return {
        "video_id": str(record.get("video_id") or video_id_of(path.name)),
        "masklet": masklet,
        "num_objects": num_objects,
        "height": _as_int(record.get("video_height"), "video_height", path),
        "width": _as_int(record.get("video_width"), "video_width", path),
        "video_frame_count": video_frames,
    }


def check_frame_count(video_frames: int, num_annotated: int, path: Path | str, what: str,
                      ann_every: int = ANN_EVERY) -> None:
    """Raise ``BadSample`` frame_count_mismatch unless frames 0, ann_every, ... of a ``video_frames``-frame video are
    exactly ``num_annotated`` frames (``ceil(video_frames / ann_every) == num_annotated``)."""
    if math.ceil(video_frames / ann_every) != num_annotated:
        raise BadSample("frame_count_mismatch", str(path),
                        f"{what}={video_frames} frames give {math.ceil(video_frames / ann_every)} annotated frames "
                        f"(every {ann_every}th), the masklet has {num_annotated}")


def rle_area(rle: Any) -> int:
    """Pixel count of one masklet entry without decoding it (0 for ``None``); raises ValueError when malformed."""
    if rle is None:
        return 0
    if not isinstance(rle, dict) or "size" not in rle or not isinstance(rle.get("counts"), (str, bytes)):
        raise ValueError("masklet entry is not a {'size', 'counts'} RLE dict")
    return int(mask_utils.area(rle))


def visibility(masklet: list[list[Any]], path: Path) -> np.ndarray:
    """bool (num annotated frames, K): object k has pixels on annotated frame f. Raises ``BadSample`` bad_rle."""
    try:
        return np.array([[rle_area(rle) > 0 for rle in frame] for frame in masklet], dtype=bool)
    except (ValueError, TypeError, KeyError) as e:
        raise BadSample("bad_rle", str(path), str(e)) from None


def decode_masklet(entries: Sequence[Any], h: int, w: int, size: int, path: Path) -> np.ndarray:
    """uint8 (len(entries), size, size): each entry checked, decoded and resized to the S×S grid; None -> zeros.

    Raises ``BadSample`` bad_rle (malformed RLE, or one whose size is not (h, w)).
    """
    return decode_resized(entries, h, w, size, path, what="object", none_is_empty=True)


# --------------------------------------------------------------------------------------------------------------------
# Frames: mp4 (PyAV) and extracted jpgs
# --------------------------------------------------------------------------------------------------------------------

AV_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError)


def _frame_index(frame: av.VideoFrame, start: int, time_base: Fraction, rate: Fraction) -> int:
    """Index of a decoded frame in a constant-frame-rate stream, from its timestamp."""
    return round((frame.pts - start) * time_base * rate)


def mp4_info(path: Path) -> tuple[int, int, int]:
    """(frame count, height, width) of an mp4's first video stream, from the container (nothing decoded).

    The count is the container's exact sample count (mp4 ``stts``); when a container does not store it, the video
    packets are counted. Raises ``BadSample`` missing_frame (no file) / corrupt_video.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            return int(count), int(stream.codec_context.height), int(stream.codec_context.width)
    except FileNotFoundError:
        raise BadSample("missing_frame", str(path), "no mp4 and no extracted frames") from None
    except AV_ERRORS as e:
        raise BadSample("corrupt_video", str(path), f"{type(e).__name__}: {e}") from None


def iter_mp4_frames(path: Path, first: int = 0, last: int | None = None, select: Callable[[int], bool] | None = None,
                    threads: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, uint8 (H, W, 3) RGB) for frames ``first`` .. ``last`` (inclusive; None: to the end) of an
    mp4, only those for which ``select(index)`` is true when given (the others are decoded, not converted to RGB).

    Seeks to the key frame at or before ``first`` and decodes forward; frame indices come from the timestamps
    (constant frame rate, as SA-V videos are) when seeking, else from counting. Raises FFmpeg / OS errors as they are.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads != 1:  # 0 = FFmpeg's choice; frame + slice threading
            stream.thread_type, stream.thread_count = "AUTO", threads
        rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
        start = stream.start_time or 0
        by_pts = first > 0 and rate is not None and time_base is not None
        if by_pts:
            container.seek(start + int(first / (rate * time_base)), stream=stream, backward=True, any_frame=False)
        for count, frame in enumerate(container.decode(stream)):
            if by_pts and frame.pts is None:
                raise ValueError("frame without timestamp after a seek")
            index = _frame_index(frame, start, time_base, rate) if by_pts else count
            if last is not None and index > last:
                return
            if index >= first and (select is None or select(index)):
                yield index, frame.to_ndarray(format="rgb24")


def read_mp4_frames(path: Path, indices: Sequence[int], threads: int = 1) -> dict[int, np.ndarray]:
    """{index: uint8 (H, W, 3) RGB} for the frame ``indices`` of an mp4; decoding stops after the last one.

    Raises ``BadSample`` corrupt_video (FFmpeg error) / missing_frame (the video ends before an index).
    """
    wanted = set(int(i) for i in indices)
    try:
        frames = dict(iter_mp4_frames(path, min(wanted), max(wanted), wanted.__contains__, threads))
    except AV_ERRORS as e:
        raise BadSample("corrupt_video", str(path), f"{type(e).__name__}: {e}") from None
    missing = sorted(wanted - frames.keys())
    if missing:
        raise BadSample("missing_frame", str(path), f"frames {missing} could not be decoded")
    return frames


def frame_path(frames_dir: Path, index: int) -> Path:
    """``<frames_dir>/<index:05d>.jpg``: frame ``index`` of the 24 fps video."""
    return frames_dir / f"{index:05d}.jpg"


def read_jpg_frames(frames_dir: Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """{index: uint8 (H, W, 3) RGB} from extracted frames. Raises ``BadSample`` missing_frame / corrupt_image."""
    frames = {}
    for i in sorted(set(int(i) for i in indices)):
        try:
            frames[i] = read_image(frame_path(frames_dir, i))
        except BadSample as bad:
            if bad.reason == "missing_image":
                raise BadSample("missing_frame", bad.path, "extracted frame missing (re-run extract_sav_frames.py)")
            raise
    return frames


def extract_frames(mp4: Path, out_dir: Path, every: int = ANN_EVERY, quality: int = 95, resume: bool = True) -> int:
    """Write frames 0, every, 2 every, ... of ``mp4`` to ``out_dir/<index:05d>.jpg``; returns how many were written.

    ``every=1`` extracts all frames. A complete directory gets a ``.extracted`` marker naming ``every``; with
    ``resume`` a directory whose marker covers ``every`` is left as it is (returns 0), so an interrupted run can be
    restarted. Raises ``BadSample`` corrupt_video when the mp4 cannot be decoded.
    """
    out_dir = Path(out_dir)
    marker = out_dir / DONE_MARKER
    if resume and marker.exists():
        try:
            done_every = int(marker.read_text().split("every=")[1].split()[0])
        except (IndexError, ValueError):
            done_every = 0
        if done_every and every % done_every == 0:
            return 0
    written = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    try:
        for index, rgb in iter_mp4_frames(mp4, select=lambda i: i % every == 0):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"JPEG encoding failed for frame {index}")
            if not written:  # created on the first frame: an unreadable video leaves no (empty) frame directory
                out_dir.mkdir(parents=True, exist_ok=True)
            target = frame_path(out_dir, index)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, target)
            written += 1
    except AV_ERRORS as e:
        raise BadSample("corrupt_video", str(mp4), f"{type(e).__name__}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"every={every} written={written}\n")
    return written


# --------------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------------


