"""The video predictor's frames: what a video can be given as (a frame folder, arrays, preprocessed pixels) -> a
:class:`~edgetam_train.predictor.video_state.VideoState`, and each frame's model input (read lazily from a folder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgetam_train.predictor.image_io import image_hw, read_rgb
from edgetam_train.predictor.preprocess import check_image, frame_to_input
from edgetam_train.predictor.video_state import VideoState, frame_files


def state_from_frames(frames) -> VideoState:
    """State for a video given as a list of (H, W, 3) uint8 RGB arrays (numpy / torch / PIL), a (T, H, W, 3) uint8
    array, or a folder of JPEG/PNG frames (listed now, read when needed). All frames must share one size; raises
    ValueError naming the frame (or file) that does not."""
    if isinstance(frames, (str, os.PathLike)):
        folder = Path(frames)
        if not folder.is_dir():
            raise ValueError(f"frames: {str(folder)!r} is not a directory of JPEG/PNG frames")
        files = frame_files(folder)
        sizes = {}
        for p in files:
            sizes.setdefault(image_hw(p), p.name)  # ValueError naming a file that is not an image
        if len(sizes) > 1:
            raise ValueError(f"frames in {str(folder)!r} differ in size (H, W): "
                             + ", ".join(f"{hw} (e.g. {name})" for hw, name in sizes.items()))
        return VideoState(len(files), next(iter(sizes)), _source=list(files))
    if isinstance(frames, (np.ndarray, Tensor)) and frames.ndim == 4:
        frames = list(frames)
    elif isinstance(frames, (np.ndarray, Tensor)):
        raise ValueError(f"frames: expected a (T, H, W, 3) uint8 array, got shape {tuple(frames.shape)}")
    if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)):
        raise ValueError(f"frames: expected a list of (H, W, 3) uint8 arrays, a (T, H, W, 3) array or a folder, "
                         f"got {type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("frames: the video has no frames")
    checked = [check_image(f, name=f"frame {i}") for i, f in enumerate(frames)]
    hw = checked[0].shape[:2]
    for i, f in enumerate(checked):
        if f.shape[:2] != hw:
            raise ValueError(f"frame {i} has size {f.shape[:2]} but frame 0 has {hw}; all frames must match")
    return VideoState(len(checked), (int(hw[0]), int(hw[1])), _source=checked)


def state_from_pixels(pixels: Tensor, video_hw: tuple[int, int], image_size: int) -> VideoState:
    """State from already preprocessed frames ``pixels`` (T, 3, S, S) float (normalised, S = ``image_size``)
    standing for a video of size ``video_hw`` = (H, W)."""
    s = image_size
    if not isinstance(pixels, Tensor) or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
        shape = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(f"pixels: expected a (T, 3, {s}, {s}) normalised float tensor, got {shape}")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels: expected a normalised float tensor, got dtype {pixels.dtype}")
    if pixels.shape[0] == 0:
        raise ValueError("pixels: the video has no frames")
    h, w = (int(v) for v in video_hw)
    if h < 1 or w < 1:
        raise ValueError(f"video_hw must be positive (H, W), got {tuple(video_hw)}")
    return VideoState(pixels.shape[0], (h, w), _source=pixels.detach())


def frame_input(state: VideoState, frame_idx: int, image_size: int, device: torch.device) -> Tensor:
    """(1, 3, S, S) float32 normalised input of frame ``frame_idx`` on ``device``; a frame file is read now and must
    have the video's size."""
    src = state._source
    if isinstance(src, Tensor):
        return src[frame_idx : frame_idx + 1].to(device, torch.float32)
    frame = src[frame_idx]
    if isinstance(frame, Path):
        frame = check_image(read_rgb(frame), name=str(frame))
        if frame.shape[:2] != state.video_hw:
            raise ValueError(f"{src[frame_idx]} has size {frame.shape[:2]}, expected {state.video_hw}")
    return frame_to_input(frame, image_size)[None].to(device)
