"""The SAM 2 family model: EdgeTAM (student) and SAM 2.1 (teacher) are this class with different submodules.

Constructors receive built submodules (see ``configs/arch/*.yaml``), so the module tree equals the official
checkpoint key tree. The class only holds the per-frame operations; tracking state lives in
:class:`~edgetam_train.models.memory_bank.MemoryBank`, prompt simulation in ``edgetam_train.distill.prompting`` and the
user-facing loops in ``edgetam_train.predictor``.

One frame step (:meth:`SAM2Model.track_step`)::

    images ─ encode_image ─► F16 (B,256,S/16,S/16) + high-res (B,32,S/4,S/4), (B,64,S/8,S/8)
    F16 + memory tokens (read_memory) ─ condition ─► F_M (B,256,S/16,S/16)
    F_M + prompts ─ decode (prompt encoder + mask decoder) ─► masks, IoUs, object score, object pointer
    F16 + predicted mask ─ encode_memory (memory encoder [+ spatial perceiver]) ─► memory tokens (B,N,64)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from edgetam_train.models.memory_bank import FrameOutput, MemoryBank
from edgetam_train.models.outputs import ImageFeatures, MemoryContext, SamOutput
from edgetam_train.models.position_encoding import sine_pe_1d
from edgetam_train.models.step_rules import INFERENCE, StepRules, rules_by_name

# logit given to every pixel of an object predicted absent (official NO_OBJ_SCORE)
NO_OBJ_SCORE = -1024.0


class SAM2Model(nn.Module):
    """SAM 2-family model built from its parts.

    Args:
        image_encoder: trunk + FPN neck; ``forward(images) -> (fpn list, pos list)``, high-res first.
        memory_attention: conditions F16 on memory tokens.
        memory_encoder: fuses F16 with a mask into a (B, 64, H, W) memory.
        sam_prompt_encoder / sam_mask_decoder: the SAM heads.
        obj_ptr_proj: MLP from the decoder's output token to an object pointer.
        spatial_perceiver: EdgeTAM's 2D Spatial Perceiver (None for SAM 2.1).
        obj_ptr_tpos_proj: projection of the pointers' temporal encoding (SAM 2.1; None for EdgeTAM).
        num_maskmem: memory frames read per step (1 conditioning + 6 previous).
        image_size: model input size S.
        no_obj_embed_spatial: add a learned embedding to the memory of frames where the object is absent (SAM 2.1).
        The remaining flags are SAM 2's options with the official meaning (see configs/arch/*.yaml); the ``*_for_eval``
        ones and ``binarize_mask_from_pts_for_mem_enc`` apply under the inference rules (:attr:`rules`), not in
        ``eval()``.

    ``rules`` (:mod:`~edgetam_train.models.step_rules`): which of SAM 2's train/eval differences a frame step follows;
    :data:`INFERENCE` unless a caller switches (``with model.using_rules(TRAINING): ...``). Independent of
    ``train()`` / ``eval()``, which only switch dropout and BatchNorm.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        sam_prompt_encoder: nn.Module,
        sam_mask_decoder: nn.Module,
        obj_ptr_proj: nn.Module,
        spatial_perceiver: nn.Module | None = None,
        obj_ptr_tpos_proj: nn.Module | None = None,
        num_maskmem: int = 7,
        image_size: int = 1024,
        backbone_stride: int = 16,
        hidden_dim: int = 256,
        mem_dim: int = 64,
        sigmoid_scale_for_mem_enc: float = 20.0,
        sigmoid_bias_for_mem_enc: float = -10.0,
        binarize_mask_from_pts_for_mem_enc: bool = False,
        use_mask_input_as_output_without_sam: bool = True,
        max_cond_frames_in_attn: int = -1,
        directly_add_no_mem_embed: bool = True,
        use_high_res_features_in_sam: bool = True,
        multimask_output_in_sam: bool = True,
        multimask_min_pt_num: int = 0,
        multimask_max_pt_num: int = 1,
        multimask_output_for_tracking: bool = True,
        memory_temporal_stride_for_eval: int = 1,
        max_obj_ptrs_in_encoder: int = 16,
        add_tpos_enc_to_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        only_obj_ptrs_in_the_past_for_eval: bool = True,
        fixed_no_obj_ptr: bool = True,
        soft_no_obj_ptr: bool = False,
        no_obj_embed_spatial: bool = False,
    ) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        windows = int(round(getattr(spatial_perceiver, "num_latents_2d", 0) ** 0.5))
        if windows and (image_size // backbone_stride) % windows:
            grid = image_size // backbone_stride
            raise ValueError(f"image_size {image_size}: the spatial perceiver splits the {grid}"
                             f"x{grid} memory into {windows}x{windows} windows, so image_size "
                             f"must be a multiple of {backbone_stride * windows}")
        # registration order = official state_dict order
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden_dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim)) if no_obj_embed_spatial else None
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr,
                  self.no_obj_embed_spatial):
            if p is not None:
                trunc_normal_(p, std=0.02)
        self.image_encoder = image_encoder
        # turns a mask prompt (0..1 at S×S) into a low-res logit-scale prompt, for the pointer of mask-input frames
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.obj_ptr_proj = obj_ptr_proj
        self.obj_ptr_tpos_proj = obj_ptr_tpos_proj
        self.spatial_perceiver = spatial_perceiver

        self.num_maskmem = num_maskmem
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.hidden_dim = hidden_dim
        self.mem_dim = mem_dim
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.max_cond_frames_in_attn = max_cond_frames_in_attn
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        self.high_res_in_neck = False  # set by models.fuse.fuse_high_res_projection (inference only)
        self.rules: StepRules = INFERENCE

    @contextmanager
    def using_rules(self, rules: StepRules | str) -> Iterator[SAM2Model]:
        """Run the enclosed frame steps under ``rules`` (``TRAINING`` / ``INFERENCE`` or their names); restores the
        previous rules on exit."""
        previous, self.rules = self.rules, rules_by_name(rules)
        try:
            yield self
        finally:
            self.rules = previous

    # ------------------------------------------------------------------ image
    @property
    def feat_size(self) -> int:
        """Side of the stride-16 grid, S/16."""
        return self.image_size // self.backbone_stride

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Normalised images (B, 3, S, S) -> :class:`ImageFeatures` (F16, its pos enc, projected high-res maps)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"encode_image expects (B, 3, {self.image_size}, {self.image_size}) normalised images, "
                             f"got {tuple(images.shape)}")
        fpn, pos = self.image_encoder(images)
        high_res = None
        if self.high_res_in_neck:  # the neck already applied conv_s0 / conv_s1 (fuse_high_res_projection)
            high_res = [fpn[0], fpn[1]]
        elif self.use_high_res_features_in_sam:
            high_res = [self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1])]
        return ImageFeatures(fpn[-1], pos[-1], high_res)

    # ------------------------------------------------------------------ memory read
    def read_memory(self, frame_idx: int, bank: MemoryBank, num_frames: int, reverse: bool = False
                    ) -> MemoryContext | None:
        """Memory tokens frame ``frame_idx`` attends to, from ``bank``; None if the bank has no memory yet."""
        stride = self.memory_temporal_stride_for_eval if self.rules.eval_memory_stride else 1
        frames = bank.memory_frames(frame_idx, self.num_maskmem, self.max_cond_frames_in_attn, stride, reverse)
        frames = [(t, out) for t, out in frames if out.memory is not None]
        if not frames:
            return None
        tokens = [out.memory for _, out in frames]
        pos = [out.memory_pos + self.maskmem_tpos_enc[self.num_maskmem - t - 1].view(1, 1, -1) for t, out in frames]
        num_spatial = len(tokens)

        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        only_past = self.rules.past_pointers_only and self.only_obj_ptrs_in_the_past_for_eval
        ptrs = bank.pointer_frames(frame_idx, num_frames, self.max_obj_ptrs_in_encoder, self.max_cond_frames_in_attn,
                                   only_past, reverse, self.use_signed_tpos_enc_to_obj_ptrs)
        num_ptr_tokens = 0
        if ptrs:
            dists, vecs = zip(*ptrs)
            obj_ptrs = torch.stack(vecs, dim=1)  # (B, P, 256)
            b, p, c = obj_ptrs.shape
            if self.add_tpos_enc_to_obj_ptrs:
                t = torch.tensor(dists, device=obj_ptrs.device, dtype=torch.float32) / (max_ptrs - 1)
                tpos_dim = c if self.obj_ptr_tpos_proj is not None else self.mem_dim
                ptr_pos = sine_pe_1d(t, tpos_dim)
                if self.obj_ptr_tpos_proj is not None:
                    ptr_pos = self.obj_ptr_tpos_proj(ptr_pos)
                ptr_pos = ptr_pos.unsqueeze(0).expand(b, -1, -1)
            else:
                ptr_pos = obj_ptrs.new_zeros(b, p, self.mem_dim)
            split = c // self.mem_dim
            if split > 1:  # a 256-d pointer becomes 4 tokens of 64 channels
                obj_ptrs = obj_ptrs.reshape(b, p * split, self.mem_dim)
                ptr_pos = ptr_pos.repeat_interleave(split, dim=1)
            tokens.append(obj_ptrs)
            pos.append(ptr_pos.to(obj_ptrs.dtype))
            num_ptr_tokens = obj_ptrs.shape[1]
        return MemoryContext(torch.cat(tokens, 1), torch.cat(pos, 1), num_ptr_tokens, num_spatial)

    def condition(self, feats: ImageFeatures, memory: MemoryContext | None) -> Tensor:
        """F16 conditioned on memory: F_M (B, 256, H, W).

        Without memory (an initial conditioning frame) the learned no-memory embedding is added directly, or, when
        ``directly_add_no_mem_embed`` is off, attended to as a single dummy memory token.
        """
        f16 = feats.f16
        b, c, h, w = f16.shape
        if memory is None:
            if self.directly_add_no_mem_embed:
                return f16 + self.no_mem_embed.view(1, c, 1, 1)
            memory = MemoryContext(self.no_mem_embed.expand(b, 1, self.mem_dim),
                                   self.no_mem_pos_enc.expand(b, 1, self.mem_dim), 0, 1)
        out = self.memory_attention(
            curr=f16.flatten(2).transpose(1, 2), curr_pos=feats.f16_pos.flatten(2).transpose(1, 2),
            memory=memory.tokens, memory_pos=memory.pos, feat_size=(h, w),
            num_obj_ptr_tokens=memory.num_obj_ptr_tokens, num_spatial_mem=memory.num_spatial_mem)
        return out.transpose(1, 2).reshape(b, c, h, w)

    # ------------------------------------------------------------------ SAM heads
    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        """Official rule: multimask output on conditioning frames (or always when tracking) for few clicks."""
        return (self.multimask_output_in_sam
                and (is_init_cond_frame or self.multimask_output_for_tracking)
                and self.multimask_min_pt_num <= num_points <= self.multimask_max_pt_num)

    def heads(self, pix_feat: Tensor, high_res: list[Tensor] | None, points: tuple[Tensor, Tensor] | None,
              mask_inputs: Tensor | None, multimask_output: bool, repeat_image: bool = False
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw prompt encoder + mask decoder: (masks (B,M,4h,4w), ious (B,M), tokens (B,M',256), obj logits (B,1)).

        ``mask_inputs`` (B, 1, h', w') logits are resized (antialiased bilinear) to the prompt encoder's mask size.
        """
        if mask_inputs is not None:
            size = tuple(self.sam_prompt_encoder.mask_input_size)
            if tuple(mask_inputs.shape[-2:]) != size:
                mask_inputs = F.interpolate(mask_inputs.float(), size=size, mode="bilinear", align_corners=False,
                                            antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_inputs)
        return self.sam_mask_decoder(
            image_embeddings=pix_feat, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=repeat_image, high_res_features=high_res, dynamic_multimask=self.rules.dynamic_multimask)

    def decode(self, pix_feat: Tensor, high_res: list[Tensor] | None, point_coords: Tensor | None = None,
               point_labels: Tensor | None = None, mask_inputs: Tensor | None = None,
               multimask_output: bool = False) -> SamOutput:
        """Prompt encoder + mask decoder on F_M.

        Args:
            pix_feat: (B, 256, H, W) memory-conditioned features.
            high_res: projected high-res features (see :class:`ImageFeatures`).
            point_coords: (B, P, 2) xy in model-input pixels; boxes are points with labels 2 (top-left), 3.
            point_labels: (B, P) int labels (1 positive, 0 negative, 2/3 box corners, -1 padding).
            mask_inputs: (B, 1, h, w) mask logits; resized (antialiased bilinear) to 4H×4W if needed.
            multimask_output: return 3 candidate masks (else 1).
        """
        b = pix_feat.shape[0]
        if point_coords is None:  # no clicks: one padding point, as SAM 2 does on tracked frames
            point_coords = pix_feat.new_zeros(b, 1, 2)
            point_labels = -torch.ones(b, 1, dtype=torch.int32, device=pix_feat.device)
        masks, ious, tokens, obj_logits = self.heads(pix_feat, high_res, (point_coords, point_labels), mask_inputs,
                                                     multimask_output)
        present = obj_logits > 0
        # a frame where the object is predicted absent gets a hard "no object" mask (used for memory too)
        masks = torch.where(present[:, :, None, None], masks, NO_OBJ_SCORE).float()
        token = tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=masks.device)
            low_best = masks[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            low_best = masks
        # only the chosen mask at S×S (the same numbers as upsampling all candidates and picking: the upsample is
        # per channel); all candidates at S×S would be the step's largest tensor (N×3×S² float32)
        high_best = F.interpolate(low_best, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False)
        obj_ptr = self._gate_pointer(self.obj_ptr_proj(token), obj_logits)
        return SamOutput(masks, ious, low_best, high_best, obj_ptr, obj_logits)

    def _gate_pointer(self, obj_ptr: Tensor, object_score_logits: Tensor) -> Tensor:
        """Replace (or mix) the pointer of absent objects with the learned no-object pointer."""
        weight = object_score_logits.sigmoid() if self.soft_no_obj_ptr else (object_score_logits > 0).float()
        if self.fixed_no_obj_ptr:
            obj_ptr = weight * obj_ptr
        return obj_ptr + (1 - weight) * self.no_obj_ptr

    def mask_as_output(self, feats: ImageFeatures, mask_inputs: Tensor) -> SamOutput:
        """A mask prompt (B, 1, S, S) taken as the prediction (±10 logits); the pointer comes from the decoder."""
        scale, bias = 20.0, -10.0
        mask = mask_inputs.float()
        high = mask * scale + bias
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        ious = mask.new_ones(mask.shape[0], 1)
        ptr = self.decode(feats.f16, feats.high_res, mask_inputs=self.mask_downsample(mask)).obj_ptr
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()
        obj_logits = scale * present + bias
        if self.fixed_no_obj_ptr:
            ptr = present * ptr
        ptr = ptr + (1 - present) * self.no_obj_ptr
        return SamOutput(low, ious, low, high, ptr, obj_logits)

    # ------------------------------------------------------------------ memory write
    def encode_memory(self, feats: ImageFeatures, high_res_masks: Tensor, object_score_logits: Tensor,
                      is_mask_from_pts: bool) -> tuple[Tensor, Tensor]:
        """Memory of a frame: F16 fused with its predicted mask -> tokens (B, N, 64) and pos (B, N, 64).

        N = H·W for SAM 2.1; EdgeTAM's spatial perceiver compresses it to 512 (256 global + 256 2D latents).
        """
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and self.rules.binarize_memory_masks:
            mask = (high_res_masks > 0).float()
        else:
            mask = torch.sigmoid(high_res_masks)
        mask = mask * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc
        memory, pos = self.memory_encoder(feats.f16, mask, skip_mask_sigmoid=True)
        if self.no_obj_embed_spatial is not None:
            absent = (object_score_logits <= 0).to(memory.dtype)  # (B, 1)
            memory = memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        if self.spatial_perceiver is not None:
            return self.spatial_perceiver(memory, pos)
        return memory.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ one frame
    def track_step(self, frame_idx: int, is_init_cond_frame: bool, feats: ImageFeatures, bank: MemoryBank,
                   num_frames: int, point_coords: Tensor | None = None, point_labels: Tensor | None = None,
                   mask_inputs: Tensor | None = None, prev_mask_logits: Tensor | None = None,
                   run_mem_encoder: bool = True, reverse: bool = False, multimask_output: bool | None = None
                   ) -> FrameOutput:
        """Segment B objects on one frame from memory and prompts; optionally encode the result into memory.

        ``feats`` are this frame's image features for the B objects. ``prev_mask_logits`` (B, 1, S/4, S/4) are
        fed back with correction clicks. Returns a :class:`FrameOutput` (``pix_feat`` = F_M); the caller stores it
        in ``bank``.
        """
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            sam = self.mask_as_output(feats, mask_inputs)
            pix_feat = feats.f16
        else:
            memory = None if is_init_cond_frame else self.read_memory(frame_idx, bank, num_frames, reverse)
            if memory is None and not is_init_cond_frame:
                raise ValueError(f"frame {frame_idx} is not a conditioning frame but the memory bank is empty")
            pix_feat = self.condition(feats, memory)
            if prev_mask_logits is not None:
                mask_inputs = prev_mask_logits
            if multimask_output is None:
                num_pts = 0 if point_labels is None else point_labels.shape[1]
                multimask_output = self.use_multimask(is_init_cond_frame, num_pts)
            sam = self.decode(pix_feat, feats.high_res, point_coords, point_labels, mask_inputs, multimask_output)
        out = FrameOutput(sam.low_res_masks, sam.high_res_masks, sam.obj_ptr, sam.object_score_logits, sam.ious,
                          sam.multimasks, pix_feat=pix_feat)
        if run_mem_encoder and self.num_maskmem > 0:
            out.memory, out.memory_pos = self.encode_memory(feats, sam.high_res_masks, sam.object_score_logits,
                                                            is_mask_from_pts=point_labels is not None)
        return out
