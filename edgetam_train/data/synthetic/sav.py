"""SA-V layouts: training (``sav_000/sav_XXXXXX.mp4`` + ``_manual.json`` / ``_auto.json`` masklets + extracted frames)
and val / test (``JPEGImages_24fps/`` + ``Annotations_6fps/<video>/<object>/<frame>.png``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.data.synthetic.scenes import (
    item_rng,
)
from edgetam_train.data.synthetic.videos import (
    SAV_ANN_EVERY,
    VIDEO_FPS,
    VideoScene,
    encode_rle,
    render_video,
    write_mp4,
)


def sav_num_frames(index: int, annotated: int) -> int:
    """24 fps frame count of SA-V video ``index`` with ``annotated`` annotated frames (every 4th, from frame 0)."""
    return SAV_ANN_EVERY * (annotated - 1) + 1 + index % SAV_ANN_EVERY


def sav_record(video_id: str, scene: VideoScene, num_frames: int, objects: Sequence[int], kind: str,
               rng: np.random.Generator) -> dict:
    """SA-V json record (official schema) for ``objects`` of ``scene``, annotated on frames 0, 4, 8, ..."""
    h, w = scene.frames.shape[1:3]
    annotated = scene.visible[::SAV_ANN_EVERY][:, list(objects)]  # (n_ann, K, h, w)
    areas = annotated.sum((2, 3))  # (n_ann, K)
    present = areas > 0
    size_abs = [float(areas[present[:, k], k].mean()) if present[:, k].any() else 0.0 for k in range(len(objects))]
    changes = [int(np.count_nonzero(np.diff(present[np.argmax(present[:, k]):, k].astype(int))))
               for k in range(len(objects))]
    n_ann = len(annotated)
    return {
        "video_id": video_id,
        "video_duration": round(num_frames / VIDEO_FPS, 6),
        "video_frame_count": float(num_frames),
        "video_height": float(h),
        "video_width": float(w),
        "video_resolution": float(h * w),
        "video_environment": "Indoor",
        "video_split": "train",
        "masklet": [[encode_rle(m) for m in frame] for frame in annotated],
        "masklet_id": list(range(len(objects))),
        "masklet_size_rel": [round(a / (h * w), 10) for a in size_abs],
        "masklet_size_abs": [round(a, 10) for a in size_abs],
        "masklet_size_bucket": ["small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in size_abs],
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": [float(np.argmax(present[:, k])) for k in range(len(objects))],
        "masklet_frame_count": [n_ann] * len(objects),
        "masklet_edited_frame_count": [int(rng.integers(0, n_ann)) if kind == "manual" else 0 for _ in objects],
        "masklet_type": [kind] * len(objects),
        "masklet_stability_score": [
            None if kind == "manual" else [round(float(s), 6) for s in rng.uniform(0.9, 1.0, size=n_ann)]
            for _ in objects
        ],
        "masklet_num": len(objects),
    }


def make_sav_item(seed: int, index: int, size: tuple[int, int], annotated: int) -> tuple[VideoScene, dict, dict]:
    """Render SA-V video ``index`` (``sav_<index + 1:06d>``): returns (scene, manual record, auto record).

    4 objects; object 0 leaves the frame and re-enters, object 3 appears after a third of the video. The manual
    json annotates all of them; the auto json the objects visible on frame 0.
    """
    rng = item_rng(seed, "sav", index)
    w, h = size
    num_frames = sav_num_frames(index, annotated)
    scene = render_video(rng, h, w, num_frames, num_objects=4, late_object=True)
    video_id = f"sav_{index + 1:06d}"
    manual = sav_record(video_id, scene, num_frames, range(4), "manual", rng)
    first = [k for k in range(4) if scene.visible[0, k].any()]
    auto = sav_record(video_id, scene, num_frames, first, "auto", rng)
    return scene, manual, auto


def write_sav(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Write ``args.num_videos`` SA-V videos into ``<out_root>/sav/``: ``sav_000/sav_XXXXXX.mp4`` + ``_manual.json`` +
    ``_auto.json``, and their annotated frames extracted to ``JPEGImages_24fps/<video>/<frame:05d>.jpg`` the way
    ``scripts/extract_sav_frames.py`` does. Returns the mp4 paths."""
    from edgetam_train.data.formats.sav import FRAMES_DIRNAME, extract_frames

    out = out_root / "sav"
    (out / "sav_000").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.num_videos):
        annotated = args.video_frames + 4 * (i % 3)
        scene, manual, auto = make_sav_item(args.seed, i, args.video_size, annotated)
        mp4 = out / "sav_000" / f"{manual['video_id']}.mp4"
        write_mp4(mp4, scene.frames)
        mp4.with_name(f"{manual['video_id']}_manual.json").write_text(json.dumps(manual))
        mp4.with_name(f"{manual['video_id']}_auto.json").write_text(json.dumps(auto))
        extract_frames(mp4, out / FRAMES_DIRNAME / manual["video_id"], every=SAV_ANN_EVERY, resume=False)
        paths.append(mp4)
    return paths


def write_sav_val(out_root: Path, args: argparse.Namespace) -> list[Path]:
    """Write ``args.num_videos`` videos in the SA-V val / test layout into ``<out_root>/sav_val/``:
    ``JPEGImages_24fps/<video>/<frame:05d>.jpg`` (every frame),
    ``Annotations_6fps/<video>/<object:03d>/<frame:05d>.png`` (one binary 0/255 PNG per object on every 4th frame,
    empty where the object is absent; object 003 appears late, object 000 leaves and re-enters) and ``sav_val.txt``
    (the video names). ``args.video_frames`` annotated frames per video, 0-3 unannotated frames after the last.
    Returns the frame folders."""
    out = out_root / "sav_val"
    paths, names = [], []
    w, h = args.video_size
    for i in range(args.num_videos):
        name = f"sav_{i + 1:06d}"
        scene = render_video(item_rng(args.seed, "sav_val", i), h, w, sav_num_frames(i, args.video_frames),
                             num_objects=4, late_object=True)
        jpg_dir = out / "JPEGImages_24fps" / name
        jpg_dir.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(scene.frames):
            Image.fromarray(frame).save(jpg_dir / f"{t:05d}.jpg", quality=args.jpeg_quality)
        for k in range(scene.visible.shape[1]):
            obj_dir = out / "Annotations_6fps" / name / f"{k:03d}"
            obj_dir.mkdir(parents=True, exist_ok=True)
            for t in range(0, len(scene.frames), SAV_ANN_EVERY):
                Image.fromarray(scene.visible[t, k].astype(np.uint8) * 255).save(obj_dir / f"{t:05d}.png")
        paths.append(jpg_dir)
        names.append(name)
    (out / "sav_val.txt").write_text("".join(f"{n}\n" for n in names))
    return paths
