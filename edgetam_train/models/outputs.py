"""What the model's per-frame operations hand each other: image features, the memory read for a frame, and the SAM
heads' output (see :class:`~edgetam_train.models.sam2_model.SAM2Model`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ImageFeatures:
    """Image-encoder output for a batch of B images (or objects).

    Attributes:
        f16: (B, 256, S/16, S/16) stride-16 feature map (F16, what memory attention reads).
        f16_pos: (B, 256, S/16, S/16) its sine position encoding.
        high_res: [(B, 32, S/4, S/4), (B, 64, S/8, S/8)] decoder high-res features, already projected by
            ``conv_s0``/``conv_s1``; None when the model does not use them.
    """

    f16: Tensor
    f16_pos: Tensor
    high_res: list[Tensor] | None

    def select(self, idx: Tensor) -> "ImageFeatures":
        """Features for rows ``idx`` (e.g. each object's image index): (N,) long -> N-row features."""
        return ImageFeatures(self.f16[idx], self.f16_pos[idx],
                             None if self.high_res is None else [h[idx] for h in self.high_res])


@dataclass
class MemoryContext:
    """Memory tokens one frame cross-attends to (batch-first).

    Attributes:
        tokens: (B, M, 64) spatial memory tokens of ``num_spatial_mem`` frames, then object-pointer tokens.
        pos: (B, M, 64) their (spatial + temporal) position encodings.
        num_obj_ptr_tokens: how many trailing tokens are object pointers (not rotated by RoPE).
        num_spatial_mem: how many memory frames precede the pointers.
    """

    tokens: Tensor
    pos: Tensor
    num_obj_ptr_tokens: int
    num_spatial_mem: int


@dataclass
class SamOutput:
    """Prompt encoder + mask decoder output for B objects (M = 3 with multimask output, else 1).

    Attributes:
        multimasks: (B, M, S/4, S/4) mask logits; NO_OBJ_SCORE where the object is predicted absent.
        ious: (B, M) predicted IoUs.
        low_res_masks: (B, 1, S/4, S/4) the mask with the highest predicted IoU.
        high_res_masks: (B, 1, S, S) that mask upsampled to the model input size.
        obj_ptr: (B, 256) object pointer.
        object_score_logits: (B, 1) object-presence logit.
    """

    multimasks: Tensor
    ious: Tensor
    low_res_masks: Tensor
    high_res_masks: Tensor
    obj_ptr: Tensor
    object_score_logits: Tensor
