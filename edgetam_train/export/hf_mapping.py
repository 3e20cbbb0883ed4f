"""Official SAM 2.1 / EdgeTAM checkpoint layout <-> Hugging Face transformers layout.

Our modules use the official key names (``shared/reference/*_state_dict.tsv``). transformers has four model classes
for the same weights:

* ``EdgeTamVideoModel`` / ``Sam2VideoModel`` ("video" target): every tensor of the official checkpoint.
* ``EdgeTamModel`` / ``Sam2Model`` ("image" target): only the single-image path (vision encoder, prompt encoder,
  mask decoder, ``no_memory_embedding``); the memory attention / encoder, perceiver and object-pointer tensors are
  dropped by :func:`official_to_hf` and absent from :func:`hf_to_official`'s output.

The mapping is a declarative table: :data:`_RENAMES` (one official key prefix <-> one transformers key prefix,
first match wins, ``{i}``-style placeholders are carried over) and :data:`_RESHAPES` (the three places where
tensors are merged, split or duplicated). Both directions use the same table, so a round trip is the identity.

The main renames (see the tables for all of them):

* ``image_encoder.trunk.body.`` -> ``vision_encoder.backbone.timm_model.`` (EdgeTAM: timm ``repvit_m1`` or any other
  timm ``features_only`` trunk, see :class:`TimmTrunkSpec`),
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

:func:`hf_config` builds the matching transformers config (official hyper-parameters, optional reduced
``image_size``). transformers is imported lazily: only :func:`hf_config` / :func:`build_hf_model` need it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

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
def _compile(template: str) -> re.Pattern[str]:
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
class _Rename:
    """One official key template <-> one transformers key template (``only``: model family it applies to)."""

    official: str
    hf: str
    only: str | None = None  # "edgetam", "sam2.1" or None (both)

    def applies(self, model: str) -> bool:
        return self.only is None or model.startswith(self.only)


def _mlp3(official: str, hf: str, only: str | None = None) -> list[_Rename]:
    """Renames of a 3-layer official ``MLP`` (``layers.0/1/2``) to transformers' ``proj_in, layers.0, proj_out``."""
    return [_Rename(f"{official}.layers.0.", f"{hf}.proj_in.", only),
            _Rename(f"{official}.layers.1.", f"{hf}.layers.0.", only),
            _Rename(f"{official}.layers.2.", f"{hf}.proj_out.", only)]


# The official MaskDownSampler is one nn.Sequential: 4 x (conv, LayerNorm2d, GELU) then a 1x1 conv (index 12).
_MASK_DOWNSAMPLER = [r for s in range(4) for r in (
    _Rename(f"memory_encoder.mask_downsampler.encoder.{3 * s}.", f"memory_encoder.mask_downsampler.layers.{s}.conv."),
    _Rename(f"memory_encoder.mask_downsampler.encoder.{3 * s + 1}.",
            f"memory_encoder.mask_downsampler.layers.{s}.layer_norm."),
)] + [_Rename("memory_encoder.mask_downsampler.encoder.12.", "memory_encoder.mask_downsampler.final_conv.")]

_PERCEIVER = [_Rename(f"spatial_perceiver.{a}", f"spatial_perceiver.{b}", "edgetam") for a, b in [
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

_RENAMES: list[_Rename] = [
    # --- image encoder
    _Rename("image_encoder.trunk.body.", "vision_encoder.backbone.timm_model.", "edgetam"),
    _Rename("image_encoder.trunk.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection.", "sam2.1"),
    _Rename("image_encoder.trunk.blocks.{i}.norm{j}.", "vision_encoder.backbone.blocks.{i}.layer_norm{j}.", "sam2.1"),
    _Rename("image_encoder.trunk.blocks.{i}.mlp.layers.0.", "vision_encoder.backbone.blocks.{i}.mlp.proj_in.",
            "sam2.1"),
    _Rename("image_encoder.trunk.blocks.{i}.mlp.layers.1.", "vision_encoder.backbone.blocks.{i}.mlp.proj_out.",
            "sam2.1"),
    _Rename("image_encoder.trunk.blocks.{i}.attn.", "vision_encoder.backbone.blocks.{i}.attn.", "sam2.1"),
    _Rename("image_encoder.trunk.blocks.{i}.proj.", "vision_encoder.backbone.blocks.{i}.proj.", "sam2.1"),
    _Rename("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed", "sam2.1"),
    _Rename("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window", "sam2.1"),
    _Rename("image_encoder.neck.convs.{i}.conv.", "vision_encoder.neck.convs.{i}."),
    # --- prompt encoder (point_embeddings / pe_layer: see _RESHAPES)
    _Rename("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    _Rename("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    _Rename("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    _Rename("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    _Rename("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    _Rename("sam_prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    _Rename("sam_prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    # --- mask decoder
    *_mlp3("sam_mask_decoder.{head}", "mask_decoder.{head}"),
    _Rename("sam_mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    _Rename("sam_mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    _Rename("sam_mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    _Rename("sam_mask_decoder.transformer.layers.{i}.{attn}.out_proj.",
            "mask_decoder.transformer.layers.{i}.{attn}.o_proj."),
    _Rename("sam_mask_decoder.transformer.layers.{i}.{attn}.", "mask_decoder.transformer.layers.{i}.{attn}."),
    _Rename("sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.",
            "mask_decoder.transformer.layers.{i}.mlp.proj_in."),
    _Rename("sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.",
            "mask_decoder.transformer.layers.{i}.mlp.proj_out."),
    _Rename("sam_mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
    _Rename("sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.",
            "mask_decoder.transformer.final_attn_token_to_image.o_proj."),
    _Rename("sam_mask_decoder.transformer.final_attn_token_to_image.",
            "mask_decoder.transformer.final_attn_token_to_image."),
    _Rename("sam_mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    _Rename("sam_mask_decoder.conv_s0.", "mask_decoder.conv_s0."),
    _Rename("sam_mask_decoder.conv_s1.", "mask_decoder.conv_s1."),
    _Rename("sam_mask_decoder.iou_token.", "mask_decoder.iou_token."),
    _Rename("sam_mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    _Rename("sam_mask_decoder.obj_score_token.", "mask_decoder.obj_score_token."),
    # --- memory attention
    # (Sam2VideoModel keeps linear1/linear2; EdgeTamVideoModel calls them mlp.up_proj/down_proj)
    _Rename("memory_attention.layers.{i}.linear1.", "memory_attention.layers.{i}.mlp.up_proj.", "edgetam"),
    _Rename("memory_attention.layers.{i}.linear2.", "memory_attention.layers.{i}.mlp.down_proj.", "edgetam"),
    _Rename("memory_attention.layers.{i}.linear1.", "memory_attention.layers.{i}.linear1.", "sam2.1"),
    _Rename("memory_attention.layers.{i}.linear2.", "memory_attention.layers.{i}.linear2.", "sam2.1"),
    _Rename("memory_attention.layers.{i}.norm{j}.", "memory_attention.layers.{i}.layer_norm{j}."),
    _Rename("memory_attention.layers.{i}.{mattn}.out_proj.", "memory_attention.layers.{i}.{mattn}.o_proj."),
    _Rename("memory_attention.layers.{i}.{mattn}.", "memory_attention.layers.{i}.{mattn}."),
    _Rename("memory_attention.norm.", "memory_attention.layer_norm."),
    # --- memory encoder
    *_MASK_DOWNSAMPLER,
    _Rename("memory_encoder.fuser.layers.{i}.dwconv.", "memory_encoder.memory_fuser.layers.{i}.depthwise_conv."),
    _Rename("memory_encoder.fuser.layers.{i}.norm.", "memory_encoder.memory_fuser.layers.{i}.layer_norm."),
    _Rename("memory_encoder.fuser.layers.{i}.pwconv1.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv1."),
    _Rename("memory_encoder.fuser.layers.{i}.pwconv2.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv2."),
    _Rename("memory_encoder.fuser.layers.{i}.gamma", "memory_encoder.memory_fuser.layers.{i}.scale"),
    _Rename("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    _Rename("memory_encoder.out_proj.", "memory_encoder.projection."),
    # --- spatial perceiver (EdgeTAM; to_kv: see _RESHAPES)
    *_PERCEIVER,
    # --- top-level tensors and object pointers
    _Rename("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    _Rename("no_mem_embed", "no_memory_embedding"),
    _Rename("no_mem_pos_enc", "no_memory_positional_encoding"),
    _Rename("no_obj_ptr", "no_object_pointer"),
    _Rename("mask_downsample.", "mask_downsample."),
    *_mlp3("obj_ptr_proj", "object_pointer_proj"),
    _Rename("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer.", "sam2.1"),
    _Rename("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter", "sam2.1"),
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
class _Reshape:
    """Official keys <-> transformers keys whose tensors are merged, split or duplicated (same placeholders)."""

    official: tuple[str, ...]
    hf: tuple[str, ...]
    to_hf: Callable[[list[Tensor]], list[Tensor]]
    to_official: Callable[[list[Tensor]], list[Tensor]]
    only: str | None = None

    def applies(self, model: str) -> bool:
        return self.only is None or model.startswith(self.only)


_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_RESHAPES: list[_Reshape] = [
    _Reshape(tuple(f"sam_prompt_encoder.point_embeddings.{p}.weight" for p in range(4)),
             ("prompt_encoder.point_embed.weight",), _cat0, _chunk0(4)),
    _Reshape((_GAUSSIAN,),
             ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding"),
             _duplicate, _same(_GAUSSIAN)),
    *[_Reshape((f"spatial_perceiver.layers.{{i}}.{a}.to_kv.weight",),
               (f"spatial_perceiver.layers.{{i}}.{b}.k_proj.weight",
                f"spatial_perceiver.layers.{{i}}.{b}.v_proj.weight"),
               _chunk0(2), _cat0, "edgetam")
      for a, b in (("attn", "cross_attention"), ("self_attn", "self_attention"))],
]

# transformers keys kept by the image-only models (EdgeTamModel / Sam2Model).
_IMAGE_PREFIXES = ("vision_encoder.", "prompt_encoder.", "mask_decoder.", "shared_image_embedding.",
                   "no_memory_embedding")


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")


def _check_target(target: str | None, allow_none: bool = False) -> None:
    if target is None and allow_none:
        return
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected 'video' or 'image'")


def _in_image_model(hf_key: str) -> bool:
    return hf_key.startswith(_IMAGE_PREFIXES)


def _convert(state_dict: Mapping[str, Tensor], model: str, to_hf: bool) -> dict[str, Tensor]:
    """Apply _RESHAPES then _RENAMES in one direction; every input key must be consumed exactly once."""
    src_side, dst_side = ("official", "hf") if to_hf else ("hf", "official")
    remaining = dict(state_dict)
    out: dict[str, Tensor] = {}
    for rule in (r for r in _RESHAPES if r.applies(model)):
        sources, targets = getattr(rule, src_side), getattr(rule, dst_side)
        pattern = _compile(sources[0])
        for key in [k for k in remaining if pattern.match(k)]:
            groups = {k: v for k, v in pattern.match(key).groupdict().items() if k != "_rest"}
            names = [s.format(**groups) for s in sources]
            missing = [n for n in names if n not in remaining]
            if missing:
                raise ValueError(f"{key!r} needs its companion keys {missing} (model {model!r})")
            converted = (rule.to_hf if to_hf else rule.to_official)([remaining.pop(n) for n in names])
            out.update(zip((t.format(**groups) for t in targets), converted))
    renames = [(_compile(getattr(r, src_side)), getattr(r, dst_side)) for r in _RENAMES if r.applies(model)]
    unknown = []
    for key, tensor in remaining.items():
        for pattern, template in renames:
            m = pattern.match(key)
            if m:
                groups = m.groupdict()
                rest = groups.pop("_rest", "")
                new_key = template.format(**groups) + rest
                if new_key in out:
                    raise ValueError(f"{key!r} maps to {new_key!r}, which another key already produced")
                out[new_key] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        layout = "official" if to_hf else "transformers"
        raise ValueError(f"unknown {layout} keys for model {model!r}: {sorted(unknown)}")
    return out


def official_to_hf(state_dict: Mapping[str, Tensor], model: str, target: Target = "video") -> dict[str, Tensor]:
    """Official checkpoint state_dict -> transformers state_dict.

    Args:
        state_dict: official keys (as in ``shared/reference/<model>_state_dict.tsv``) -> tensors.
        model: one of :data:`MODELS`.
        target: "video" (``EdgeTamVideoModel`` / ``Sam2VideoModel``: all tensors) or "image" (``EdgeTamModel`` /
            ``Sam2Model``: the memory / perceiver / object-pointer tensors are dropped).

    Returns:
        transformers keys -> tensors (renamed tensors are shared, merged/split ones are new).

    Raises:
        ValueError: a key that is not part of ``model``'s official layout (all of them are named), or a merged group
            (e.g. ``point_embeddings.{0..3}``) with a member missing.
    """
    _check_model(model)
    _check_target(target)
    out = _convert(state_dict, model, to_hf=True)
    if target == "image":
        out = {k: v for k, v in out.items() if _in_image_model(k)}
    return out


def hf_to_official(state_dict: Mapping[str, Tensor], model: str, target: Target | None = None) -> dict[str, Tensor]:
    """transformers state_dict -> official checkpoint state_dict (inverse of :func:`official_to_hf`).

    Args:
        state_dict: transformers keys -> tensors (video layout, image layout, or the hub checkpoints that hold the
            video layout for both classes).
        model: one of :data:`MODELS`.
        target: None accepts either layout; "image" additionally requires that only image-path keys are present
            (the result then holds only the official image-path keys); "video" accepts any (the caller checks
            completeness, e.g. with a strict ``load_state_dict``).

    Returns:
        official keys -> tensors. ``point_embed`` is split into 4 new tensors, ``k_proj``/``v_proj`` concatenated
        back into ``to_kv``; the two transformers copies of the gaussian matrix must be equal.

    Raises:
        ValueError: unknown transformers keys (all named), mismatched gaussian-matrix copies, or video-only keys with
            ``target="image"``.
    """
    _check_model(model)
    _check_target(target, allow_none=True)
    if target == "image":
        extra = sorted(k for k in state_dict if not _in_image_model(k))
        if extra:
            raise ValueError(f"keys not in the transformers image layout for model {model!r}: {extra}")
    return _convert(state_dict, model, to_hf=False)


# ----------------------------------------------------------------------------------------------- configs


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
        model: one of :data:`MODELS`.
        image_size: square input size S. A multiple of 32 (stride-32 trunk stage, exact 2x FPN upsampling, Hiera's
            8x8 window position embedding tiles the S/4 map); for the EdgeTAM *video* model a multiple of 256 (the
            2D perceiver pools the S/16 memory map into exactly 16x16 windows; transformers fails otherwise: S=384
            gives 576 window latents, S=128 a zero window size). Changed with it:
            ``vision_config.backbone_feature_sizes`` ([S/4, S/8, S/16]), ``prompt_encoder_config.image_size`` (S; ``patch_size`` stays 16 so the prompt
            grid is S/16 and the mask input S/4), video ``image_size`` (S: high-res masks fed to the memory
            encoder), ``memory_attention_rope_feat_sizes`` ([S/16, S/16]), Hiera ``image_size`` (informational).
            Unchanged: ``memory_attention_rope_k_sizes`` stays [16, 16] (the perceiver's 2D latent grid is 16x16
            at any S), ``num_latents(_2d)`` 256, ``mask_downsampler_total_stride`` 16.
        target: "video" -> ``EdgeTamVideoConfig`` / ``Sam2VideoConfig``; "image" -> ``EdgeTamConfig`` /
            ``Sam2Config``.
        trunk_spec: the timm trunk of an EdgeTAM-family model (default RepViT-M1); ignored for SAM 2.1.

    Returns:
        the config object (build the model with ``<Class>(config)``; nothing is downloaded).
    """
    from transformers import EdgeTamConfig, EdgeTamVideoConfig, Sam2Config, Sam2VideoConfig

    _check_model(model)
    _check_target(target)
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

    _check_model(model)
    _check_target(target)
    family = "EdgeTam" if model == "edgetam" else "Sam2"
    return getattr(transformers, f"{family}{'Video' if target == 'video' else ''}Model")


def build_hf_model(model: str, state_dict: Mapping[str, Tensor] | None = None, image_size: int = 1024,
                   target: Target = "video", device: str | torch.device | None = None,
                   trunk_spec: TimmTrunkSpec = REPVIT_M1) -> torch.nn.Module:
    """Build the transformers model of ``model`` (fp32, eval) and optionally load an official ``state_dict``.

    Args:
        model: one of :data:`MODELS`.
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
