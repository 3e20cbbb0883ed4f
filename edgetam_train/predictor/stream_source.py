"""Frames one at a time from a frame folder, a video file (PyAV) or a camera (OpenCV), never the whole video in
memory: the sources of ``edgetam-predict stream`` (and of ``edgetam-predict video`` for a video file).

``open_source(spec)`` opens the source and reads its first frame at once, so a missing file, a file that is not a
video or an absent camera is a ValueError / FileNotFoundError naming it before any model is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetam_train.predictor.image_io import read_rgb
from edgetam_train.predictor.preprocess import check_image
from edgetam_train.predictor.video_state import named_frame_files

CAMERA_PREFIX = "camera:"


@dataclass
class FrameSource:
    """An opened source of RGB frames.

    Attributes:
        kind: "folder", "video" or "camera".
        spec: what the user gave (for messages).
        hw: (H, W) of the frames (the first frame's; later frames must match).
        fps: frames per second of a video file or camera; None for a folder.
        names: every frame's name when known up front (a folder's stems), else None (frames are named 00000 ...).
        frames: iterator of (name, (H, W, 3) uint8 RGB), the first frame included.
    """

    kind: str
    spec: str
    hw: tuple[int, int]
    fps: float | None
    names: list[str] | None
    frames: Iterator[tuple[str, np.ndarray]]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return self.frames


def _numbered(frames: Iterator[np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    for t, rgb in enumerate(frames):
        yield f"{t:05d}", rgb


def _checked(frames: Iterator[tuple[str, np.ndarray]], spec: str, hw: tuple[int, int]
             ) -> Iterator[tuple[str, np.ndarray]]:
    for name, rgb in frames:
        if rgb.shape[:2] != hw:
            raise ValueError(f"--source {spec}: frame {name} is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                             f"{hw[1]}x{hw[0]} (W x H); every frame must have one size")
        yield name, rgb


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """Decoded frames of a video file, one at a time; decoder errors become ValueError naming the file."""
    from edgetam_train.data.formats.sav import AV_ERRORS, iter_mp4_frames

    frames = iter_mp4_frames(path)
    while True:
        try:
            _, rgb = next(frames)
        except StopIteration:
            return
        except AV_ERRORS as err:
            raise ValueError(f"--source {path}: cannot decode it as a video ({type(err).__name__}: {err}); expected "
                             "a video file such as .mp4, a folder of JPEG/PNG frames or camera:N") from None
        yield rgb


def _video_fps(path: Path) -> float | None:
    import av

    from edgetam_train.data.formats.sav import AV_ERRORS

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except AV_ERRORS as err:
        raise ValueError(f"--source {path}: cannot decode it as a video ({type(err).__name__}: {err}); expected a "
                         "video file such as .mp4, a folder of JPEG/PNG frames or camera:N") from None
    return float(rate) if rate else None


def _camera_frames(index: int, spec: str) -> tuple[Iterator[np.ndarray], float | None]:
    """Frames of OpenCV camera ``index`` (RGB) and its frame rate; ValueError naming it when absent."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own "can't open" warnings: one line
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise ValueError(f"--source {spec}: no camera at index {index} (OpenCV cv2.VideoCapture({index}) could "
                         "not open it)")
    fps = cap.get(cv2.CAP_PROP_FPS) or None

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[:, :, ::-1])
        finally:
            cap.release()

    return frames(), fps


def open_source(spec: str | Path, max_frames: int | None = None) -> FrameSource:
    """Open ``spec``: a folder of .jpg/.jpeg/.png frames (numeric names in numeric order), a video file, or
    ``camera:N`` (OpenCV device N); at most ``max_frames`` frames when given. Reads the first frame now; raises
    FileNotFoundError / ValueError naming ``spec`` (missing, not a video, no frames, camera absent)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    text = str(spec)
    names = None
    if text.startswith(CAMERA_PREFIX):
        index = text[len(CAMERA_PREFIX):]
        if not index.isdigit():
            raise ValueError(f"--source {text}: expected camera:N with N the camera's index (camera:0)")
        kind, (frames, fps) = "camera", _camera_frames(int(index), text)
        named = _numbered(frames)
    else:
        path = Path(spec)
        if path.is_dir():
            files = named_frame_files(path, max_frames, "--source")
            kind, fps = "folder", None
            named = ((p.stem, check_image(read_rgb(p), name=str(p))) for p in files)
        elif not path.exists():
            raise FileNotFoundError(f"--source {path} does not exist (expected a video file, a frame folder or "
                                    "camera:N)")
        else:
            kind, fps = "video", _video_fps(path)
            named = _numbered(_video_frames(path))
    if max_frames is not None:
        named = itertools.islice(named, max_frames)
    first = next(named, None)
    if first is None:
        raise ValueError(f"--source {text}: no frames")
    hw = (int(first[1].shape[0]), int(first[1].shape[1]))
    return FrameSource(kind, text, hw, fps, names, _checked(itertools.chain([first], named), text, hw))
