"""The reference app loop: streaming tracking over the exported graphs with numpy only (no PyTorch).

This is the loop a phone or robot app runs around the four graphs of an ``edgetam-export --format
onnx|executorch|tflite|coreml`` folder, written to be read and ported (Swift, Kotlin, C++)::

    tracker = AppTracker("edgetam-onnx/")                  # manifest.json + graphs
    for image in camera:                                   # (H, W, 3) uint8 RGB
        if user_tapped:
            tracker.add_object(image, obj_id=1, points=[[210, 350]], labels=[1])   # or box=..., mask=...
        logits = tracker.track(image)                      # {obj_id: (H, W) float32 logits}; > 0 is the mask

It gives the masks of :class:`~edgetam_train.predictor.streaming.StreamingTracker` on the same graphs, frames and
prompts (``tests/runtime/test_app_loop.py``), which in turn equal the offline predictor's. What it keeps per object
(:class:`TrackedObject`) is all an app must keep: each prompted frame's memory and pointer for good, the memory of
the last ``num_maskmem - 1`` tracked frames and the pointer of the last ``max_obj_ptrs - 1``; nothing grows with the
stream. Everything besides the graphs is here: preprocessing (PIL's bicubic resize), the multimask and no-object
rules, hole filling (OpenCV, optional), bilinear resizing, SAM 2's memory-slot selection and the mask-prompt rule.
The graphs run through :mod:`edgetam_train.runtime.backends` (numpy arrays in, numpy arrays out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from edgetam_train.runtime.backends import load_parts, read_manifest

HOLE_FILL_LOGIT = 0.1  # what a filled background hole becomes (official fill_holes_in_mask_scores)
PREV_LOGITS_CLAMP = 32.0  # clamp of an object's logits fed back when it is prompted again on the same frame
ENDLESS_POINTER_SCALE = 15  # pointer distances are divided by min(num_frames, 16) - 1: 15 for a stream


@dataclass
class FrameState:
    """What one object keeps of one frame: low-res logits (S/4 x S/4, only while the frame is current), the object
    pointer (256), the object score and the memory tokens (N x 64, dropped once no later frame reads them)."""

    low_res: np.ndarray | None  # (1, 1, S/4, S/4)
    obj_ptr: np.ndarray  # (1, 256)
    score: np.ndarray  # (1, 1) object score logit, > 0: present
    memory: np.ndarray | None  # (1, N, 64)


@dataclass
class TrackedObject:
    """An object's state: its prompted (conditioning) frames, kept for good, and its recent tracked frames."""

    cond: dict[int, FrameState] = field(default_factory=dict)
    recent: dict[int, FrameState] = field(default_factory=dict)
    clicks: tuple[np.ndarray, np.ndarray] | None = None  # this frame's clicks (S px), when prompted on it
    prompted_now: bool = False  # prompted on the current frame: track() returns that output


def resize_bilinear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W) bilinear, pixel centres aligned (torch ``interpolate(align_corners=False)``)."""
    for axis, size in ((-1, hw[1]), (-2, hw[0])):  # along x, then y: torch's order of operations
        n = x.shape[axis]
        src = np.maximum((np.arange(size, dtype=np.float32) + 0.5) * np.float32(n / size) - 0.5, 0)
        i0 = np.minimum(src.astype(np.int64), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        w1 = src - i0
        shape = [1] * x.ndim
        shape[axis] = size
        w1 = w1.reshape(shape)
        x = np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1
    return x.astype(np.float32)


def _antialias_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bilinear (triangle) resize, PIL's and torch's ``antialias=True``."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle widens by the shrink factor
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - centre + 0.5) / support))
        weights[i, lo:hi] = w / w.sum()
    return weights


def resize_antialiased(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) antialiased bilinear (for masks given as prompts)."""
    rows, cols = _antialias_weights(x.shape[0], hw[0]), _antialias_weights(x.shape[1], hw[1])
    return (rows @ x.astype(np.float64) @ cols.T).astype(np.float32)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (ties to even), as float32: the predictor stores memories so."""
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def fill_holes(low_res: np.ndarray, max_area: int) -> np.ndarray:
    """Background (logit <= 0) 8-connected regions of at most ``max_area`` pixels get logit 0.1 (SAM 2's video
    post-processing); (1, 1, h, w) -> a copy."""
    import cv2  # any connected-components routine does; OpenCV is the one the official code names

    background = (low_res[0, 0] <= 0).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA][labels]
    hole = (labels > 0) & (area <= max_area)
    out = low_res.copy()
    out[0, 0][hole] = HOLE_FILL_LOGIT
    return out


class AppTracker:
    """Streaming tracker over an export folder; the API of ``StreamingTracker``, numpy in and out.

    Args:
        model_dir: folder with ``manifest.json`` and the graphs (``edgetam-export --format ...``).
        fill_hole_area: fill background holes up to this many low-res pixels (0: off; the predictors' default 8).
        memory_bf16: round stored memories to bfloat16 as the predictors do (keeps the masks equal to theirs; an app
            may store them as bfloat16 and halve their size).
        num_frames: the stream's length when known (only changes pointer positions of clips under 16 frames).
        threads: CPU threads of every runtime (ExecuTorch: its process-wide XNNPACK pool).
    """

    def __init__(self, model_dir: str | Path, fill_hole_area: int = 8, memory_bf16: bool = True,
                 num_frames: int | None = None, threads: int | None = None) -> None:
        self.manifest = read_manifest(model_dir, ("format", "image_size", "parts", "tracking", "memory",
                                                  "preprocessing", "mask_prompt"))
        self.graphs = load_parts(model_dir, self.manifest, threads)
        self.rules = self.manifest["tracking"]  # SAM 2's settings of the exported model
        self.size = int(self.manifest["image_size"])
        self.slots = self.manifest["memory"]  # max_memory_frames, max_object_pointers
        pre = self.manifest["preprocessing"]
        self.mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
        self.fill_hole_area, self.memory_bf16 = int(fill_hole_area), memory_bf16
        stride = max(int(self.rules["memory_temporal_stride_for_eval"]), 1)
        self.memory_window = (int(self.rules["num_maskmem"]) - 2) * stride + 1  # tracked frames whose memory is read
        self.pointer_window = int(self.rules["max_obj_ptrs_in_encoder"]) - 1  # tracked frames whose pointer is read
        n = min(num_frames or 2**62, int(self.rules["max_obj_ptrs_in_encoder"]))
        self.pointer_scale = float(max(n - 1, 1))
        self.reset()

    def reset(self) -> None:
        """Forget every object and frame."""
        self.objects: dict[int, TrackedObject] = {}
        self.t = -1  # index of the current frame
        self.hw: tuple[int, int] | None = None  # (H, W) of the stream's frames
        self.frame: np.ndarray | None = None  # the current frame
        self.pending = False  # the current frame was prompted (add_object) and not yet tracked
        self._features: dict[str, np.ndarray] | None = None  # its image_encoder outputs, computed when first needed

    def remove_object(self, obj_id: int) -> None:
        if obj_id not in self.objects:
            raise ValueError(f"unknown obj_id {obj_id}; tracked objects: {list(self.objects)}")
        del self.objects[obj_id]

    # ------------------------------------------------------------------ frames
    def _next_frame(self, frame: np.ndarray) -> None:
        """Make ``frame`` the next frame of the stream."""
        if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8):
            raise ValueError(f"frame {self.t + 1}: expected an (H, W, 3) uint8 RGB array, got "
                             f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}")
        hw = (frame.shape[0], frame.shape[1])
        if self.hw is not None and hw != self.hw:
            raise ValueError(f"frame {self.t + 1} has size {hw} but the stream's frames are {self.hw} (H, W); "
                             "reset() to start a stream of another size")
        self.hw, self.t, self.frame, self._features = hw, self.t + 1, frame, None
        for obj in self.objects.values():
            obj.clicks, obj.prompted_now = None, False

    @property
    def features(self) -> dict[str, np.ndarray]:
        """The current frame's image_encoder outputs (run once per frame, shared by all objects)."""
        if self._features is None:
            # the video predictors' preprocessing: PIL's bicubic resize of the uint8 frame to S x S, /255, mean/std
            s, frame = self.size, self.frame
            resized = np.asarray(Image.fromarray(frame).resize((s, s), Image.BICUBIC)) if self.hw != (s, s) else frame
            pixels = (resized.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255) - self.mean) / self.std
            self._features = self.graphs["image_encoder"](pixels=pixels)
        return self._features

    def _is_pending(self, frame: np.ndarray) -> bool:
        """``frame`` is the prompted, not yet tracked current frame (the same array, or equal pixels)."""
        return self.pending and (frame is self.frame or (
            isinstance(frame, np.ndarray) and frame.shape == self.frame.shape and np.array_equal(frame, self.frame)))

    # ------------------------------------------------------------------ graphs
    def _decode(self, embeddings: np.ndarray, coords: np.ndarray | None, labels: np.ndarray | None,
                mask_input: np.ndarray | None) -> dict[str, np.ndarray]:
        """prompt_decoder; no clicks = one padding point (0, 0) with label -1; no mask input = zeros, flag 0."""
        if coords is None:
            coords, labels = np.zeros((1, 1, 2), np.float32), -np.ones((1, 1), np.float32)
        most = self.manifest.get("prompt_points", {}).get("max")
        if most is not None and coords.shape[1] > most:
            raise ValueError(f"{coords.shape[1]} prompt points (a box counts 2) but this {self.manifest['format']} "
                             f"export takes at most {most} (manifest.json 'prompt_points')")
        side = self.size // 4
        has_mask = mask_input is not None
        f = self.features
        return self.graphs["prompt_decoder"](
            image_embeddings=embeddings, high_res_feats_0=f["high_res_feats_0"], high_res_feats_1=f["high_res_feats_1"],
            point_coords=coords.astype(np.float32), point_labels=labels.astype(np.float32),
            mask_input=mask_input if has_mask else np.zeros((1, 1, side, side), np.float32),
            has_mask_input=np.array([float(has_mask)], np.float32))

    def _pick_mask(self, out: dict[str, np.ndarray], num_points: int, prompted: bool) -> FrameState:
        """SAM 2's output rule: with multimask output (prompted frames with 0-1 clicks, every tracked frame for
        EdgeTAM) the best predicted IoU; logits of an absent object (score <= 0) set to the no-object score."""
        r = self.rules
        multimask = (r["multimask_output_in_sam"] and (prompted or r["multimask_output_for_tracking"])
                     and r["multimask_min_pt_num"] <= num_points <= r["multimask_max_pt_num"])
        if multimask:
            best = int(out["iou_predictions"][0].argmax())
            low, ptr = out["masks"][:, best : best + 1], out["obj_ptr"]
        else:
            low, ptr = out["single_mask"], out["single_obj_ptr"]
        score = out["object_score_logits"]
        if score[0, 0] <= 0:
            low = np.full_like(low, r["no_object_score"])
        return FrameState(low.astype(np.float32), ptr, score, None)

    def _encode_memory(self, state: FrameState, mask_logits: np.ndarray, binarize: bool) -> None:
        """memory_encoder on the frame's mask logits at S x S; the memory is stored with the frame."""
        memory = self.graphs["memory_encoder"](
            vision_features=self.features["vision_features"], mask_logits=mask_logits,
            object_score_logits=state.score, binarize=np.array([float(binarize)], np.float32))["memory"]
        state.memory = round_to_bfloat16(memory) if self.memory_bf16 else memory

    def _memory_attention(self, obj: TrackedObject) -> np.ndarray:
        """pix_feat of the current frame for ``obj``: its memory and pointer slots filled as SAM 2 selects them."""
        r, t = self.rules, self.t
        num_maskmem, stride = int(r["num_maskmem"]), max(int(r["memory_temporal_stride_for_eval"]), 1)
        limit = int(r["max_cond_frames_in_attn"])  # -1: every prompted frame, else the closest ones
        chosen = list(obj.cond)  # in the order they were prompted, as the predictors (slot order changes only rounding)
        if limit != -1 and len(chosen) > limit:
            chosen = sorted(chosen, key=lambda f: t - f)[:limit]
        older = {f: obj.cond[f] for f in obj.cond if f not in chosen}  # prompted frames past the limit: as tracked
        read = {**older, **obj.recent}
        # memory slots: prompted frames at temporal position 0, then the frame k back at position num_maskmem - k
        # (with a stride r > 1: the previous frame, then multiples of r)
        memories = [(0, obj.cond[f].memory) for f in chosen]
        for pos in range(1, num_maskmem):
            back = num_maskmem - pos
            frame = t - 1 if back == 1 else ((t - 2) // stride) * stride - (back - 2) * stride
            if frame in read and read[frame].memory is not None:
                memories.append((pos, read[frame].memory))
        # pointer slots: the prompted frames (not in the future), then the last max_obj_ptrs - 1 frames
        pointers = [(t - f, obj.cond[f].obj_ptr) for f in chosen if f <= t]
        for back in range(1, self.pointer_window + 1):
            if t - back < 0:
                break
            if t - back in read:
                pointers.append((back, read[t - back].obj_ptr))
        f, p = int(self.slots["max_memory_frames"]), int(self.slots["max_object_pointers"])
        if len(memories) > f or len(pointers) > p:
            raise ValueError(f"frame {t} reads {len(memories)} memories and {len(pointers)} pointers but the export "
                             f"has {f} and {p} slots (too many prompted frames for this object)")
        memory = np.zeros((1, f, *memories[0][1].shape[1:]), np.float32)  # empty slots: zeros, valid 0
        tpos = np.zeros((1, f), np.int32)
        valid = np.zeros((1, f), np.float32)
        for i, (pos, mem) in enumerate(memories):
            memory[0, i], tpos[0, i], valid[0, i] = mem[0], pos, 1
        ptrs = np.zeros((1, p, 256), np.float32)
        ptr_tpos = np.zeros((1, p), np.float32)  # read only by models with pointer temporal encodings (not EdgeTAM)
        ptr_valid = np.zeros((1, p), np.float32)
        for i, (back, ptr) in enumerate(pointers):
            ptrs[0, i], ptr_tpos[0, i], ptr_valid[0, i] = ptr[0], back / self.pointer_scale, 1
        return self.graphs["memory_attention"](
            vision_features=self.features["vision_features"], memory=memory, memory_tpos=tpos, memory_valid=valid,
            obj_ptrs=ptrs, obj_ptr_tpos=ptr_tpos, obj_ptr_valid=ptr_valid)["pix_feat"]

    # ------------------------------------------------------------------ prompts
    def add_object(self, frame: np.ndarray, obj_id: int, points=None, labels=None, box=None,
                   mask=None) -> np.ndarray:
        """Prompt ``obj_id`` on ``frame`` (the next frame of the stream, or the current one when prompting several
        objects or adding clicks on it): ``points`` (N, 2) xy pixels with ``labels`` (N,) 1/0 and/or ``box``
        [x0, y0, x1, y1], or ``mask`` (H, W). Call :meth:`track` with the same frame next. Returns the object's
        (H, W) logits on it."""
        if not self._is_pending(frame):
            self._next_frame(frame)
            self.pending = True
        if mask is not None and (points is not None or box is not None):
            raise ValueError("give either a mask or clicks/box for one object on one frame")
        if mask is None and points is None and box is None:
            raise ValueError("no prompt: give points + labels, a box or a mask")
        obj = self.objects.setdefault(obj_id, TrackedObject())
        previous = obj.cond.get(self.t)  # prompted on this frame already: clicks add up, its logits are fed back
        if mask is not None:
            state = self._mask_as_output(np.asarray(mask))
            obj.clicks = None
        else:
            coords, labs = self._clicks(points, labels, box)
            if obj.clicks is not None:
                if box is not None:
                    raise ValueError(f"object {obj_id} already has clicks on frame {self.t}: a box must come first")
                coords, labs = np.concatenate([obj.clicks[0], coords], 1), np.concatenate([obj.clicks[1], labs], 1)
            obj.clicks = (coords, labs)
            prev = None if previous is None else np.clip(previous.low_res, -PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
            out = self._decode(self.features["image_embeddings"], coords, labs, prev)
            state = self._pick_mask(out, coords.shape[1], prompted=True)
        if self.fill_hole_area > 0:
            state.low_res = fill_holes(state.low_res, self.fill_hole_area)
        # a prompted frame's memory: its (hole-filled) logits upsampled to S x S, binarised (> 0)
        self._encode_memory(state, resize_bilinear(state.low_res, (self.size, self.size)),
                            binarize=self.rules["binarize_mask_from_pts_for_mem_enc"])
        obj.cond[self.t] = state
        obj.recent.pop(self.t, None)
        obj.prompted_now = True
        return resize_bilinear(state.low_res, self.hw)[0, 0]

    def _clicks(self, points, labels, box) -> tuple[np.ndarray, np.ndarray]:
        """(1, N, 2) xy in the S x S input and (1, N) labels: box corners (labels 2, 3) first, then the clicks."""
        coords, labs = [], []
        if box is not None:
            coords.append(np.asarray(box, np.float32).reshape(2, 2))
            labs.append(np.array([2, 3], np.float32))
        if points is not None:
            if labels is None or len(labels) != len(points):
                raise ValueError("give one label (1 = foreground, 0 = background) per point")
            coords.append(np.asarray(points, np.float32).reshape(-1, 2))
            labs.append(np.asarray(labels, np.float32).reshape(-1))
        h, w = self.hw
        xy = np.concatenate(coords) * np.array([self.size / w, self.size / h], np.float32)
        return xy[None], np.concatenate(labs)[None]

    def _mask_as_output(self, mask: np.ndarray) -> FrameState:
        """SAM 2's mask prompt: the mask is the frame's output (logits +-10); its pointer is the decoder's on the
        raw features with the mask, reduced by the 4x4 stride-4 ``mask_downsample`` conv, as mask input."""
        if mask.shape != self.hw:
            raise ValueError(f"mask must be (H, W) = {self.hw} (the frame size), got shape {mask.shape}")
        s, c = self.size, self.manifest["mask_prompt"]
        m = (mask != 0).astype(np.float32)
        if m.shape != (s, s):
            m = (resize_antialiased(m, (s, s)) >= 0.5).astype(np.float32)
        high = m * np.float32(c["logit_scale"]) + np.float32(c["logit_bias"])
        low = resize_antialiased(high, (s // 4, s // 4))[None, None]
        blocks = m.reshape(s // 4, 4, s // 4, 4)
        small = np.einsum("iajb,ab->ij", blocks, np.asarray(c["mask_downsample_weight"], np.float32))
        small = (small + np.float32(c["mask_downsample_bias"]))[None, None].astype(np.float32)
        ptr = self._decode(self.features["vision_features"], None, None, small)["single_obj_ptr"]
        present = float(m.any())
        if c["fixed_no_obj_ptr"]:
            ptr = present * ptr
        ptr = ptr + (1 - present) * np.asarray(c["no_obj_ptr"], np.float32)[None]
        score = np.array([[c["logit_scale"] * present + c["logit_bias"]]], np.float32)
        return FrameState(low, ptr.astype(np.float32), score, None)

    # ------------------------------------------------------------------ tracking
    def track(self, frame: np.ndarray) -> dict[int, np.ndarray]:
        """Every object's (H, W) float32 logits on ``frame``: the next frame of the stream, or the frame just
        prompted with :meth:`add_object` (prompted objects return that output, the others are tracked)."""
        if self._is_pending(frame):
            self.pending = False
        else:
            self._next_frame(frame)
        out = {}
        for obj_id, obj in self.objects.items():
            if obj.prompted_now:
                state = obj.cond[self.t]
            else:
                state = self._track_object(obj)
            out[obj_id] = resize_bilinear(state.low_res, self.hw)[0, 0]
        self._forget()
        return out

    def _track_object(self, obj: TrackedObject) -> FrameState:
        """A tracked frame: memory attention, decoder with the padding point, memory of the un-filled logits."""
        out = self._decode(self._memory_attention(obj), None, None, None)
        state = self._pick_mask(out, 0, prompted=False)
        high = resize_bilinear(state.low_res, (self.size, self.size))  # encoded before hole filling, sigmoid
        if self.fill_hole_area > 0:
            state.low_res = fill_holes(state.low_res, self.fill_hole_area)
        self._encode_memory(state, high, binarize=False)
        obj.recent[self.t] = state
        return state

    def _forget(self) -> None:
        """Drop what later frames cannot read: memories older than ``memory_window`` tracked frames, pointers older
        than ``pointer_window``, every logit map (prompted frames keep their memory and pointer for good)."""
        for obj in self.objects.values():
            for f in list(obj.recent):
                age = self.t - f
                if age >= max(self.memory_window, self.pointer_window):
                    del obj.recent[f]
                elif age >= self.memory_window:
                    obj.recent[f].memory = None
            for state in (*obj.cond.values(), *obj.recent.values()):
                state.low_res = None
