"""The on-device split: the four fixed-shape graphs a tracking app runs, as export-only ``nn.Module`` wrappers.

A tracking app runs, per frame (S = image size, h = w = S/16; EdgeTAM at S = 1024: h = 64, N_mem = 512)::

    image_encoder     pixels (1,3,S,S) -> image_embeddings (1,256,h,w)   F16 + no-memory embedding (prompted frames)
                                          high_res_feats_0 (1,32,4h,4w), high_res_feats_1 (1,64,2h,2w)
                                          vision_features (1,256,h,w)    raw F16 (memory attention / encoder)
    memory_attention  vision_features + memory bank + object pointers -> pix_feat (1,256,h,w) = F_M
    prompt_decoder    pix_feat (or image_embeddings) + high-res feats + clicks [+ mask] -> masks, IoUs,
                      object score, object pointers
    memory_encoder    vision_features + the frame's mask logits (1,1,S,S) + object score -> memory (1,N_mem,64)

Shapes are fixed (batch 1 = one object; the memory bank has ``max_memory_frames`` slots of N_mem tokens and
``max_object_pointers`` pointer slots, unused slots flagged 0 in ``*_valid`` and masked out of the attention, which
equals attending to the valid tokens only). The position encodings (F16's sine encoding, the memory's spatial
encoding, the learned temporal encodings) are constants inside the graphs, so the app only keeps the memory tokens,
their temporal position and the pointers. The prompt decoder reuses
:class:`~edgetam_train.export.onnx.OnnxPromptDecoder`
(the ONNX image path) and adds the object pointers. Tensor names and shapes: :func:`part_specs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgetam_train.export.onnx import OnnxImageEncoder, OnnxPromptDecoder, decoder_example
from edgetam_train.models.position_encoding import sine_pe_1d
from edgetam_train.models.rope_attention import RoPEAttention, apply_rope
from edgetam_train.models.sam2_model import SAM2Model

PARTS = ("image_encoder", "prompt_decoder", "memory_encoder", "memory_attention")
MASKED = -1.0e4  # additive attention bias of an empty memory / pointer slot (exp underflows to 0; fp16-safe)


class ImageEncoderPart(OnnxImageEncoder):
    """``pixels`` (1,3,S,S) -> image_embeddings, high_res_feats_0, high_res_feats_1 (as the ONNX image encoder) and
    ``vision_features`` (1,256,S/16,S/16), the raw F16 that memory attention and the memory encoder read."""

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        feats = self.model.encode_image(pixels)
        f16 = feats.f16
        emb = f16 + self.model.no_mem_embed.view(1, -1, 1, 1) if self.model.directly_add_no_mem_embed else f16
        return emb, feats.high_res[0], feats.high_res[1], f16


class PromptDecoderPart(OnnxPromptDecoder):
    """:class:`OnnxPromptDecoder`'s five outputs plus the object pointers (B, 256) of its two mask choices:
    ``obj_ptr`` for the best-IoU multimask token (what tracking stores with multimask output) and ``single_obj_ptr``
    for the single-mask token, both gated by the object score as :meth:`SAM2Model.decode` does."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__(model)
        self.obj_ptr_proj = model.obj_ptr_proj
        self.no_obj_ptr = model.no_obj_ptr
        self.gate = model._gate_pointer
        self.multimask_tokens = model.sam_mask_decoder.use_multimask_token_for_obj_ptr

    def forward(self, image_embeddings: Tensor, high_res_feats_0: Tensor, high_res_feats_1: Tensor,
                point_coords: Tensor, point_labels: Tensor, mask_input: Tensor, has_mask_input: Tensor):
        all_masks, all_ious, tokens, object_score = self.decode_all(
            image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
            has_mask_input)
        single_mask, single_iou = self.mask_decoder._dynamic_multimask_via_stability(all_masks, all_ious)
        multi_ious = all_ious[:, 1:]
        if self.multimask_tokens:  # the token of the best multimask candidate, as a one-hot sum (no gather)
            choice = torch.arange(multi_ious.shape[1], device=multi_ious.device)
            best = (choice[None] == multi_ious.argmax(dim=-1, keepdim=True)).to(tokens.dtype)
            multi_token = (best[:, :, None] * tokens[:, 1:]).sum(dim=1)
        else:
            multi_token = tokens[:, 0]
        obj_ptr = self.gate(self.obj_ptr_proj(multi_token), object_score)
        single_ptr = self.gate(self.obj_ptr_proj(tokens[:, 0]), object_score)
        return all_masks[:, 1:], multi_ious, single_mask, single_iou, object_score, obj_ptr, single_ptr


class MemoryEncoderPart(nn.Module):
    """``vision_features`` (1,256,h,w), ``mask_logits`` (1,1,S,S), ``object_score_logits`` (1,1), ``binarize`` (1,)
    -> ``memory`` (1, N_mem, 64), as :meth:`SAM2Model.encode_memory` (``binarize`` 1: mask = logits > 0, as on
    prompted frames; 0: sigmoid(logits))."""

    def __init__(self, model: SAM2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, vision_features: Tensor, mask_logits: Tensor, object_score_logits: Tensor, binarize: Tensor
                ) -> Tensor:
        m = self.model
        flag = binarize.reshape(-1, 1, 1, 1)
        mask = flag * (mask_logits > 0).to(mask_logits.dtype) + (1.0 - flag) * torch.sigmoid(mask_logits)
        mask = mask * m.sigmoid_scale_for_mem_enc + m.sigmoid_bias_for_mem_enc
        memory, pos = m.memory_encoder(vision_features, mask, skip_mask_sigmoid=True)
        if m.no_obj_embed_spatial is not None:
            absent = (object_score_logits <= 0).to(memory.dtype)
            memory = memory + absent[..., None, None] * m.no_obj_embed_spatial[..., None, None]
        if m.spatial_perceiver is not None:
            return m.spatial_perceiver(memory, pos)[0]
        return memory.flatten(2).transpose(1, 2)


class MemoryAttentionPart(nn.Module):
    """Memory attention over a fixed-size memory bank; see the module docstring and :func:`part_specs`.

    Inputs: ``vision_features`` (1,256,h,w); ``memory`` (1,F,N_mem,64) the stored memories; ``memory_tpos`` (1,F)
    int32 each slot's temporal position (0: conditioning frame, num_maskmem - k: k frames back, SAM 2's order);
    ``memory_valid`` (1,F) 1/0; ``obj_ptrs`` (1,P,256); ``obj_ptr_tpos`` (1,P) the pointer's frame distance /
    (min(T, max_obj_ptrs) - 1) (read only when the model encodes pointer positions; EdgeTAM does not);
    ``obj_ptr_valid`` (1,P). Output ``pix_feat``.
    """

    def __init__(self, model: SAM2Model, memory_pos: Tensor) -> None:
        super().__init__()
        self.model = model
        self.attn = model.memory_attention
        h = w = model.feat_size
        self.feat_size = (h, w)
        curr_pos = model.image_encoder.neck.position_encoding(torch.zeros(1, 256, h, w)).flatten(2).transpose(1, 2)
        for layer in self.attn.layers:  # build the RoPE tables now (eagerly): traced, they would be aten.polar
            for attn in (layer.self_attn, layer.cross_attn_image):
                if isinstance(attn, RoPEAttention):
                    attn.rope_table(h, w, torch.device("cpu"))
                    if attn.k_sizes is not None:
                        attn.rope_table(*attn.k_sizes, torch.device("cpu"))
        self.register_buffer("curr_pos", curr_pos.detach().clone())
        self.register_buffer("memory_pos", memory_pos.detach().clone().reshape(1, 1, *memory_pos.shape[-2:]))

    def _keys(self, memory: Tensor, memory_tpos: Tensor, memory_valid: Tensor, obj_ptrs: Tensor,
              obj_ptr_tpos: Tensor, obj_ptr_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(tokens (1,K,64), pos (1,K,64), additive bias (1,1,1,K)) with K = F·N_mem + P·256/64."""
        m = self.model
        b, f, n, c = memory.shape
        table = m.maskmem_tpos_enc.flip(0).reshape(m.num_maskmem, c)  # row t: temporal position t
        onehot = (memory_tpos[..., None] == torch.arange(m.num_maskmem, dtype=memory_tpos.dtype)).to(memory.dtype)
        pos = self.memory_pos + (onehot @ table)[:, :, None, :]
        p = obj_ptrs.shape[1]
        if m.add_tpos_enc_to_obj_ptrs:
            dim = m.hidden_dim if m.obj_ptr_tpos_proj is not None else m.mem_dim
            ptr_pos = sine_pe_1d(obj_ptr_tpos.reshape(-1), dim)
            if m.obj_ptr_tpos_proj is not None:
                ptr_pos = m.obj_ptr_tpos_proj(ptr_pos)
            ptr_pos = ptr_pos.reshape(b, p, -1)
        else:
            ptr_pos = obj_ptrs.new_zeros(b, p, c)
        split = obj_ptrs.shape[-1] // c
        ptr_tokens = obj_ptrs.reshape(b, p * split, c)
        if split > 1:
            ptr_pos = ptr_pos.repeat_interleave(split, dim=1)
        tokens = torch.cat((memory.reshape(b, f * n, c), ptr_tokens), dim=1)
        pos = torch.cat((pos.reshape(b, f * n, c), ptr_pos), dim=1)
        valid = torch.cat((memory_valid.repeat_interleave(n, dim=1), obj_ptr_valid.repeat_interleave(split, dim=1)),
                          dim=1)
        return tokens, pos, ((1.0 - valid) * MASKED).reshape(b, 1, 1, -1)

    def _cross(self, layer, tgt: Tensor, tokens: Tensor, pos: Tensor, bias: Tensor, num_frames: int,
               num_mem: int) -> Tensor:
        """The layer's cross-attention block with the slot bias (equal to the unmasked block on valid tokens);
        the first ``num_mem`` keys are ``num_frames`` memory frames (rotated as in :class:`RoPEAttention`), the rest
        object-pointer tokens (not rotated)."""
        attn: RoPEAttention = layer.cross_attn_image
        x = layer.norm2(tgt)
        q = x + self.curr_pos if layer.pos_enc_at_cross_attn_queries else x
        k = tokens + pos if layer.pos_enc_at_cross_attn_keys else tokens
        q, k, v = attn.project(q, k, tokens)
        h, w = self.feat_size
        q = apply_rope(q, attn.rope_table(h, w, q.device))
        k = torch.cat((attn._rotate_keys(k[:, :, :num_mem], (h, w), num_frames), k[:, :, num_mem:]), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return tgt + attn.out_proj(attn._recombine_heads(out))

    def forward(self, vision_features: Tensor, memory: Tensor, memory_tpos: Tensor, memory_valid: Tensor,
                obj_ptrs: Tensor, obj_ptr_tpos: Tensor, obj_ptr_valid: Tensor) -> Tensor:
        b, c, h, w = vision_features.shape
        tokens, pos, bias = self._keys(memory, memory_tpos, memory_valid, obj_ptrs, obj_ptr_tpos, obj_ptr_valid)
        curr = vision_features.flatten(2).transpose(1, 2)
        out = curr + 0.1 * self.curr_pos if self.attn.pos_enc_at_input else curr
        for layer in self.attn.layers:
            out = layer._self_attention(out, self.curr_pos, self.feat_size)
            out = self._cross(layer, out, tokens, pos, bias, memory.shape[1], memory.shape[1] * memory.shape[2])
            out = out + layer.linear2(layer.activation(layer.linear1(layer.norm3(out))))
        return self.attn.norm(out).transpose(1, 2).reshape(b, c, h, w)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape, dtype ("float32" / "int32") and what it holds."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str


@dataclass(frozen=True)
class PartSpec:
    """One graph of the split: its inputs and outputs in call order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str


def part_specs(model: SAM2Model, num_points: int, max_memory_frames: int, max_object_pointers: int,
               memory_tokens: int) -> dict[str, PartSpec]:
    """Names, shapes and meanings of every graph's tensors (batch 1; ``num_points`` clicks per prompt, the graph
    appends SAM's padding point itself)."""
    s, h = model.image_size, model.feat_size
    f32 = "float32"
    T = TensorSpec
    emb = T("image_embeddings", (1, 256, h, h), f32, "F16 + no-memory embedding (prompted frames, single images)")
    hr0 = T("high_res_feats_0", (1, 32, s // 4, s // 4), f32, "stride-4 features (projected)")
    hr1 = T("high_res_feats_1", (1, 64, s // 8, s // 8), f32, "stride-8 features (projected)")
    vf = T("vision_features", (1, 256, h, h), f32, "raw F16 (memory attention, memory encoder)")
    low = (1, 1, s // 4, s // 4)
    return {
        "image_encoder": PartSpec("image_encoder", (
            T("pixels", (1, 3, s, s), f32, "RGB resized to SxS, /255, ImageNet mean/std"),), (emb, hr0, hr1, vf),
            "once per frame / image"),
        "prompt_decoder": PartSpec("prompt_decoder", (
            T("image_embeddings", (1, 256, h, h), f32, "image_embeddings (prompted frame) or pix_feat (tracked frame)"),
            hr0, hr1,
            T("point_coords", (1, num_points, 2), f32, "x, y in the SxS input (x * S / W, y * S / H)"),
            T("point_labels", (1, num_points), f32, "1 positive, 0 negative, 2/3 box corners, -1 padding"),
            T("mask_input", low, f32, "previous low-res logits (any values when has_mask_input = 0)"),
            T("has_mask_input", (1,), f32, "1 uses mask_input, 0 not")), (
            T("masks", (1, 3, s // 4, s // 4), f32, "multimask logits"),
            T("iou_predictions", (1, 3), f32, "their predicted IoUs"),
            T("single_mask", low, f32, "single-mask logits (dynamic-stability fallback applied)"),
            T("single_iou", (1, 1), f32, "its predicted IoU"),
            T("object_score_logits", (1, 1), f32, "> 0: object present"),
            T("obj_ptr", (1, 256), f32, "object pointer of the best-IoU multimask candidate"),
            T("single_obj_ptr", (1, 256), f32, "object pointer of the single mask")),
            "prompt encoder + mask decoder, once per prompt / tracked frame"),
        "memory_encoder": PartSpec("memory_encoder", (
            vf, T("mask_logits", (1, 1, s, s), f32, "the frame's chosen mask logits at SxS (bilinear from low-res)"),
            T("object_score_logits", (1, 1), f32, "the frame's object score"),
            T("binarize", (1,), f32, "1: mask = logits > 0 (prompted frames), 0: sigmoid(logits) (tracked)")), (
            T("memory", (1, memory_tokens, 64), f32, "the frame's memory tokens (keep them in the bank)"),),
            "after every frame"),
        "memory_attention": PartSpec("memory_attention", (
            vf, T("memory", (1, max_memory_frames, memory_tokens, 64), f32, "memory tokens of the bank's slots"),
            T("memory_tpos", (1, max_memory_frames), "int32", "slot's temporal position: 0 = conditioning frame, "
              f"{model.num_maskmem} - k = k frames back (k = 1..{model.num_maskmem - 1})"),
            T("memory_valid", (1, max_memory_frames), f32, "1 = slot used, 0 = empty"),
            T("obj_ptrs", (1, max_object_pointers, 256), f32, "object pointers (conditioning frames, then recent)"),
            T("obj_ptr_tpos", (1, max_object_pointers), f32, "frame distance / (min(T, max_obj_ptrs) - 1); unused "
              "by EdgeTAM" if not model.add_tpos_enc_to_obj_ptrs else "frame distance / (min(T, max_obj_ptrs) - 1)"),
            T("obj_ptr_valid", (1, max_object_pointers), f32, "1 = pointer used, 0 = empty")), (
            T("pix_feat", (1, 256, h, h), f32, "F_M: memory-conditioned features for prompt_decoder"),),
            "before decoding a tracked frame"),
    }


def build_parts(model: SAM2Model) -> dict[str, nn.Module]:
    """The four wrappers around ``model`` (fuse it first: :func:`~edgetam_train.export.onnx.fuse_for_export`)."""
    model.eval()
    with torch.no_grad():
        s = model.image_size
        f16 = torch.zeros(1, 256, model.feat_size, model.feat_size)
        _, memory_pos = model.encode_memory(
            _features(f16), torch.zeros(1, 1, s, s), torch.ones(1, 1), is_mask_from_pts=False)
    return {"image_encoder": ImageEncoderPart(model).eval(), "prompt_decoder": PromptDecoderPart(model).eval(),
            "memory_encoder": MemoryEncoderPart(model).eval(),
            "memory_attention": MemoryAttentionPart(model, memory_pos[0]).eval()}


def _features(f16: Tensor):
    from edgetam_train.models.outputs import ImageFeatures

    return ImageFeatures(f16, None, None)


def example_inputs(model: SAM2Model, specs: dict[str, PartSpec], seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Deterministic example inputs per graph (random features, two clicks + padding, half-full memory bank)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, Tensor]] = {}
    num_points = specs["prompt_decoder"].inputs[3].shape[1]
    prompts = decoder_example(model.image_size, num_points, seed=seed)
    for name, spec in specs.items():
        args = {}
        for t in spec.inputs:
            if t.dtype == "int32":
                args[t.name] = torch.arange(t.shape[1], dtype=torch.int32).reshape(t.shape) % model.num_maskmem
            elif t.name.endswith("_valid"):
                n = t.shape[1]
                args[t.name] = (torch.arange(n) < max(1, n // 2)).float().reshape(t.shape)
            elif t.name in prompts:
                args[t.name] = torch.from_numpy(prompts[t.name])
            elif t.name == "binarize":
                args[t.name] = torch.zeros(1)
            else:
                args[t.name] = torch.randn(*t.shape, generator=gen)
        out[name] = args
    return out
