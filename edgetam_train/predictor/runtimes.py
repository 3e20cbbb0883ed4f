"""The image and video predictors on exported graphs: ``edgetam-predict image|video --runtime onnx|executorch|tflite
--model-dir DIR`` (a directory written by ``edgetam-export --format ...``).

:class:`ExportedModel` stands in for :class:`~edgetam_train.models.sam2_model.SAM2Model` inside the unchanged
:class:`~edgetam_train.predictor.image.ImagePredictor` and :class:`~edgetam_train.predictor.video.VideoPredictor`:
the same preprocessing, prompt handling, memory-bank rules (:class:`~edgetam_train.models.memory_bank.MemoryBank`),
hole filling and outputs, with the network computed by the four graphs of the on-device split. What stays in
Python is what an app does itself: choosing the memory slots and pointers, picking the mask (multimask rule), the
no-object logit, the bilinear upsampling, and for a mask prompt (``add_mask``) SAM 2's mask-as-output rule with the
4x4 ``mask_downsample`` conv and the no-object pointer stored in the manifest (``mask_prompt``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgetam_train.models.memory_bank import FrameOutput, MemoryBank
from edgetam_train.models.outputs import ImageFeatures
from edgetam_train.models.sam2_model import NO_OBJ_SCORE, SAM2Model
from edgetam_train.predictor.image import ImagePredictor
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.runtime.backends import GRAPHS, load_parts, read_manifest

RUNTIMES = ("torch", *GRAPHS)
# what ExportedModel reads from manifest.json: a copy without one is refused naming the file, not a KeyError later
MANIFEST_KEYS = ("format", "model", "image_size", "parts", "tracking", "memory", "prompt_points", "mask_prompt")


@dataclass
class ExportedFeatures(ImageFeatures):
    """:class:`ImageFeatures` from the exported encoder (``f16`` = raw ``vision_features``, no position encoding)
    plus ``image_embeddings`` (F16 + the no-memory embedding)."""

    image_embeddings: Tensor | None = None


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


class ExportedModel:
    """The predictors' view of a model, computed by the graphs in ``model_dir`` (batch 1: one object at a time).

    Args:
        model_dir: directory with ``manifest.json`` and the graph files.
        runtime: expected format (ValueError when the directory holds another); None accepts the manifest's.
        threads: CPU threads of every runtime (ExecuTorch: its process-wide XNNPACK pool).
    """

    training = False

    def __init__(self, model_dir: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        self.manifest = read_manifest(model_dir, MANIFEST_KEYS)
        fmt = self.manifest["format"]
        if runtime is not None and runtime != fmt:
            raise ValueError(f"--runtime {runtime}: {model_dir} holds a {fmt} export (manifest.json 'format')")
        tracking = self.manifest["tracking"]
        if not isinstance(tracking, dict) or "directly_add_no_mem_embed" not in tracking:
            raise ValueError(f"{Path(model_dir) / 'manifest.json'}: 'tracking' must be the exported model's tracking "
                             "flags (directly_add_no_mem_embed, ...); export the directory again")
        for key, value in tracking.items():
            setattr(self, key, value)
        if not self.directly_add_no_mem_embed:
            raise ValueError(f"{model_dir}: models without directly_add_no_mem_embed are not supported by the "
                             "exported runtime")
        self.image_size = int(self.manifest["image_size"])
        self.graphs = load_parts(model_dir, self.manifest, threads)
        self.max_memory_frames = self.manifest["memory"]["max_memory_frames"]
        self.max_object_pointers = self.manifest["memory"]["max_object_pointers"]
        self.max_points = self.manifest["prompt_points"]["max"]
        self.mask_prompt = self.manifest["mask_prompt"]

    def eval(self) -> ExportedModel:
        return self

    use_multimask = SAM2Model.use_multimask  # the official rule, on the manifest's flags

    # ------------------------------------------------------------------ graphs
    def encode_image(self, pixels: Tensor) -> ExportedFeatures:
        """(1, 3, S, S) normalised pixels -> features (``f16`` raw, ``image_embeddings`` with no-memory embedding)."""
        out = {k: torch.from_numpy(v) for k, v in self.graphs["image_encoder"](pixels=_np(pixels)).items()}
        return ExportedFeatures(out["vision_features"], None, [out["high_res_feats_0"], out["high_res_feats_1"]],
                                image_embeddings=out["image_embeddings"])

    def _decode(self, pix_feat: Tensor, high_res: list[Tensor], points: tuple[Tensor, Tensor] | None,
                mask_inputs: Tensor | None) -> dict[str, Tensor]:
        if points is None:  # no clicks: one padding point, as SAM2Model.decode
            points = torch.zeros(1, 1, 2), -torch.ones(1, 1)
        coords, labels = points[0].float(), points[1].float()
        if self.max_points is not None and coords.shape[1] > self.max_points:
            raise ValueError(f"{coords.shape[1]} prompt points (a box counts 2) but this {self.manifest['format']} "
                             f"export takes at most {self.max_points} (manifest.json 'prompt_points')")
        side = self.image_size // 4
        if mask_inputs is not None and tuple(mask_inputs.shape[-2:]) != (side, side):
            mask_inputs = F.interpolate(mask_inputs.float(), size=(side, side), mode="bilinear", align_corners=False,
                                        antialias=True)
        mask = mask_inputs if mask_inputs is not None else torch.zeros(1, 1, side, side)
        out = self.graphs["prompt_decoder"](
            image_embeddings=_np(pix_feat), high_res_feats_0=_np(high_res[0]), high_res_feats_1=_np(high_res[1]),
            point_coords=_np(coords), point_labels=_np(labels), mask_input=_np(mask),
            has_mask_input=np.array([1.0 if mask_inputs is not None else 0.0], dtype=np.float32))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def heads(self, pix_feat: Tensor, high_res: list[Tensor], points, mask_inputs, multimask_output: bool,
              repeat_image: bool = False) -> tuple[Tensor, Tensor, None, Tensor]:
        """As :meth:`SAM2Model.heads` (no tokens: the pointers come from the graph)."""
        out = self._decode(pix_feat, high_res, points, mask_inputs)
        if multimask_output:
            return out["masks"], out["iou_predictions"], None, out["object_score_logits"]
        return out["single_mask"], out["single_iou"], None, out["object_score_logits"]

    def encode_memory(self, feats: ImageFeatures, high_res_masks: Tensor, object_score_logits: Tensor,
                      is_mask_from_pts: bool) -> tuple[Tensor, Tensor]:
        """Memory tokens (1, N, 64); the position encoding is inside the memory-attention graph (zeros here)."""
        binarize = self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts
        out = self.graphs["memory_encoder"](
            vision_features=_np(feats.f16), mask_logits=_np(high_res_masks),
            object_score_logits=_np(object_score_logits), binarize=np.array([float(binarize)], dtype=np.float32))
        memory = torch.from_numpy(out["memory"])
        return memory, torch.zeros_like(memory)

    def _condition(self, feats: ImageFeatures, frame_idx: int, bank: MemoryBank, num_frames: int,
                   reverse: bool) -> Tensor:
        """F_M from the memory-attention graph, the slots filled as :meth:`SAM2Model.read_memory` selects them."""
        frames = bank.memory_frames(frame_idx, self.num_maskmem, self.max_cond_frames_in_attn,
                                    self.memory_temporal_stride_for_eval, reverse)
        frames = [(t, out) for t, out in frames if out.memory is not None]
        if not frames:
            raise ValueError(f"frame {frame_idx} is not a conditioning frame but the memory bank is empty")
        ptrs = bank.pointer_frames(frame_idx, num_frames, self.max_obj_ptrs_in_encoder, self.max_cond_frames_in_attn,
                                   self.only_obj_ptrs_in_the_past_for_eval, reverse,
                                   self.use_signed_tpos_enc_to_obj_ptrs)
        f, p = self.max_memory_frames, self.max_object_pointers
        if len(frames) > f or len(ptrs) > p:
            raise ValueError(f"frame {frame_idx} reads {len(frames)} memories and {len(ptrs)} pointers but the export "
                             f"has {f} and {p} slots (too many prompted frames for this object)")
        n = frames[0][1].memory.shape[1]
        memory = np.zeros((1, f, n, frames[0][1].memory.shape[2]), dtype=np.float32)
        tpos = np.zeros((1, f), dtype=np.int32)
        valid = np.zeros((1, f), dtype=np.float32)
        for i, (t, out) in enumerate(frames):
            memory[0, i], tpos[0, i], valid[0, i] = _np(out.memory[0]), t, 1.0
        obj_ptrs = np.zeros((1, p, 256), dtype=np.float32)
        ptr_tpos = np.zeros((1, p), dtype=np.float32)
        ptr_valid = np.zeros((1, p), dtype=np.float32)
        scale = max(min(num_frames, self.max_obj_ptrs_in_encoder) - 1, 1)
        for i, (dist, vec) in enumerate(ptrs):
            obj_ptrs[0, i], ptr_tpos[0, i], ptr_valid[0, i] = _np(vec[0]), dist / scale, 1.0
        out = self.graphs["memory_attention"](
            vision_features=_np(feats.f16), memory=memory, memory_tpos=tpos, memory_valid=valid, obj_ptrs=obj_ptrs,
            obj_ptr_tpos=ptr_tpos, obj_ptr_valid=ptr_valid)
        return torch.from_numpy(out["pix_feat"])

    def mask_as_output(self, feats: ExportedFeatures, mask_inputs: Tensor) -> FrameOutput:
        """:meth:`SAM2Model.mask_as_output`: the mask prompt (1, 1, S, S) is the frame's output (±10 logits); the
        pointer is the decoder's on the raw F16 with the mask (``mask_downsample`` from the manifest) as input."""
        c = self.mask_prompt
        mask = mask_inputs.float().cpu()
        high = mask * c["logit_scale"] + c["logit_bias"]
        s = high.shape[-1]
        low = F.interpolate(high, size=(s // 4, s // 4), mode="bilinear", align_corners=False, antialias=True)
        weight = torch.tensor(c["mask_downsample_weight"], dtype=torch.float32).reshape(1, 1, 4, 4)
        small = F.conv2d(mask, weight, torch.tensor([c["mask_downsample_bias"]], dtype=torch.float32), stride=4)
        ptr = self._decode(feats.f16, feats.high_res, None, small)["single_obj_ptr"]
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        if c["fixed_no_obj_ptr"]:
            ptr = present * ptr
        ptr = ptr + (1 - present) * torch.tensor(c["no_obj_ptr"], dtype=torch.float32)[None]
        score = c["logit_scale"] * present + c["logit_bias"]
        return FrameOutput(low, high, ptr, score, mask.new_ones(1, 1), low, pix_feat=feats.f16)

    def track_step(self, frame_idx: int, is_init_cond_frame: bool, feats: ExportedFeatures, bank: MemoryBank,
                   num_frames: int, point_coords: Tensor | None = None, point_labels: Tensor | None = None,
                   mask_inputs: Tensor | None = None, prev_mask_logits: Tensor | None = None,
                   run_mem_encoder: bool = True, reverse: bool = False, multimask_output: bool | None = None
                   ) -> FrameOutput:
        """:meth:`SAM2Model.track_step` for one object (the predictor encodes the memory itself)."""
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            return self.mask_as_output(feats, mask_inputs)
        if mask_inputs is not None:
            raise ValueError(f"{self.manifest['model']}: mask prompts through the decoder "
                             "(use_mask_input_as_output_without_sam false) are not supported by the exported runtime")
        if is_init_cond_frame:
            pix_feat = feats.image_embeddings  # condition() without memory: F16 + no-memory embedding
        else:
            pix_feat = self._condition(feats, frame_idx, bank, num_frames, reverse)
        if multimask_output is None:
            multimask_output = self.use_multimask(is_init_cond_frame, 0 if point_labels is None
                                                  else point_labels.shape[1])
        if point_coords is None:  # no clicks: one padding point, as SAM2Model.decode
            point_coords, point_labels = torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)
        out = self._decode(pix_feat, feats.high_res, (point_coords.cpu(), point_labels.cpu()), prev_mask_logits)
        score = out["object_score_logits"]
        if multimask_output:
            masks, ious, ptr = out["masks"], out["iou_predictions"], out["obj_ptr"]
            low = masks[:, int(ious[0].argmax())].unsqueeze(1)
        else:
            masks, ious, ptr = out["single_mask"], out["single_iou"], out["single_obj_ptr"]
            low = masks
        present = (score > 0)[:, :, None, None]
        low = torch.where(present, low, NO_OBJ_SCORE)
        masks = torch.where(present, masks, NO_OBJ_SCORE)
        s = self.image_size
        high = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
        return FrameOutput(low, high, ptr, score, ious, masks, pix_feat=pix_feat)


class ExportedImagePredictor(ImagePredictor):
    """:class:`ImagePredictor` on an :class:`ExportedModel` (CPU)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @torch.inference_mode()
    def set_input(self, pixels: Tensor, orig_hw: tuple[int, int]) -> None:
        feats = self.model.encode_image(pixels)
        self._feats = ImageFeatures(feats.image_embeddings, None, feats.high_res)
        self._orig_hw = tuple(orig_hw)


class ExportedVideoPredictor(VideoPredictor):
    """:class:`VideoPredictor` on an :class:`ExportedModel` (CPU)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--model-dir``; ``--ckpt`` becomes optional (only ``--runtime torch`` reads it)."""
    for action in parser._actions:  # added by cli_common.add_model_arguments as required
        if action.dest == "ckpt":
            action.required = False
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="torch: the checkpoint in PyTorch (default); onnx / executorch / tflite: the graphs in "
                             "--model-dir, written by edgetam-export --format ...")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="on-device export directory (manifest.json + graphs) for --runtime other than torch")


def _check(args: argparse.Namespace) -> None:
    if args.runtime == "torch":
        if args.ckpt is None:
            raise ValueError("--ckpt is required with --runtime torch")
    elif args.model_dir is None:
        raise ValueError(f"--runtime {args.runtime} needs --model-dir (an edgetam-export --format {args.runtime} "
                         "directory)")


def image_predictor(args: argparse.Namespace, build_torch: Callable[[], ImagePredictor]) -> ImagePredictor:
    """The image predictor ``args.runtime`` asks for (``build_torch`` makes the PyTorch one)."""
    _check(args)
    if args.runtime == "torch":
        return build_torch()
    return ExportedImagePredictor(ExportedModel(args.model_dir, args.runtime))


def video_predictor(args: argparse.Namespace, build_torch: Callable[[], VideoPredictor]) -> VideoPredictor:
    """The video predictor ``args.runtime`` asks for (``build_torch`` makes the PyTorch one)."""
    _check(args)
    if args.runtime == "torch":
        return build_torch()
    return ExportedVideoPredictor(ExportedModel(args.model_dir, args.runtime), fill_hole_area=args.fill_hole_area)
