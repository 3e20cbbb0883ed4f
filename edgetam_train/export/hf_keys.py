"""The key table between the official SAM 2.1 / EdgeTAM checkpoint layout and Hugging Face transformers' layout.

Our modules use the official key names (``shared/reference/*_state_dict.tsv``). transformers has four model classes
for the same weights:

* ``EdgeTamVideoModel`` / ``Sam2VideoModel`` ("video" target): every tensor of the official checkpoint.
* ``EdgeTamModel`` / ``Sam2Model`` ("image" target): only the single-image path (vision encoder, prompt encoder,
  mask decoder, ``no_memory_embedding``); the memory attention / encoder, perceiver and object-pointer tensors are
  dropped by :func:`~edgetam_train.export.hf_convert.official_to_hf` and absent from
  :func:`~edgetam_train.export.hf_convert.hf_to_official`'s output.

The mapping is a declarative table: :data:`RENAMES` (one official key prefix <-> one transformers key prefix,
first match wins, ``{i}``-style placeholders are carried over) and :data:`RESHAPES` (the three places where
tensors are merged, split or duplicated). Both directions use the same table, so a round trip is the identity.

The main renames (see the tables for all of them):

* ``image_encoder.trunk.body.`` -> ``vision_encoder.backbone.timm_model.`` (EdgeTAM: timm ``repvit_m1`` or any other
  timm ``features_only`` trunk, see :class:`~edgetam_train.export.hf_config.TimmTrunkSpec`),
  ``image_encoder.trunk.`` -> ``vision_encoder.backbone.`` (Hiera; ``norm1/2`` -> ``layer_norm1/2``,
  ``mlp.layers.0/1`` -> ``mlp.proj_in/out``, ``patch_embed.proj`` -> ``patch_embed.projection``),
  ``image_encoder.neck.convs.N.conv.`` -> ``vision_encoder.neck.convs.N.``;
* ``sam_prompt_encoder.`` -> ``prompt_encoder.``: ``point_embeddings.{0..3}`` (four 1x256) -> one 4x256
  ``point_embed.weight``; ``pe_layer.positional_encoding_gaussian_matrix`` -> both
  ``prompt_encoder.shared_embedding.positional_embedding`` and ``shared_image_embedding.positional_embedding``;
  ``mask_downscaling.{0,1,3,4,6}`` -> ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}``;
* ``sam_mask_decoder.`` -> ``mask_decoder.``: 3-layer MLP heads ``layers.{0,1,2}`` -> ``proj_in, layers.0,
  proj_out``; ``output_upscaling.{0,1,3}`` -> ``upscale_conv1, upscale_layer_norm, upscale_conv2``; attention
  ``out_proj`` -> ``o_proj``; ``normK`` -> ``layer_normK``; ``norm_final_attn`` -> ``layer_norm_final_attn``;
  two-way block ``mlp.layers.{0,1}`` -> ``mlp.proj_in/out``;
* ``memory_attention.``: ``linear1/2`` -> ``mlp.up_proj/down_proj`` (EdgeTAM only; ``Sam2VideoModel`` keeps
  ``linear1/2``), ``normK`` -> ``layer_normK``,
  ``norm`` -> ``layer_norm``, ``out_proj`` -> ``o_proj``;
* ``memory_encoder.``: ``mask_downsampler.encoder.{3s, 3s+1}`` -> ``mask_downsampler.layers.{s}.{conv,
  layer_norm}`` and ``encoder.12`` -> ``final_conv``; ``fuser.layers.N.{dwconv, norm, pwconv1, pwconv2, gamma}``
  -> ``memory_fuser.layers.N.{depthwise_conv, layer_norm, pointwise_conv1, pointwise_conv2, scale}``;
  ``pix_feat_proj`` -> ``feature_projection``; ``out_proj`` -> ``projection``;
* ``spatial_perceiver.`` (EdgeTAM): ``latents`` -> ``latents_1d``, ``norm`` -> ``layer_norm``,
  ``layers.N.attn.{norm_latents, norm_x, to_q, to_out}`` -> ``layers.N.{layer_norm_latents, layer_norm_input,
  cross_attention.q_proj, cross_attention.o_proj}``, ``attn.to_kv`` (128x64) split into ``cross_attention.k_proj``
  (rows 0:64) and ``v_proj`` (rows 64:128), ``self_attn.{norm, to_q, to_kv, to_out}`` likewise into
  ``layer_norm_self`` / ``self_attention.*``, ``ff.{0,1,3}`` / ``self_ff.{0,1,3}`` -> ``mlp`` / ``self_mlp``
  ``.{layer_norm, up_proj, down_proj}``;
* top level: ``maskmem_tpos_enc`` -> ``memory_temporal_positional_encoding``, ``no_mem_embed`` ->
  ``no_memory_embedding``, ``no_mem_pos_enc`` -> ``no_memory_positional_encoding``, ``no_obj_ptr`` ->
  ``no_object_pointer``, ``obj_ptr_proj`` -> ``object_pointer_proj`` (MLP renames), ``obj_ptr_tpos_proj`` ->
  ``temporal_positional_encoding_projection_layer`` (SAM 2.1), ``no_obj_embed_spatial`` ->
  ``occlusion_spatial_embedding_parameter`` (SAM 2.1), ``mask_downsample`` unchanged.
The conversion that applies the table: :mod:`edgetam_train.export.hf_convert`; the transformers configs and models:
:mod:`edgetam_train.export.hf_config`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

ModelName = Literal["edgetam", "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                    "sam2.1_hiera_large"]
Target = Literal["video", "image"]
MODELS: tuple[str, ...] = ("edgetam", "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
                           "sam2.1_hiera_large")
TARGETS: tuple[str, ...] = ("video", "image")

# Placeholder -> regex. Every placeholder used in a template must be listed here.
_PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "attn": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "mattn": r"self_attn|cross_attn_image",
    "head": r"iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+",
}
_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=None)
def compile_template(template: str) -> re.Pattern[str]:
    """Regex for a key template: literal text, ``{name}`` placeholders; a trailing '.' means "prefix"."""
    parts, last = [], 0
    for m in _PLACEHOLDER_RE.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})")
        last = m.end()
    parts.append(re.escape(template[last:]))
    tail = "(?P<_rest>.*)" if template.endswith(".") else ""
    return re.compile("".join(parts) + tail + r"\Z")


@dataclass(frozen=True)
class Rename:
    """One official key template <-> one transformers key template (``only``: model family it applies to)."""

    official: str
    hf: str
    only: str | None = None  # "edgetam", "sam2.1" or None (both)

    def applies(self, model: str) -> bool:
        return self.only is None or model.startswith(self.only)


def _mlp3(official: str, hf: str, only: str | None = None) -> list[Rename]:
    """Renames of a 3-layer official ``MLP`` (``layers.0/1/2``) to transformers' ``proj_in, layers.0, proj_out``."""
    return [Rename(f"{official}.layers.0.", f"{hf}.proj_in.", only),
            Rename(f"{official}.layers.1.", f"{hf}.layers.0.", only),
            Rename(f"{official}.layers.2.", f"{hf}.proj_out.", only)]


# The official MaskDownSampler is one nn.Sequential: 4 x (conv, LayerNorm2d, GELU) then a 1x1 conv (index 12).
_MASK_DOWNSAMPLER = [r for s in range(4) for r in (
    Rename(f"memory_encoder.mask_downsampler.encoder.{3 * s}.", f"memory_encoder.mask_downsampler.layers.{s}.conv."),
    Rename(f"memory_encoder.mask_downsampler.encoder.{3 * s + 1}.",
            f"memory_encoder.mask_downsampler.layers.{s}.layer_norm."),
)] + [Rename("memory_encoder.mask_downsampler.encoder.12.", "memory_encoder.mask_downsampler.final_conv.")]

_PERCEIVER = [Rename(f"spatial_perceiver.{a}", f"spatial_perceiver.{b}", "edgetam") for a, b in [
    ("latents", "latents_1d"),
    ("latents_2d", "latents_2d"),
    ("norm.", "layer_norm."),
    ("layers.{i}.attn.norm_latents.", "layers.{i}.layer_norm_latents."),
    ("layers.{i}.attn.norm_x.", "layers.{i}.layer_norm_input."),
    ("layers.{i}.attn.to_q.", "layers.{i}.cross_attention.q_proj."),
    ("layers.{i}.attn.to_out.", "layers.{i}.cross_attention.o_proj."),
    ("layers.{i}.self_attn.norm.", "layers.{i}.layer_norm_self."),
    ("layers.{i}.self_attn.to_q.", "layers.{i}.self_attention.q_proj."),
    ("layers.{i}.self_attn.to_out.", "layers.{i}.self_attention.o_proj."),
    ("layers.{i}.ff.0.", "layers.{i}.mlp.layer_norm."),
    ("layers.{i}.ff.1.", "layers.{i}.mlp.up_proj."),
    ("layers.{i}.ff.3.", "layers.{i}.mlp.down_proj."),
    ("layers.{i}.self_ff.0.", "layers.{i}.self_mlp.layer_norm."),
    ("layers.{i}.self_ff.1.", "layers.{i}.self_mlp.up_proj."),
    ("layers.{i}.self_ff.3.", "layers.{i}.self_mlp.down_proj."),
]]

RENAMES: list[Rename] = [
    # --- image encoder
    Rename("image_encoder.trunk.body.", "vision_encoder.backbone.timm_model.", "edgetam"),
    Rename("image_encoder.trunk.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection.", "sam2.1"),
    Rename("image_encoder.trunk.blocks.{i}.norm{j}.", "vision_encoder.backbone.blocks.{i}.layer_norm{j}.", "sam2.1"),
    Rename("image_encoder.trunk.blocks.{i}.mlp.layers.0.", "vision_encoder.backbone.blocks.{i}.mlp.proj_in.",
            "sam2.1"),
    Rename("image_encoder.trunk.blocks.{i}.mlp.layers.1.", "vision_encoder.backbone.blocks.{i}.mlp.proj_out.",
            "sam2.1"),
    Rename("image_encoder.trunk.blocks.{i}.attn.", "vision_encoder.backbone.blocks.{i}.attn.", "sam2.1"),
    Rename("image_encoder.trunk.blocks.{i}.proj.", "vision_encoder.backbone.blocks.{i}.proj.", "sam2.1"),
    Rename("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed", "sam2.1"),
    Rename("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window", "sam2.1"),
    Rename("image_encoder.neck.convs.{i}.conv.", "vision_encoder.neck.convs.{i}."),
    # --- prompt encoder (point_embeddings / pe_layer: see RESHAPES)
    Rename("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    Rename("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    Rename("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    Rename("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    Rename("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    Rename("sam_prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    Rename("sam_prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    # --- mask decoder
    *_mlp3("sam_mask_decoder.{head}", "mask_decoder.{head}"),
    Rename("sam_mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    Rename("sam_mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    Rename("sam_mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    Rename("sam_mask_decoder.transformer.layers.{i}.{attn}.out_proj.",
            "mask_decoder.transformer.layers.{i}.{attn}.o_proj."),
    Rename("sam_mask_decoder.transformer.layers.{i}.{attn}.", "mask_decoder.transformer.layers.{i}.{attn}."),
    Rename("sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.",
            "mask_decoder.transformer.layers.{i}.mlp.proj_in."),
    Rename("sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.",
            "mask_decoder.transformer.layers.{i}.mlp.proj_out."),
    Rename("sam_mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
    Rename("sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.",
            "mask_decoder.transformer.final_attn_token_to_image.o_proj."),
    Rename("sam_mask_decoder.transformer.final_attn_token_to_image.",
            "mask_decoder.transformer.final_attn_token_to_image."),
    Rename("sam_mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    Rename("sam_mask_decoder.conv_s0.", "mask_decoder.conv_s0."),
    Rename("sam_mask_decoder.conv_s1.", "mask_decoder.conv_s1."),
    Rename("sam_mask_decoder.iou_token.", "mask_decoder.iou_token."),
    Rename("sam_mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    Rename("sam_mask_decoder.obj_score_token.", "mask_decoder.obj_score_token."),
    # --- memory attention
    # (Sam2VideoModel keeps linear1/linear2; EdgeTamVideoModel calls them mlp.up_proj/down_proj)
    Rename("memory_attention.layers.{i}.linear1.", "memory_attention.layers.{i}.mlp.up_proj.", "edgetam"),
    Rename("memory_attention.layers.{i}.linear2.", "memory_attention.layers.{i}.mlp.down_proj.", "edgetam"),
    Rename("memory_attention.layers.{i}.linear1.", "memory_attention.layers.{i}.linear1.", "sam2.1"),
    Rename("memory_attention.layers.{i}.linear2.", "memory_attention.layers.{i}.linear2.", "sam2.1"),
    Rename("memory_attention.layers.{i}.norm{j}.", "memory_attention.layers.{i}.layer_norm{j}."),
    Rename("memory_attention.layers.{i}.{mattn}.out_proj.", "memory_attention.layers.{i}.{mattn}.o_proj."),
    Rename("memory_attention.layers.{i}.{mattn}.", "memory_attention.layers.{i}.{mattn}."),
    Rename("memory_attention.norm.", "memory_attention.layer_norm."),
    # --- memory encoder
    *_MASK_DOWNSAMPLER,
    Rename("memory_encoder.fuser.layers.{i}.dwconv.", "memory_encoder.memory_fuser.layers.{i}.depthwise_conv."),
    Rename("memory_encoder.fuser.layers.{i}.norm.", "memory_encoder.memory_fuser.layers.{i}.layer_norm."),
    Rename("memory_encoder.fuser.layers.{i}.pwconv1.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv1."),
    Rename("memory_encoder.fuser.layers.{i}.pwconv2.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv2."),
    Rename("memory_encoder.fuser.layers.{i}.gamma", "memory_encoder.memory_fuser.layers.{i}.scale"),
    Rename("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    Rename("memory_encoder.out_proj.", "memory_encoder.projection."),
    # --- spatial perceiver (EdgeTAM; to_kv: see RESHAPES)
    *_PERCEIVER,
    # --- top-level tensors and object pointers
    Rename("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    Rename("no_mem_embed", "no_memory_embedding"),
    Rename("no_mem_pos_enc", "no_memory_positional_encoding"),
    Rename("no_obj_ptr", "no_object_pointer"),
    Rename("mask_downsample.", "mask_downsample."),
    *_mlp3("obj_ptr_proj", "object_pointer_proj"),
    Rename("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer.", "sam2.1"),
    Rename("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter", "sam2.1"),
]


def _cat0(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.cat(tensors, dim=0)]


def _chunk0(n: int) -> Callable[[list[Tensor]], list[Tensor]]:
    def split(tensors: list[Tensor]) -> list[Tensor]:
        (tensor,) = tensors
        return [t.clone() for t in tensor.chunk(n, dim=0)]
    return split


def _duplicate(tensors: list[Tensor]) -> list[Tensor]:
    (tensor,) = tensors
    return [tensor, tensor.clone()]


def _same(name: str) -> Callable[[list[Tensor]], list[Tensor]]:
    def check(tensors: list[Tensor]) -> list[Tensor]:
        first, second = tensors
        differ = first.shape != second.shape or (
            not (first.is_meta or second.is_meta) and not torch.equal(first, second))
        if differ:
            raise ValueError(f"transformers copies of {name} differ; they must hold the same tensor")
        return [first]
    return check


@dataclass(frozen=True)
class Reshape:
    """Official keys <-> transformers keys whose tensors are merged, split or duplicated (same placeholders)."""

    official: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[[list[Tensor]], list[Tensor]]
    to_official: Callable[[list[Tensor]], list[Tensor]]
    only: str | None = None

    def applies(self, model: str) -> bool:
        return self.only is None or model.startswith(self.only)


_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
RESHAPES: list[Reshape] = [
    Reshape(tuple(f"sam_prompt_encoder.point_embeddings.{p}.weight" for p in range(4)),
             ("prompt_encoder.point_embed.weight",), _cat0, _chunk0(4)),
    Reshape((_GAUSSIAN,),
             ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding"),
             _duplicate, _same(_GAUSSIAN)),
    *[Reshape((f"spatial_perceiver.layers.{{i}}.{a}.to_kv.weight",),
               (f"spatial_perceiver.layers.{{i}}.{b}.k_proj.weight",
                f"spatial_perceiver.layers.{{i}}.{b}.v_proj.weight"),
               _chunk0(2), _cat0, "edgetam")
      for a, b in (("attn", "cross_attention"), ("self_attn", "self_attention"))],
]

# transformers keys kept by the image-only models (EdgeTamModel / Sam2Model).
IMAGE_PREFIXES = ("vision_encoder.", "prompt_encoder.", "mask_decoder.", "shared_image_embedding.",
                   "no_memory_embedding")


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")


def check_target(target: str | None, allow_none: bool = False) -> None:
    if target is None and allow_none:
        return
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected 'video' or 'image'")


def in_image_model(hf_key: str) -> bool:
    return hf_key.startswith(IMAGE_PREFIXES)
