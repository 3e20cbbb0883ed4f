"""Video predictor: click / box / mask prompts on some frames, then track every object through the video.

Example::

    model = build_model("edgetam", checkpoint="edgetam.pt")
    predictor = VideoPredictor(model, fill_hole_area=8)
    state = predictor.init_state("video_frames/")                 # a folder of JPEG/PNG frames, or arrays
    logits = predictor.add_clicks(state, frame_idx=0, obj_id=1, points=[[210, 350]], labels=[1])   # (H, W)
    for frame_idx, obj_ids, video_logits in predictor.propagate(state):   # video_logits (n_obj, H, W)
        masks = predictor.masks_from_logits(video_logits)                 # bool (n_obj, H, W)

The model of the computation (per-object memory banks, conditioning vs correction frames, what propagation
recomputes), every option and every divergence from the official and transformers predictors, and what was verified
against them: docs/video_predictor.md. Per-video state: :mod:`edgetam_train.predictor.video_state`; what a
video can be given as and each frame's model input: :mod:`edgetam_train.predictor.video_frames`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgetam_train.models.memory_bank import FrameOutput
from edgetam_train.models.outputs import ImageFeatures
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.image import fuse_for_inference
from edgetam_train.predictor.preprocess import scale_points
from edgetam_train.predictor.video_frames import frame_input, state_from_frames, state_from_pixels
from edgetam_train.predictor.video_state import ObjectOutput, VideoState, _TrackedObject

HOLE_FILL_LOGIT = 0.1  # official fill_holes_in_mask_scores value
PREV_LOGITS_CLAMP = 32.0  # official clamp of previous logits fed back with correction clicks


def fill_holes(logits: Tensor, max_area: int) -> Tensor:
    """Official ``fill_holes_in_mask_scores``: background (logit <= 0) 8-connected components of at most
    ``max_area`` pixels (including ones touching the border) get logit 0.1.

    logits (N, 1, h, w) -> (N, 1, h, w) (same dtype / device; a copy).
    """
    import cv2  # OpenCV: installed with albumentations; only needed when hole filling is on

    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    background = (logits <= 0).squeeze(1).cpu().numpy().astype(np.uint8)
    hole = np.zeros_like(background, dtype=bool)
    for i, bg in enumerate(background):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(bg, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA][labels]  # area of each pixel's component (label 0 = foreground)
        hole[i] = (labels > 0) & (area <= max_area)
    hole = torch.from_numpy(hole).to(logits.device)[:, None]
    return torch.where(hole, torch.tensor(HOLE_FILL_LOGIT, dtype=logits.dtype, device=logits.device), logits)


class VideoPredictor:
    """Interactive multi-object video segmentation with a :class:`SAM2Model` (EdgeTAM or SAM 2.1), CPU or CUDA.

    Args:
        model: the model (put in eval mode); the device of its parameters is used for everything.
        fill_hole_area: fill background holes up to this many low-res pixels (0: off; official video builder: 8).
        mask_threshold: logit threshold of :meth:`masks_from_logits`.
        correction_uses_prev_logits: feed an object's previous logits with new prompts on a frame it already has an
            output for (official; transformers: False).
        fuse: fuse the RepViT trunk for speed (modifies ``model`` in place; no effect on Hiera).
        memory_bf16: round stored memory features to bfloat16 (official and ``Sam2VideoModel``; ``EdgeTamVideoModel``:
            False).
        binarize_all_objects_on_prompted_frames: ``Sam2VideoModel``'s memory binarisation of every object recomputed
            on a frame with a fresh prompt (official 1.1.0 / ``EdgeTamVideoModel``: False).
        feature_cache_size: frames whose image features are kept (LRU).
    """

    def __init__(self, model: SAM2Model, fill_hole_area: int = 0, mask_threshold: float = 0.0,
                 correction_uses_prev_logits: bool = True, fuse: bool = False, memory_bf16: bool = True,
                 binarize_all_objects_on_prompted_frames: bool = False, feature_cache_size: int = 4) -> None:
        if fill_hole_area < 0:
            raise ValueError(f"fill_hole_area must be >= 0, got {fill_hole_area}")
        if feature_cache_size < 1:
            raise ValueError(f"feature_cache_size must be >= 1, got {feature_cache_size}")
        self.model = model.eval()
        if fuse:
            fuse_for_inference(self.model)
        self.fill_hole_area = int(fill_hole_area)
        self.mask_threshold = mask_threshold
        self.correction_uses_prev_logits = correction_uses_prev_logits
        self.memory_bf16 = memory_bf16
        self.binarize_all_objects_on_prompted_frames = binarize_all_objects_on_prompted_frames
        self.feature_cache_size = feature_cache_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ------------------------------------------------------------------ state
    def init_state(self, frames) -> VideoState:
        """State for a video given as a list of (H, W, 3) uint8 RGB arrays (numpy / torch / PIL), a (T, H, W, 3)
        uint8 array, or a folder of JPEG/PNG frames (:func:`~edgetam_train.predictor.video_frames.state_from_frames`).
        All frames must share one size."""
        return state_from_frames(frames)

    def init_state_from_tensor(self, pixels: Tensor, video_hw: tuple[int, int]) -> VideoState:
        """State from already preprocessed frames ``pixels`` (T, 3, S, S) float (normalised) standing for a video
        of size ``video_hw`` = (H, W) (tests feed the same pixels to a reference implementation)."""
        return state_from_pixels(pixels, video_hw, self.image_size)

    def _features(self, state: VideoState, frame_idx: int) -> ImageFeatures:
        """Image features of a frame, from the LRU cache or computed now."""
        cache = state._features
        if frame_idx in cache:
            cache.move_to_end(frame_idx)
            return cache[frame_idx]
        feats = self.model.encode_image(frame_input(state, frame_idx, self.image_size, self.device))
        cache[frame_idx] = feats
        while len(cache) > self.feature_cache_size:
            cache.popitem(last=False)
        return feats

    # ------------------------------------------------------------------ checks
    def _check_state(self, state: VideoState) -> None:
        if not isinstance(state, VideoState):
            raise ValueError(f"state: expected a VideoState from init_state(), got {type(state).__name__}")

    def _check_frame(self, state: VideoState, frame_idx, what: str = "frame_idx") -> int:
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise ValueError(f"{what} must be an int, got {type(frame_idx).__name__}")
        if not 0 <= frame_idx < state.num_frames:
            raise ValueError(f"{what} {frame_idx} is out of range: the video has {state.num_frames} frames "
                             f"(valid: 0 .. {state.num_frames - 1})")
        return int(frame_idx)

    @staticmethod
    def _check_obj_id(obj_id) -> int:
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
            raise ValueError(f"obj_id must be an int, got {type(obj_id).__name__}")
        return int(obj_id)

    def _check_inside(self, state: VideoState, xy: Tensor, what: str) -> None:
        h, w = state.video_hw
        outside = [(float(x), float(y)) for x, y in xy.tolist() if not (0 <= x <= w and 0 <= y <= h)]
        if outside:
            raise ValueError(f"{what} coordinates {outside} lie outside the frame of width {w} and height {h}")

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_clicks(self, state: VideoState, frame_idx: int, obj_id: int, points=None, labels=None, box=None,
                   clear_old: bool = False) -> Tensor:
        """Add clicks (and/or a box) for object ``obj_id`` on frame ``frame_idx`` and segment it there.

        Args:
            points: (N, 2) xy in video pixels (with ``labels``), or None.
            labels: (N,) 1 = foreground, 0 = background.
            box: [x0, y0, x1, y1] in video pixels, or None; placed before the clicks (labels 2, 3).
            clear_old: drop the object's earlier clicks on this frame (else the new ones are appended).

        Returns:
            (H, W) float mask logits of this object on this frame at video resolution.
        """
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        obj_id = self._check_obj_id(obj_id)
        if points is None and box is None:
            raise ValueError("no prompt: give points + labels and/or a box")
        coords, labs = [], []
        if box is not None:
            b = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(-1)
            if b.numel() != 4:
                raise ValueError(f"box must be [x0, y0, x1, y1], got {b.numel()} values")
            if not (b[0] <= b[2] and b[1] <= b[3]):
                raise ValueError(f"box must satisfy x0 <= x1 and y0 <= y1, got {b.tolist()}")
            self._check_inside(state, b.view(2, 2), "box")
            coords.append(b.view(2, 2))
            labs.append(torch.tensor([2, 3], dtype=torch.int32))
        if points is not None:
            if labels is None:
                raise ValueError("points given without labels (1 = foreground, 0 = background)")
            pts = torch.as_tensor(np.asarray(points, dtype=np.float32))
            if pts.ndim != 2 or pts.shape[-1] != 2 or pts.shape[0] == 0:
                raise ValueError(f"points must be (N, 2) xy with N >= 1, got shape {tuple(pts.shape)}")
            lab = torch.as_tensor(np.asarray(labels)).reshape(-1)
            if lab.numel() != pts.shape[0]:
                raise ValueError(f"{pts.shape[0]} points but {lab.numel()} labels")
            bad = [v for v in lab.tolist() if v not in (0, 1)]
            if bad:
                raise ValueError(f"point labels must be 0 (background) or 1 (foreground), got {bad}")
            self._check_inside(state, pts, "point")
            coords.append(pts)
            labs.append(lab.to(torch.int32))
        elif labels is not None:
            raise ValueError("labels given without points")
        xy = scale_points(torch.cat(coords)[None], state.video_hw, self.image_size).to(self.device)
        lab = torch.cat(labs)[None].to(self.device)

        obj = state.objects.get(obj_id) or _TrackedObject(obj_id)
        old = None if clear_old else obj.points.get(frame_idx)
        if old is not None:
            if box is not None:
                raise ValueError(f"object {obj_id} already has clicks on frame {frame_idx}: a box must come before "
                                 "any click, pass clear_old=True to replace them")
            xy, lab = torch.cat([old[0], xy], dim=1), torch.cat([old[1], lab], dim=1)
        state.objects[obj_id] = obj
        obj.points[frame_idx] = (xy, lab)
        obj.masks.pop(frame_idx, None)
        out = self._run_prompted(state, obj, frame_idx, point_coords=xy, point_labels=lab)
        return self._video_res(state, out.low_res_masks)[0]

    @torch.inference_mode()
    def add_mask(self, state: VideoState, frame_idx: int, obj_id: int, mask) -> Tensor:
        """Give object ``obj_id``'s mask on frame ``frame_idx``: (H, W) bool / 0-1 array at video resolution
        (nonzero = object). It replaces the object's clicks on that frame and is taken as the prediction.

        Returns:
            (H, W) float mask logits of this object on this frame at video resolution.
        """
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        obj_id = self._check_obj_id(obj_id)
        m = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask))
        if m.ndim != 2 or tuple(m.shape) != state.video_hw:
            raise ValueError(f"mask must be (H, W) = {state.video_hw} (the video size), got shape {tuple(m.shape)}")
        m = (m != 0).float()[None, None].to(self.device)
        s = self.image_size
        if tuple(m.shape[-2:]) != (s, s):  # official: antialiased bilinear resize, then >= 0.5
            m = F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        obj = state.objects.get(obj_id) or _TrackedObject(obj_id)
        state.objects[obj_id] = obj
        obj.masks[frame_idx] = m
        obj.points.pop(frame_idx, None)
        out = self._run_prompted(state, obj, frame_idx, mask_inputs=m)
        return self._video_res(state, out.low_res_masks)[0]

    def _run_prompted(self, state: VideoState, obj: _TrackedObject, frame_idx: int, point_coords: Tensor | None = None,
                      point_labels: Tensor | None = None, mask_inputs: Tensor | None = None) -> FrameOutput:
        """Segment a prompted frame for one object, encode its (binarised) memory and store it (fresh)."""
        is_init_cond = frame_idx not in obj.tracked
        reverse = False if is_init_cond else obj.tracked[frame_idx]
        prev = None
        if self.correction_uses_prev_logits and mask_inputs is None:
            prev_out = obj.bank.get(frame_idx)
            if prev_out is not None:
                prev = prev_out.low_res_masks.clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
        out = self._step(state, obj, frame_idx, is_init_cond, reverse, prompted=True, binarize=True,
                         point_coords=point_coords, point_labels=point_labels, mask_inputs=mask_inputs,
                         prev_mask_logits=prev)
        obj.bank.add(frame_idx, out, is_cond=is_init_cond)
        obj.fresh.add(frame_idx)
        return out

    def _step(self, state: VideoState, obj: _TrackedObject, frame_idx: int, is_init_cond: bool, reverse: bool,
              prompted: bool, binarize: bool, **prompts) -> FrameOutput:
        """One object on one frame: decode (from memory unless an initial conditioning frame), fill holes, encode
        the memory; returns the compact :class:`FrameOutput` to store (no high-res masks / F_M kept).

        The memory mask of a ``prompted`` frame is the stored low-res logits upsampled to S x S (what the official
        predictors encode after consolidating the prompts; equal to the decoder's high-res logits for clicks without
        hole filling), else the decoder's high-res logits (official tracking step); ``binarize``: (> 0) instead of
        sigmoid.
        """
        feats = self._features(state, frame_idx)
        out = self.model.track_step(frame_idx, is_init_cond, feats, obj.bank, state.num_frames,
                                    run_mem_encoder=False, reverse=reverse, **prompts)
        low = out.low_res_masks
        if self.fill_hole_area > 0:
            low = fill_holes(low, self.fill_hole_area)
        high = out.high_res_masks
        if prompted:
            s = self.image_size
            high = F.interpolate(low.float(), size=(s, s), mode="bilinear", align_corners=False)
        memory, pos = self.model.encode_memory(feats, high, out.object_score_logits, is_mask_from_pts=binarize)
        if self.memory_bf16:
            memory = memory.to(torch.bfloat16).to(memory.dtype)
        if state._memory_pos is None or state._memory_pos.shape != pos.shape:
            state._memory_pos = pos
        return replace(out, low_res_masks=low, high_res_masks=None, multimasks=None, pix_feat=None, memory=memory,
                       memory_pos=state._memory_pos)

    # ------------------------------------------------------------------ tracking
    def propagate(self, state: VideoState, start_frame_idx: int | None = None, max_frames: int | None = None,
                  reverse: bool = False, obj_ids: Sequence[int] | None = None
                  ) -> Iterator[tuple[int, list[int], Tensor]]:
        """Track the objects through the video, one frame at a time (arguments are checked on call, frames are
        computed as the iterator is consumed).

        Args:
            start_frame_idx: first frame (default: the earliest conditioning frame of the objects).
            max_frames: track the start frame and up to this many more (default: to the end / the start).
            reverse: go backwards.
            obj_ids: only these objects (default: all, in order of first prompt).

        Returns:
            an iterator of (frame_idx, obj_ids, logits (n_obj, H, W) float at video resolution).
        """
        self._check_state(state)
        if not state.objects:
            raise ValueError("no prompts yet: add clicks, a box or a mask (add_clicks / add_mask) before propagate")
        if obj_ids is None:
            ids = state.obj_ids
        else:
            ids = [self._check_obj_id(i) for i in obj_ids]
            unknown = [i for i in ids if i not in state.objects]
            if unknown or not ids:
                raise ValueError(f"unknown obj_ids {unknown}; prompted objects: {state.obj_ids}" if unknown
                                 else "obj_ids is empty")
        if start_frame_idx is None:
            start = min(t for i in ids for t in state.objects[i].bank.cond)
        else:
            start = self._check_frame(state, start_frame_idx, "start_frame_idx")
        if max_frames is None:
            max_frames = state.num_frames
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 0:
            raise ValueError(f"max_frames must be an int >= 0, got {max_frames!r}")
        if reverse:
            end = max(start - max_frames, 0)
            order = range(start, end - 1, -1) if start > 0 else range(0)  # official: nothing from frame 0
        else:
            order = range(start, min(start + max_frames, state.num_frames - 1) + 1)
        return self._propagate(state, order, ids, reverse)

    @torch.inference_mode()
    def _propagate(self, state: VideoState, order: range, ids: list[int], reverse: bool
                   ) -> Iterator[tuple[int, list[int], Tensor]]:
        """The tracking loop of :meth:`propagate` over frames ``order`` for objects ``ids``."""
        objs = [state.objects[i] for i in ids]
        for t in order:
            prompted_here = any(t in o.fresh for o in objs)
            lows = []
            for obj in objs:
                if t in obj.fresh:
                    obj.fresh.discard(t)  # a fresh prompted output is kept once
                    out = obj.bank.get(t)
                elif t in obj.bank.cond:
                    out = obj.bank.cond[t]
                else:
                    binarize = self.binarize_all_objects_on_prompted_frames and prompted_here
                    out = self._step(state, obj, t, False, reverse, prompted=False, binarize=binarize)
                    obj.bank.add(t, out, is_cond=False)
                if t not in obj.bank.cond:
                    obj.tracked[t] = reverse
                lows.append(out.low_res_masks)
            yield t, list(ids), self._video_res(state, torch.cat(lows, dim=0))

    # ------------------------------------------------------------------ outputs
    def _video_res(self, state: VideoState, low: Tensor) -> Tensor:
        """(N, 1, S/4, S/4) logits -> (N, H, W) bilinear at video resolution."""
        return F.interpolate(low.float(), size=state.video_hw, mode="bilinear", align_corners=False)[:, 0]

    def masks_from_logits(self, logits: Tensor) -> Tensor:
        """Boolean masks: ``logits > mask_threshold`` (any shape)."""
        return logits > self.mask_threshold

    def get_output(self, state: VideoState, frame_idx: int, obj_id: int) -> ObjectOutput | None:
        """The stored result of object ``obj_id`` on frame ``frame_idx`` (None if it has none there)."""
        self._check_state(state)
        frame_idx = self._check_frame(state, frame_idx)
        obj_id = self._check_obj_id(obj_id)
        if obj_id not in state.objects:
            raise ValueError(f"unknown obj_id {obj_id}; prompted objects: {state.obj_ids}")
        bank = state.objects[obj_id].bank
        out = bank.get(frame_idx)
        if out is None:
            return None
        return ObjectOutput(out.low_res_masks[0], out.ious[0].max().reshape(1), out.object_score_logits[0],
                            frame_idx in bank.cond)

    def frame_outputs(self, state: VideoState, frame_idx: int) -> dict[int, ObjectOutput]:
        """{obj_id: stored result} of every object that has one on frame ``frame_idx``."""
        outs = {i: self.get_output(state, frame_idx, i) for i in state.objects}
        return {i: o for i, o in outs.items() if o is not None}
