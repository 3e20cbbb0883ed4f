"""SAM 2 mask decoder: output tokens + prompt tokens attend to the image (two-way transformer), then hypernetwork
MLPs turn the mask tokens into mask logits on a 4× upsampled map (with stride-4/8 high-res features added).

Output tokens: [object-score token (SAM 2.1/EdgeTAM), IoU token, 1 single-mask token, 3 multimask tokens].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgetam_train.models.common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts masks, their IoUs and an object-presence score from image features and prompt embeddings.

    Args:
        transformer_dim: channels C (256).
        transformer: the built :class:`TwoWayTransformer`.
        num_multimask_outputs: candidate masks in multimask mode (3).
        iou_head_depth / iou_head_hidden_dim: IoU-prediction MLP.
        use_high_res_features: add projected stride-4/8 features while upsampling (``conv_s0``/``conv_s1``).
        iou_prediction_use_sigmoid: IoU head outputs in [0, 1].
        dynamic_multimask_via_stability: with single-mask output under the inference rules (``forward``'s
            ``dynamic_multimask``), fall back to the best multimask candidate when the single mask is unstable
            (stability score under ``..._thresh`` at logit ±``..._delta``).
        pred_obj_scores / pred_obj_scores_mlp: object-score token and head (MLP or linear).
        use_multimask_token_for_obj_ptr: in multimask mode, return the 3 multimask tokens (for the object pointer).
    """

    def __init__(self, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation: type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 use_high_res_features: bool = False, iou_prediction_use_sigmoid: bool = False,
                 dynamic_multimask_via_stability: bool = False, dynamic_multimask_stability_delta: float = 0.05,
                 dynamic_multimask_stability_thresh: float = 0.98, pred_obj_scores: bool = False,
                 pred_obj_scores_mlp: bool = False, use_multimask_token_for_obj_ptr: bool = False) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, c)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, c)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2), LayerNorm2d(c // 4), activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2), activation())
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=iou_prediction_use_sigmoid)
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(c, c, 1, 3) if pred_obj_scores_mlp else nn.Linear(c, 1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool, repeat_image: bool,
                high_res_features: list[Tensor] | None = None, dynamic_multimask: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode masks.

        Args:
            image_embeddings: (B or 1, C, h, w) features (``repeat_image`` repeats one image for B prompt sets).
            image_pe: (1, C, h, w) dense position encoding.
            sparse_prompt_embeddings: (B, N, C); dense_prompt_embeddings: (B, C, h, w).
            high_res_features: [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)], already projected by conv_s0/conv_s1.
            dynamic_multimask: allow the stability fallback (SAM 2 does it in eval only; the model passes its
                ``rules.dynamic_multimask``, see ``models/step_rules.py``). Needs ``dynamic_multimask_via_stability``.
        Returns:
            masks (B, M, 4h, 4w) logits, iou_pred (B, M), sam_tokens_out (B, M', C) for the object pointer,
            object_score_logits (B, 1); M = 3 in multimask mode, else 1.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, repeat_image,
            high_res_features)
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and dynamic_multimask:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, :1], iou_pred[:, :1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            tokens_out = mask_tokens_out[:, 1:]
        else:
            tokens_out = mask_tokens_out[:, :1]
        return masks, iou_pred, tokens_out, object_score_logits

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor, repeat_image: bool,
                      high_res_features: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All 4 masks and IoUs, the mask tokens (B, 4, C) and the object-score logits (B, 1)."""
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0  # index of the IoU token
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, b, dim=0)
        else:
            if image_embeddings.shape[0] != b:
                raise ValueError(f"{image_embeddings.shape[0]} images for {b} prompt sets (use repeat_image=True)")
            src = image_embeddings
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1:first + 1 + self.num_mask_tokens]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up1, norm1, act1, up2, act2 = self.output_upscaling
        if self.use_high_res_features:
            if high_res_features is None or len(high_res_features) != 2:
                raise ValueError("use_high_res_features=True needs high_res_features=[conv_s0(stride-4 map), "
                                 "conv_s1(stride-8 map)]")
            feat_s0, feat_s1 = high_res_features
            upscaled = act2(up2(act1(norm1(up1(src) + feat_s1))) + feat_s0)
        else:
            upscaled = act2(up2(act1(norm1(up1(src)))))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        _, cu, hu, wu = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = 10.0 * iou_pred.new_ones(b, 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and at -delta: (B, M, h, w) -> (B, M)."""
        flat = mask_logits.flatten(-2)
        inter = (flat > self.dynamic_multimask_stability_delta).sum(-1).float()
        union = (flat > -self.dynamic_multimask_stability_delta).sum(-1).float()
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def _dynamic_multimask_via_stability(self, all_masks: Tensor, all_ious: Tensor) -> tuple[Tensor, Tensor]:
        """Single-mask output, replaced by the best-IoU multimask candidate where the single mask is unstable."""
        multi_ious = all_ious[:, 1:]
        best = multi_ious.argmax(dim=-1)
        rows = torch.arange(all_ious.shape[0], device=all_ious.device)
        best_masks = all_masks[:, 1:][rows, best].unsqueeze(1)
        best_ious = multi_ious[rows, best].unsqueeze(1)
        single_masks, single_ious = all_masks[:, :1], all_ious[:, :1]
        stable = self.stability_scores(single_masks) >= self.dynamic_multimask_stability_thresh  # (B, 1)
        return (torch.where(stable[..., None, None], single_masks, best_masks),
                torch.where(stable, single_ious, best_ious))
