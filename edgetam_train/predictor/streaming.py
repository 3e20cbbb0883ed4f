"""Streaming tracking: frames arrive one at a time (a camera, an endless video) and memory stays flat.

Example::

    tracker = StreamingTracker(VideoPredictor(model, fill_hole_area=8))   # or an ExportedVideoPredictor
    for image in camera:                                                   # (H, W, 3) uint8 RGB
        if user_tapped:
            tracker.add_object(image, obj_id=1, points=[[210, 350]], labels=[1])   # prompt on this frame
        masks = tracker.track(image)                                       # {obj_id: (H, W) float logits}

The tracker drives the offline predictor's own per-frame code (prompted frames, tracking steps, hole filling,
memory encoding, :class:`~edgetam_train.models.memory_bank.MemoryBank` selection) on a
:class:`~edgetam_train.predictor.video_state.VideoState` whose frame source holds only the current frame, so the
masks equal :meth:`VideoPredictor.propagate` on the same frames and prompts. After each frame it drops what SAM 2's
memory selection can no longer read (:meth:`StreamingTracker._prune`):

* each object's conditioning (prompted) frames: kept for good (they grow with prompts, not with frames);
* tracked frames: the spatial memory of the last ``num_maskmem - 1`` frames (more with a memory stride), the object
  pointer of the last ``max_obj_ptrs - 1`` (15) frames; their mask logits only on the current frame.

The one difference from a known-length video: pointer temporal encodings are scaled by ``min(num_frames, 16) - 1``;
an endless stream uses 15 (any video of 16 or more frames does too). Give ``num_frames`` for a clip of known length
to reproduce a shorter video exactly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import Tensor

from edgetam_train.predictor.preprocess import check_image
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_state import VideoState

ENDLESS = 2**62  # num_frames of a stream of unknown length (only min(num_frames, max_obj_ptrs) is ever used)


class StreamingTracker:
    """Track objects over frames given one at a time, in bounded memory.

    Args:
        predictor: a :class:`VideoPredictor` (PyTorch) or an
            :class:`~edgetam_train.predictor.runtimes.ExportedVideoPredictor` (ONNX / ExecuTorch / LiteRT graphs);
            its options (hole filling, bf16 memory ...) apply.
        num_frames: the stream's length when known (a clip); None: endless.
    """

    def __init__(self, predictor: VideoPredictor, num_frames: int | None = None) -> None:
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or None (endless), got {num_frames}")
        self.predictor = predictor
        self.num_frames = num_frames
        model = predictor.model
        stride = max(int(getattr(model, "memory_temporal_stride_for_eval", 1)), 1)
        # after frame t, frame t + 1 reads the spatial memory of frames t - (num_maskmem - 2) * stride .. t and the
        # pointers of t - (max_obj_ptrs - 2) .. t (MemoryBank's selection rules): windows of ages 0 .. window - 1
        self.memory_window = max((int(model.num_maskmem) - 2) * stride + 1, 0)
        self.pointer_window = int(model.max_obj_ptrs_in_encoder) - 1
        self.reset()

    def reset(self) -> None:
        """Forget every object and frame (the next frame is frame 0)."""
        self.state: VideoState | None = None
        self.frame_idx = -1  # index of the last frame opened
        self._pending: np.ndarray | None = None  # a frame opened by add_object, not yet tracked

    @property
    def obj_ids(self) -> list[int]:
        return [] if self.state is None else self.state.obj_ids

    # ------------------------------------------------------------------ frames
    def _open(self, frame) -> None:
        """Make ``frame`` ((H, W, 3) uint8 RGB) the next frame of the stream (the only one the state holds)."""
        image = check_image(frame, name=f"frame {self.frame_idx + 1}")
        hw = (int(image.shape[0]), int(image.shape[1]))
        if self.state is None:
            self.state = VideoState(self.num_frames or ENDLESS, hw)
        elif hw != self.state.video_hw:
            raise ValueError(f"frame {self.frame_idx + 1} has size {hw} but the stream's frames are "
                             f"{self.state.video_hw} (H, W); reset() to start a stream of another size")
        if self.frame_idx + 1 >= self.state.num_frames:
            raise ValueError(f"the stream was declared {self.state.num_frames} frames long (num_frames)")
        self.frame_idx += 1
        self.state._source = {self.frame_idx: image}  # frame_input reads source[frame_idx]
        self.state._features.clear()  # earlier frames are never read again

    def _is_pending(self, frame) -> bool:
        p = self._pending
        if p is None:
            return False
        if frame is p:
            return True
        other = check_image(frame, name="frame")
        return other.shape == p.shape and np.array_equal(other, p)

    # ------------------------------------------------------------------ prompts
    def add_object(self, frame, obj_id: int, points=None, labels=None, box=None, mask=None) -> Tensor:
        """Prompt object ``obj_id`` on ``frame`` ((H, W, 3) uint8 RGB): clicks ``points`` (N, 2) xy in frame pixels
        with ``labels`` (N,) 1/0, and/or ``box`` [x0, y0, x1, y1], or ``mask`` (H, W) bool. A new object, or a
        known one given a new conditioning frame.

        The frame becomes the next frame of the stream (several add_object calls with the same frame prompt several
        objects on it); call :meth:`track` with it next to get every object's mask there.

        Returns:
            (H, W) float mask logits of this object on this frame.
        """
        if not self._is_pending(frame):
            self._open(frame)
            self._pending = self.state._source[self.frame_idx]
        t = self.frame_idx
        if mask is not None:
            if points is not None or box is not None:
                raise ValueError("give either a mask or clicks/box for one object on one frame")
            return self.predictor.add_mask(self.state, t, obj_id, mask)
        return self.predictor.add_clicks(self.state, t, obj_id, points=points, labels=labels, box=box)

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking ``obj_id`` and free its memory."""
        if obj_id not in self.obj_ids:
            raise ValueError(f"unknown obj_id {obj_id}; tracked objects: {self.obj_ids}")
        del self.state.objects[obj_id]

    # ------------------------------------------------------------------ tracking
    def track(self, frame) -> dict[int, Tensor]:
        """Track every object on ``frame`` ((H, W, 3) uint8 RGB): the next frame of the stream, or the frame just
        prompted with :meth:`add_object`.

        Returns:
            {obj_id: (H, W) float mask logits at the frame's size} (empty before the first object).
        """
        if self._is_pending(frame):
            self._pending = None
        else:
            self._open(frame)
        state, t = self.state, self.frame_idx
        if not state.objects:
            return {}
        out: dict[int, Tensor] = {}
        for _, ids, logits in self.predictor._propagate(state, range(t, t + 1), state.obj_ids, reverse=False):
            out = {i: logits[k] for k, i in enumerate(ids)}
        self._prune(t)
        return out

    def _prune(self, t: int) -> None:
        """Drop what frames after ``t`` cannot read: spatial memories older than ``memory_window`` frames, object
        pointers older than ``pointer_window``, mask logits of every frame but ``t``, per-frame prompt records."""
        for obj in self.state.objects.values():
            bank = obj.bank
            for f in list(bank.non_cond):
                age = t - f
                if age >= max(self.memory_window, self.pointer_window):
                    del bank.non_cond[f]
                elif age >= self.memory_window and bank.non_cond[f].memory is not None:
                    bank.non_cond[f] = replace(bank.non_cond[f], memory=None, memory_pos=None, low_res_masks=None)
                elif age > 0 and bank.non_cond[f].low_res_masks is not None:
                    bank.non_cond[f] = replace(bank.non_cond[f], low_res_masks=None)
            for book in (obj.tracked, obj.points, obj.masks):
                for f in [f for f in book if f != t]:
                    del book[f]

    def memory_bytes(self) -> int:
        """Bytes of tensors the tracker holds per the objects' memory banks (memories, pointers, logits)."""
        if self.state is None:
            return 0
        seen: set[int] = set()
        total = 0
        for obj in self.state.objects.values():
            for out in (*obj.bank.cond.values(), *obj.bank.non_cond.values()):
                for x in (out.low_res_masks, out.obj_ptr, out.object_score_logits, out.ious, out.memory):
                    if isinstance(x, Tensor) and id(x) not in seen:
                        seen.add(id(x))
                        total += x.numel() * x.element_size()
        return total
