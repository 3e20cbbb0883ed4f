"""SA-V clip dataset (stage 2): ``clip_len`` consecutive annotated frames of a video, up to ``max_objects`` masklets.

The files (json, mp4, extracted frames) are read by :mod:`edgetam_train.data.formats.sav`; the item is a clip as
described in :mod:`edgetam_train.data.datasets.clips`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetam_train.data.datasets.clips import ClipDataset, RawClip, sample_objects, sample_window
from edgetam_train.data.formats.sav import (
    ANN_EVERY,
    FRAMES_DIRNAME,
    check_frame_count,
    decode_masklet,
    mp4_info,
    read_jpg_frames,
    read_mp4_frames,
    read_sav_json,
    scan_annotations,
    video_id_of,
    visibility,
)
from edgetam_train.data.skips import BadSample
from edgetam_train.data.transforms import resize_frames


class SAVDataset(ClipDataset):
    """SA-V clips: ``clip_len`` consecutive annotated frames, up to ``max_objects`` masklets (see ``clips``).

    Args:
        root: directory tree holding ``sav_*.mp4`` + ``sav_*_<kind>.json``.
        frames_root: directory of extracted frames ``<frames_root>/<video>/<frame:05d>.jpg`` (default
            ``<root>/JPEGImages_24fps``).
        source: "auto" (extracted frames when the video's frame directory exists, else the mp4), "frames" or "mp4".
        annotations: which jsons are samples: ("manual",), ("auto",) or both (each json is one sample).
        split_file: optional text file of video ids (``sav_000001``) to use, one per line ('#' comments).
        files: optional explicit list of json paths relative to ``root`` (wins over the scan and ``split_file``).
        ann_every: video frames per annotated frame (4 for SA-V).
        decode_threads: FFmpeg threads per mp4 decode (1 suits many DataLoader workers).
        **clip_kwargs: ``ClipDataset`` arguments (image_size, clip_len, max_objects, augment, reverse_p, seed, ...).
    """

    name = "sav"

    def __init__(
        self,
        root: str | Path,
        frames_root: str | Path | None = None,
        source: str = "auto",
        annotations: Sequence[str] = ("manual",),
        split_file: str | Path | None = None,
        files: Sequence[str] | None = None,
        ann_every: int = ANN_EVERY,
        decode_threads: int = 1,
        **clip_kwargs: Any,
    ) -> None:
        super().__init__(**clip_kwargs)
        if source not in ("auto", "frames", "mp4"):
            raise ValueError(f"source must be 'auto', 'frames' or 'mp4', got {source!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SA-V root {self.root} is not a directory (config data.datasets.sav.root)")
        self.frames_root = Path(frames_root) if frames_root is not None else self.root / FRAMES_DIRNAME
        self.source, self.ann_every, self.decode_threads = source, ann_every, decode_threads
        if files is None:
            files = scan_annotations(self.root, tuple(annotations), skip_dirs=(FRAMES_DIRNAME, self.frames_root.name))
            if split_file is not None:
                keep = {line.split("#", 1)[0].strip() for line in Path(split_file).read_text().splitlines()}
                files = [f for f in files if video_id_of(f) in keep]
        # numpy bytes: shared copy-on-write by DataLoader workers (see SA1BDataset)
        self._files = np.array([f.encode() for f in files], dtype=np.bytes_)
        if len(self._files) == 0:
            kinds = ", ".join(f"*_{k}.json" for k in annotations)
            raise FileNotFoundError(f"no SA-V annotations ({kinds}) under {self.root} (config data.datasets.sav.root)")

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[str]:
        """The json paths relative to ``root``, in index order."""
        return [f.decode() for f in self._files]

    def sources(self, json_path: Path, video_id: str) -> tuple[Path | None, Path]:
        """(frame directory or None, mp4 path) of a video, following ``source``."""
        frames_dir = self.frames_root / video_id
        mp4 = json_path.with_name(f"{video_id}.mp4")
        use_frames = self.source == "frames" or (self.source == "auto" and frames_dir.is_dir())
        return (frames_dir if use_frames else None), mp4

    def load_raw(self, index: int, rng: np.random.Generator) -> RawClip:
        """Read the json, sample the clip and objects, read only the clip's frames and decode only its masks."""
        json_path = self.root / self._files[index].decode()
        record = read_sav_json(json_path)
        masklet, video_id = record["masklet"], video_id_of(json_path.name)
        num_annotated = len(masklet)
        if num_annotated < self.clip_len:
            raise BadSample("too_short", str(json_path), f"{num_annotated} annotated frames < clip_len {self.clip_len}")
        frames_dir, mp4 = self.sources(json_path, video_id)
        if frames_dir is None:
            count, height, width = mp4_info(mp4)
            check_frame_count(count, num_annotated, mp4, "the mp4's frame count", self.ann_every)
            if record["video_frame_count"] not in (None, count):
                raise BadSample("frame_count_mismatch", str(mp4),
                                f"the mp4 has {count} frames, video_frame_count says {record['video_frame_count']}")
        visible = visibility(masklet, json_path)
        positions = sample_window(visible.any(1), self.clip_len, self.reverse_p, rng)
        if positions is None:
            raise BadSample("no_masks", str(json_path), "no clip starts on a frame with a visible object")
        objects = sample_objects(np.flatnonzero(visible[positions[0]]), self.max_objects, rng)
        frame_idx = positions * self.ann_every
        if frames_dir is None:
            decoded, source_path = read_mp4_frames(mp4, frame_idx, self.decode_threads), mp4
        else:
            decoded, source_path = read_jpg_frames(frames_dir, frame_idx), frames_dir
        frames = [decoded[int(i)] for i in frame_idx]
        h, w = frames[0].shape[:2]
        expected = (record["height"] or h, record["width"] or w)
        for i, frame in zip(frame_idx, frames):
            if frame.shape[:2] != expected:
                raise BadSample("size_mismatch", str(source_path),
                                f"frame {int(i)} is {frame.shape[1]}x{frame.shape[0]}, the json says "
                                f"{expected[1]}x{expected[0]}")
        masks = np.stack([decode_masklet([masklet[p][k] for k in objects], h, w, self.image_size, json_path)
                          for p in positions])
        return RawClip(frames=resize_frames(frames, self.image_size), masks=masks, obj_ids=objects,
                       frame_idx=frame_idx, orig_hw=(h, w), video=video_id, path=str(source_path))
