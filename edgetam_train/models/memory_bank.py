"""Per-object memory bank of a tracked video, and the official rules for which past frames a frame reads.

The bank stores one :class:`FrameOutput` per processed frame, split into conditioning frames (frames the user or
the prompt simulation prompted) and non-conditioning frames (frames predicted from memory). It knows nothing about
model weights: :meth:`SAM2Model.read_memory` turns the frames chosen here into memory tokens.

Selection rules (SAM 2):
- spatial memories: the (up to ``max_cond_frames``, temporally closest) conditioning frames at temporal position 0,
  then the last ``num_maskmem - 1`` frames before the current one at positions ``1 .. num_maskmem - 1`` (stride ``r``
  under the inference rules for r > 1), a missing frame is skipped;
- object pointers: the selected conditioning frames (``only_past``: only those not in the future, SAM 2's eval rule;
  in training SAM 2 also reads conditioning frames later in the clip), then up to ``max_obj_ptrs - 1`` frames
  immediately before the current one.

The caller passes the rule (``stride``, ``only_past``); :class:`~edgetam_train.models.step_rules.StepRules` decides it
explicitly, not ``nn.Module.training``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class FrameOutput:
    """What one frame step produced for a batch of B objects.

    Attributes:
        low_res_masks: (B, 1, S/4, S/4) best mask logits.
        high_res_masks: (B, 1, S, S) best mask logits upsampled to the model input size.
        obj_ptr: (B, 256) object pointer.
        object_score_logits: (B, 1) object-presence logit.
        ious: (B, M) predicted IoUs of the M candidate masks.
        multimasks: (B, M, S/4, S/4) all candidate low-res mask logits.
        memory: (B, N, 64) memory tokens of this frame (None until the memory encoder ran).
        memory_pos: (B, N, 64) their position encoding.
        pix_feat: (B, 256, S/16, S/16) the memory-conditioned feature map F_M the decoder read.
    """

    low_res_masks: Tensor
    high_res_masks: Tensor
    obj_ptr: Tensor
    object_score_logits: Tensor
    ious: Tensor
    multimasks: Tensor
    memory: Tensor | None = None
    memory_pos: Tensor | None = None
    pix_feat: Tensor | None = None


@dataclass
class MemoryBank:
    """Frame outputs of one tracked batch of objects, keyed by frame index."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)
    non_cond: dict[int, FrameOutput] = field(default_factory=dict)

    def add(self, frame_idx: int, out: FrameOutput, is_cond: bool) -> None:
        """Store ``out`` as frame ``frame_idx``; a frame is either conditioning or not, never both."""
        (self.cond if is_cond else self.non_cond)[frame_idx] = out
        (self.non_cond if is_cond else self.cond).pop(frame_idx, None)

    def get(self, frame_idx: int) -> FrameOutput | None:
        return self.cond.get(frame_idx, self.non_cond.get(frame_idx))

    def __len__(self) -> int:
        return len(self.cond) + len(self.non_cond)

    def split_cond(self, frame_idx: int, max_cond_frames: int) -> tuple[dict[int, FrameOutput], dict[int, FrameOutput]]:
        """Conditioning frames split into (selected, unselected): at most ``max_cond_frames`` (-1: all) closest ones.

        With a limit, the closest frame before and the closest frame at/after ``frame_idx`` are always kept, then the
        rest by temporal distance, as SAM 2 does.
        """
        if max_cond_frames == -1 or len(self.cond) <= max_cond_frames:
            return dict(self.cond), {}
        if max_cond_frames < 2:
            raise ValueError(f"max_cond_frames must be -1 or >= 2, got {max_cond_frames}")
        selected: dict[int, FrameOutput] = {}
        before = max((t for t in self.cond if t < frame_idx), default=None)
        after = min((t for t in self.cond if t >= frame_idx), default=None)
        for t in (before, after):
            if t is not None:
                selected[t] = self.cond[t]
        rest = sorted((t for t in self.cond if t not in selected), key=lambda t: abs(t - frame_idx))
        for t in rest[: max_cond_frames - len(selected)]:
            selected[t] = self.cond[t]
        unselected = {t: v for t, v in self.cond.items() if t not in selected}
        return selected, unselected

    def memory_frames(self, frame_idx: int, num_maskmem: int, max_cond_frames: int = -1, stride: int = 1,
                      reverse: bool = False) -> list[tuple[int, FrameOutput]]:
        """Frames whose spatial memory ``frame_idx`` reads, as (temporal position, output); position 0 = cond."""
        selected, unselected = self.split_cond(frame_idx, max_cond_frames)
        frames = [(0, out) for out in selected.values()]
        sign = -1 if reverse else 1
        for t_pos in range(1, num_maskmem):
            t_rel = num_maskmem - t_pos  # frames before the current one
            if t_rel == 1:
                prev = frame_idx - sign
            elif not reverse:
                prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            out = self.non_cond.get(prev, unselected.get(prev))
            if out is not None:
                frames.append((t_pos, out))
        return frames

    def pointer_frames(self, frame_idx: int, num_frames: int, max_obj_ptrs: int, max_cond_frames: int = -1,
                       only_past: bool = False, reverse: bool = False, signed: bool = False
                       ) -> list[tuple[int, Tensor]]:
        """Object pointers ``frame_idx`` reads, as (temporal distance, pointer (B, 256))."""
        selected, unselected = self.split_cond(frame_idx, max_cond_frames)
        sign = -1 if reverse else 1
        ptrs = []
        for t, out in selected.items():
            if only_past and (t < frame_idx if reverse else t > frame_idx):
                continue
            dist = (frame_idx - t) * sign if signed else abs(frame_idx - t)
            ptrs.append((dist, out.obj_ptr))
        for t_diff in range(1, min(num_frames, max_obj_ptrs)):
            t = frame_idx - sign * t_diff
            if t < 0 or t >= num_frames:
                break
            out = self.non_cond.get(t, unselected.get(t))
            if out is not None:
                ptrs.append((t_diff, out.obj_ptr))
        return ptrs
