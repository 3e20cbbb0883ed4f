"""Inference-only graph rewrite of a :class:`~edgetam_train.models.sam2_model.SAM2Model`: the decoder's high-res
projections folded into the FPN neck (the trunk's own fusing is its ``reparameterize()``)."""

from __future__ import annotations

import torch
from torch import nn

from edgetam_train.models.sam2_model import SAM2Model


@torch.no_grad()
def fuse_high_res_projection(model: SAM2Model) -> bool:
    """Inference only: fold ``model``'s decoder ``conv_s0`` / ``conv_s1`` into the neck's lateral convs of levels 0
    and 1 (in place).

    With SAM 2's configs the stride-4 and stride-8 neck levels are purely lateral 1x1 convs (no top-down path),
    so ``conv_s0(lateral_0(x))`` is one 1x1 conv C_0 -> 32 (and likewise C_1 -> 64): the 256-channel stride-4/8
    maps (80 MiB at 1024 px) are never materialised. Outputs equal the unfused ones within float rounding
    (weights are combined in float64). Afterwards the state_dict is not the official layout (like a fused
    trunk): do not train or save the model. Returns whether the model is fused (False, unchanged, when the
    model has no high-res features, a top-down path into those levels, or non-1x1 lateral convs). Idempotent.
    """
    if model.high_res_in_neck:
        return True
    neck = getattr(model.image_encoder, "neck", None)
    if not model.use_high_res_features_in_sam or neck is None or not hasattr(neck, "convs"):
        return False
    n = len(neck.convs)
    if n < 3 or {0, 1} & set(neck.fpn_top_down_levels):
        return False
    laterals = [neck.convs[n - 1 - level].conv for level in (0, 1)]
    projections = [model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1]
    for conv in laterals + projections:
        if (conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1
                or conv.bias is None):
            return False
    for level, lateral, proj in zip((0, 1), laterals, projections):
        w_l, w_p = lateral.weight[:, :, 0, 0].double(), proj.weight[:, :, 0, 0].double()
        fused = nn.Conv2d(lateral.in_channels, proj.out_channels, kernel_size=1).to(lateral.weight)
        fused.weight.copy_((w_p @ w_l)[:, :, None, None])
        fused.bias.copy_(w_p @ lateral.bias.double() + proj.bias.double())
        neck.convs[n - 1 - level].conv = fused
    model.high_res_in_neck = True
    return True
