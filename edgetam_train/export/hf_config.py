"""The transformers configs and models of the SAM 2.1 / EdgeTAM family: :func:`hf_config` builds the config with
the official hyper-parameters (optional reduced ``image_size``), :func:`build_hf_model` the model, optionally loaded
with official weights (:func:`~edgetam_train.export.hf_convert.official_to_hf`). transformers is imported lazily:
only these functions need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from edgetam_train.export.hf_convert import official_to_hf
from edgetam_train.export.hf_keys import Target, check_model, check_target


@dataclass(frozen=True)
class TimmTrunkSpec:
    """The timm trunk of an EdgeTAM-family model, as transformers' ``TimmWrapperConfig`` builds it.

    Attributes:
        architecture: timm name (``repvit_m1``, ``mobilenetv4_conv_small``, ...).
        out_indices: timm ``features_only`` levels at strides 4/8/16/32 (MobileNetV4: [1, 2, 3, 4]).
        channel_list: their channels low-res first (the FPN neck's ``backbone_channel_list``).
    """

    architecture: str = "repvit_m1"
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    channel_list: tuple[int, ...] = (384, 192, 96, 48)


REPVIT_M1 = TimmTrunkSpec()

# Hiera variants as in sam2.1_hiera_{t,s,b+,l}.yaml (+ the official Hiera defaults they leave out).
_HIERA: dict[str, dict[str, Any]] = {
    "sam2.1_hiera_tiny": dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att=[5, 7, 9],
                              bkg=[7, 7], windows=[8, 4, 14, 7]),
    "sam2.1_hiera_small": dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att=[7, 10, 13],
                               bkg=[7, 7], windows=[8, 4, 14, 7]),
    "sam2.1_hiera_base_plus": dict(embed_dim=112, num_heads=2, stages=[2, 3, 16, 3], global_att=[12, 16, 20],
                                   bkg=[14, 14], windows=[8, 4, 14, 7]),
    "sam2.1_hiera_large": dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att=[23, 33, 43],
                               bkg=[7, 7], windows=[8, 4, 16, 8]),
}


def _vision_config(model: str, image_size: int, trunk_spec: TimmTrunkSpec = REPVIT_M1):
    """transformers vision config (trunk + FPN neck) of ``model`` at ``image_size`` (EdgeTAM: ``trunk_spec``)."""
    from transformers import EdgeTamVisionConfig, Sam2HieraDetConfig, Sam2VisionConfig, TimmWrapperConfig

    feature_sizes = [[image_size // s, image_size // s] for s in (4, 8, 16)]
    neck = dict(backbone_feature_sizes=feature_sizes, fpn_hidden_size=256, fpn_top_down_levels=[2, 3],
                num_feature_levels=3)
    if model == "edgetam":
        trunk = TimmWrapperConfig(architecture=trunk_spec.architecture,
                                  model_args={"in_chans": 3, "features_only": True,
                                              "out_indices": list(trunk_spec.out_indices)})
        return EdgeTamVisionConfig(backbone_config=trunk, backbone_channel_list=list(trunk_spec.channel_list), **neck)
    h = _HIERA[model]
    dims = [h["embed_dim"] * 2 ** s for s in range(4)]
    trunk = Sam2HieraDetConfig(
        hidden_size=h["embed_dim"], num_attention_heads=h["num_heads"], image_size=[image_size, image_size],
        blocks_per_stage=h["stages"], embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[h["num_heads"] * 2 ** s for s in range(4)],
        window_size_per_stage=h["windows"], global_attention_blocks=h["global_att"],
        window_positional_embedding_background_size=h["bkg"], query_stride=[2, 2], num_query_pool_stages=3,
        patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], mlp_ratio=4.0)
    return Sam2VisionConfig(backbone_config=trunk, backbone_channel_list=dims[::-1], **neck)


def hf_config(model: str, image_size: int = 1024, target: Target = "video", trunk_spec: TimmTrunkSpec = REPVIT_M1):
    """The transformers config of ``model`` with the official hyper-parameters.

    Args:
        model: one of :data:`~edgetam_train.export.hf_keys.MODELS`.
        image_size: square input size S. A multiple of 32 (stride-32 trunk stage, exact 2x FPN upsampling, Hiera's
            8x8 window position embedding tiles the S/4 map); for the EdgeTAM *video* model a multiple of 256 (the
            2D perceiver pools the S/16 memory map into exactly 16x16 windows; transformers fails otherwise: S=384
            gives 576 window latents, S=128 a zero window size). Changed with it:
            ``vision_config.backbone_feature_sizes`` ([S/4, S/8, S/16]), ``prompt_encoder_config.image_size``
            (S; ``patch_size`` stays 16 so the prompt grid is S/16 and the mask input S/4), video ``image_size``
            (S: high-res masks fed to the memory encoder), ``memory_attention_rope_feat_sizes`` ([S/16, S/16]),
            Hiera ``image_size`` (informational).
            Unchanged: ``memory_attention_rope_k_sizes`` stays [16, 16] (the perceiver's 2D latent grid is 16x16
            at any S), ``num_latents(_2d)`` 256, ``mask_downsampler_total_stride`` 16.
        target: "video" -> ``EdgeTamVideoConfig`` / ``Sam2VideoConfig``; "image" -> ``EdgeTamConfig`` /
            ``Sam2Config``.
        trunk_spec: the timm trunk of an EdgeTAM-family model (default RepViT-M1); ignored for SAM 2.1.

    Returns:
        the config object (build the model with ``<Class>(config)``; nothing is downloaded).
    """
    from transformers import EdgeTamConfig, EdgeTamVideoConfig, Sam2Config, Sam2VideoConfig

    check_model(model)
    check_target(target)
    multiple = 256 if model == "edgetam" and target == "video" else 32
    if image_size % multiple or image_size <= 0:
        raise ValueError(f"image_size for {model!r} ({target}) must be a positive multiple of {multiple}, "
                         f"got {image_size}")
    edgetam = model == "edgetam"
    vision = _vision_config(model, image_size, trunk_spec)
    prompt = dict(hidden_size=256, image_size=image_size, patch_size=16, mask_input_channels=16,
                  num_point_embeddings=4)
    # build_sam2 / build_sam2_video_predictor both add these decoder overrides (apply_postprocessing=True).
    decoder = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, mlp_dim=2048,
                   attention_downsample_rate=2, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
                   dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                   dynamic_multimask_stability_thresh=0.98)
    if target == "image":
        cls = EdgeTamConfig if edgetam else Sam2Config
        return cls(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    common = dict(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder, image_size=image_size,
        num_maskmem=7, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        multimask_output_in_sam=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        multimask_output_for_tracking=True, max_object_pointers_in_encoder=16, max_cond_frame_num=-1,
        # SAM 2.1: add/proj/signed tpos enc for object pointers + no_obj_embed_spatial; EdgeTAM has neither.
        enable_temporal_pos_encoding_for_object_pointers=not edgetam, enable_occlusion_spatial_embedding=not edgetam,
        memory_attention_hidden_size=256, memory_attention_num_layers=2 if edgetam else 4,
        memory_attention_num_attention_heads=1, memory_attention_downsample_rate=1,
        memory_attention_dropout=0.1, memory_attention_rope_feat_sizes=[image_size // 16, image_size // 16],
        memory_attention_rope_dropout=0.1, rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
        memory_encoder_hidden_size=256, memory_encoder_output_channels=64, mask_downsampler_embed_dim=256,
        mask_downsampler_kernel_size=3, mask_downsampler_stride=2, mask_downsampler_padding=1,
        mask_downsampler_total_stride=16, mask_downsampler_hidden_act="gelu", memory_fuser_num_layers=2,
        memory_fuser_embed_dim=256, memory_fuser_intermediate_dim=1024, memory_fuser_kernel_size=7,
        memory_fuser_padding=3, memory_fuser_layer_scale_init_value=1e-6, memory_fuser_hidden_act="gelu",
    )
    if not edgetam:
        return Sam2VideoConfig(memory_attention_feed_forward_hidden_size=2048,
                               memory_attention_feed_forward_hidden_act="relu", **common)
    return EdgeTamVideoConfig(
        memory_attention_mlp_hidden_size=2048, memory_attention_mlp_hidden_act="relu",
        memory_attention_rope_k_sizes=[16, 16],
        perceiver_resampler_num_latents=256, perceiver_resampler_num_latents_2d=256,
        perceiver_resampler_hidden_size=64, perceiver_resampler_mlp_intermediate_size=256,
        perceiver_resampler_num_attention_heads=1, perceiver_resampler_attention_head_dim=64,
        perceiver_resampler_num_layers=2, perceiver_resampler_hidden_dropout=0.0,
        perceiver_resampler_attention_dropout=0.0, **common)


def hf_model_class(model: str, target: Target = "video"):
    """``EdgeTamModel`` / ``EdgeTamVideoModel`` / ``Sam2Model`` / ``Sam2VideoModel`` for ``model`` and ``target``."""
    import transformers

    check_model(model)
    check_target(target)
    family = "EdgeTam" if model == "edgetam" else "Sam2"
    return getattr(transformers, f"{family}{'Video' if target == 'video' else ''}Model")


def build_hf_model(model: str, state_dict: Mapping[str, Tensor] | None = None, image_size: int = 1024,
                   target: Target = "video", device: str | torch.device | None = None,
                   trunk_spec: TimmTrunkSpec = REPVIT_M1) -> torch.nn.Module:
    """Build the transformers model of ``model`` (fp32, eval) and optionally load an official ``state_dict``.

    Args:
        model: one of :data:`~edgetam_train.export.hf_keys.MODELS`.
        state_dict: official-layout weights, converted with :func:`official_to_hf` and loaded strictly; None keeps
            transformers' random init.
        image_size: see :func:`hf_config`.
        target: "video" or "image".
        device: "meta" builds without allocating (for key/shape checks); None = default device.
        trunk_spec: see :func:`hf_config`.

    Returns:
        the model in eval mode.
    """
    config = hf_config(model, image_size, target, trunk_spec)
    cls = hf_model_class(model, target)
    if device is not None:
        with torch.device(device):
            net = cls(config)
    else:
        net = cls(config)
    if state_dict is not None:
        net.load_state_dict(official_to_hf(state_dict, model, target), strict=True)
    return net.float().eval()
