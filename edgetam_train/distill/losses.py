"""Training losses: SAM 2's task loss (focal + dice + IoU-prediction + object score) and feature distillation.

EdgeTAM distillation (paper): ``L = L_task + λ_F·MSE(F16) + λ_M·MSE(F_M)`` with λ_F = 1 in both stages and λ_M = 1 on
video only. ``L_task`` follows SAM 2 training (``training/loss_fns.py``, ``MultiStepMultiMasksAndIous``):

- per prompting step and object, focal (α 0.25, γ 2, mean over pixels), dice (+1 smoothing) and the L1 error of the
  predicted IoU against the *actual* IoU of the thresholded mask are computed for each of the M candidate masks;
- with M > 1 only the candidate with the lowest ``w_focal·focal + w_dice·dice`` is supervised (best of 3); the IoU
  term uses the same candidate, or the mean over all candidates with ``supervise_all_iou``;
- mask, dice and IoU terms count only for objects present in the target; the object-score term is a plain BCE
  (SAM 2's focal with γ 0, α -1) on "is the target non-empty" and counts for every object;
- every term is summed over objects and prompting steps and divided by ``num_objects``.

Resolution: SAM 2 computes the loss on the high-res masks, i.e. the decoder's low-res logits upsampled (bilinear,
``align_corners=False``) to the image size, against full-resolution targets. :class:`TaskLoss` does the same: when
the logits' size differs from the targets' it upsamples the logits to the targets' size, by default chunk by chunk of
objects without keeping the upsampled masks for backward (``mask_loss=lean``, :mod:`edgetam_train.distill.mask_loss`;
``direct`` is the plain path, same numbers).

Reductions are done in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from edgetam_train.distill.mask_loss import DEFAULT_CHUNK_ELEMENTS, lean_mask_terms
from edgetam_train.distill.prompting import PromptStep

TASK_KEYS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")
MASK_LOSSES = ("lean", "direct")


# ---------------------------------------------------------------------------------------------- elementwise pieces
def _broadcast_targets(logits: Tensor, targets: Tensor) -> Tensor:
    """Targets (N, 1, H, W) or (N, M, H, W), bool or float → float32 (N, M, H, W) like ``logits``."""
    if targets.dim() != 4 or logits.dim() != 4:
        raise ValueError(f"expected logits (N, M, H, W) and targets (N, 1, H, W), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    return targets.to(torch.float32).expand_as(logits)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet focal loss per candidate mask, averaged over pixels: ``torchvision.ops.sigmoid_focal_loss`` (the
    elementwise loss SAM 2's ``loss_fns.sigmoid_focal_loss`` also computes) in float32, then SAM 2's
    ``loss_on_multimask`` reduction (mean over H·W per object and candidate; the division by the number of objects
    happens in :class:`TaskLoss`).

    Args:
        logits: (N, M, H, W) mask logits for N objects × M candidate masks.
        targets: (N, 1, H, W) (or (N, M, H, W)) bool/float ground truth in {0, 1}.
        alpha: weight of the positive class (negatives get 1 - alpha), in [0, 1]; alpha < 0 disables the weighting.
        gamma: focusing exponent on (1 - p_t).
    Returns:
        (N, M) float32: mean over H·W of ``α_t · (1 - p_t)^γ · BCE``.
    """
    t = _broadcast_targets(logits, targets)
    loss = tv_sigmoid_focal_loss(logits.to(torch.float32), t, alpha=alpha if alpha >= 0 else -1, gamma=gamma)
    return loss.flatten(2).mean(-1)


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss per candidate mask.

    Args:
        logits: (N, M, H, W) mask logits.
        targets: (N, 1, H, W) (or (N, M, H, W)) bool/float ground truth.
        smooth: added to numerator and denominator (SAM 2: 1).
    Returns:
        (N, M) float32: ``1 - (2·Σ σ(x)·t + s) / (Σ σ(x) + Σ t + s)``; 0 for a perfect (saturated) prediction.
    """
    t = _broadcast_targets(logits, targets).flatten(2)
    p = torch.sigmoid(logits.to(torch.float32)).flatten(2)
    overlap = (p * t).sum(-1)
    return 1.0 - (2.0 * overlap + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """Actual IoU between thresholded logits (> 0) and targets (> 0).

    Args:
        logits: (N, M, H, W); targets: (N, 1, H, W) or (N, M, H, W).
    Returns:
        (N, M) float32 IoU; an empty union gives 0 (union clamped to 1, as SAM 2).
    """
    pred = (logits > 0).flatten(2)
    gt = (targets > 0).expand_as(logits).flatten(2)
    inter = (pred & gt).sum(-1).to(torch.float32)
    union = (pred | gt).sum(-1).to(torch.float32)
    return inter / union.clamp(min=1.0)


def iou_head_loss(pred_iou: Tensor, actual: Tensor, use_l1: bool = True, use_bce: bool = False) -> Tensor:
    """Error of the IoU head against the actual IoU of each thresholded candidate mask.

    Args:
        pred_iou: (N, M) predicted IoU per candidate.
        actual: (N, M) actual IoU (no gradient; :func:`mask_iou`).
        use_l1: L1 (SAM 2.1 training) or squared error.
        use_bce: binary cross-entropy against the actual IoU as a soft target instead (overrides ``use_l1``). Needs
            a sigmoid IoU head (``iou_prediction_use_sigmoid``): the head's logit is recovered as
            ``torch.logit(p)``, so the gradient in it is ``p - IoU``. L1 and squared error carry the sigmoid's
            slope ``p·(1 - p)`` instead, which vanishes once the head saturates: trained from random init the head
            reaches logits of -24..-38 within the first thousand steps (while every mask is still wrong and every
            IoU 0) and never recovers (README "Learning evidence").
    Returns:
        (N, M) float32 per-candidate error.
    """
    pred = pred_iou.to(torch.float32)
    if use_bce:
        if torch.any((pred < 0) | (pred > 1)):
            raise ValueError("iou_prediction_loss(use_bce=True): predicted IoUs must lie in [0, 1] (a sigmoid IoU "
                             f"head, iou_prediction_use_sigmoid=true); got min {pred.min().item():.3g}, "
                             f"max {pred.max().item():.3g}")
        head_logit = torch.logit(pred.clamp(torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps / 2))
        return F.binary_cross_entropy_with_logits(head_logit, actual, reduction="none")
    return (pred - actual).abs() if use_l1 else (pred - actual).square()


def iou_prediction_loss(pred_iou: Tensor, logits: Tensor, targets: Tensor, use_l1: bool = True,
                        use_bce: bool = False) -> Tensor:
    """:func:`iou_head_loss` against the actual IoU of the thresholded ``logits`` (N, M, H, W) with ``targets``
    (N, 1, H, W) (no gradient into the masks); (N, M) float32."""
    return iou_head_loss(pred_iou, mask_iou(logits.detach(), targets), use_l1=use_l1, use_bce=use_bce)


def direct_mask_terms(low: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """(focal, dice, IoU), each (N, M) float32, as SAM 2 writes them: the logits (N, M, h, w) upsampled (bilinear,
    float32) to the targets' (N, 1, H, W) size when it differs, then the elementwise terms on all candidates at once
    (``mask_loss=direct``; :func:`edgetam_train.distill.mask_loss.lean_mask_terms` gives the same numbers chunked)."""
    if low.shape[-2:] != targets.shape[-2:]:
        low = F.interpolate(low.to(torch.float32), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return sigmoid_focal_loss(low, targets, alpha, gamma), dice_loss(low, targets), mask_iou(low.detach(), targets)


def object_score_loss(obj_logits: Tensor, targets_present: Tensor) -> Tensor:
    """BCE of the object-score head against "the object is present".

    Args:
        obj_logits: (N, 1) object-score logits.
        targets_present: (N, 1) or (N,) bool/float, 1 where the target mask is non-empty.
    Returns:
        (N, 1) float32 BCE per object.
    """
    t = targets_present.to(torch.float32).reshape(obj_logits.shape)
    return F.binary_cross_entropy_with_logits(obj_logits.to(torch.float32), t, reduction="none")


def feature_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between student and (detached) teacher features.

    Args:
        student: (B, C, H, W) or (B, N, C) features, any float dtype; gradients flow into it.
        teacher: same shape; detached, so the teacher never receives gradients.
    Returns:
        scalar float32 mean over all elements.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"feature distillation: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "features must have the same shape")
    return F.mse_loss(student.to(torch.float32), teacher.detach().to(torch.float32))


# ---------------------------------------------------------------------------------------------- task loss
class TaskLoss(nn.Module):
    """SAM 2's multi-step, multi-mask segmentation loss (see the module docstring).

    Args:
        weight_focal / weight_dice / weight_iou / weight_class: term weights in ``loss_task`` (SAM 2: 20 / 1 / 1 / 1).
        focal_alpha / focal_gamma: focal-loss parameters (0.25 / 2).
        supervise_all_iou: IoU term on all M candidates (mean) rather than only the selected one. The official
            SAM 2.1 training config sets it to true; the class default here, as SAM 2's class default, is false.
        iou_use_l1_loss: L1 (true, SAM 2.1) or MSE for the IoU-prediction term.
        iou_use_bce_loss: binary cross-entropy against the actual IoU for the IoU-prediction term instead (not SAM
            2's; for training the IoU head from random init, see :func:`iou_prediction_loss`). Excludes
            ``iou_use_l1_loss``.
        pred_obj_scores: train the object-score head; when false ``loss_class`` is 0 and all objects count as present.
        mask_loss: how the full-resolution focal / dice / IoU are evaluated: ``lean`` (chunked over objects, nothing
            of size N × M × S² kept for backward: :mod:`edgetam_train.distill.mask_loss`) or ``direct`` (upsample
            all candidates, then the elementwise terms; what SAM 2 writes). Same values and gradients (to float32
            rounding); ``lean`` needs binary targets.
        chunk_elements: ``lean`` only: elements of one chunk's (n, M, S, S) temporaries.
    """

    def __init__(self, weight_focal: float = 20.0, weight_dice: float = 1.0, weight_iou: float = 1.0,
                 weight_class: float = 1.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 supervise_all_iou: bool = False, iou_use_l1_loss: bool = True, iou_use_bce_loss: bool = False,
                 pred_obj_scores: bool = True, mask_loss: str = "lean",
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"model.loss.task_loss.mask_loss={mask_loss!r}: expected one of {', '.join(MASK_LOSSES)}")
        if int(chunk_elements) < 1:
            raise ValueError(f"model.loss.task_loss.chunk_elements={chunk_elements}: expected an integer >= 1")
        self.mask_loss = mask_loss
        self.chunk_elements = int(chunk_elements)
        if iou_use_l1_loss and iou_use_bce_loss:
            raise ValueError("TaskLoss: iou_use_l1_loss and iou_use_bce_loss are both true; the IoU term is either "
                             "L1 or binary cross-entropy (set model.loss.task_loss.iou_use_l1_loss=false)")
        self.weights = {"loss_mask": float(weight_focal), "loss_dice": float(weight_dice),
                        "loss_iou": float(weight_iou), "loss_class": float(weight_class)}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.iou_use_bce_loss = iou_use_bce_loss
        self.pred_obj_scores = pred_obj_scores

    def step_losses(self, multimasks: Tensor, ious: Tensor, object_score_logits: Tensor | None,
                    targets: Tensor, num_objects: float) -> dict[str, Tensor]:
        """Loss terms of one prompting step.

        Args:
            multimasks: (N, M, h, w) logits; upsampled (bilinear) to the targets' size when it differs (``lean``:
                chunk by chunk, never all at once).
            ious: (N, M) predicted IoUs.
            object_score_logits: (N, 1) (ignored when ``pred_obj_scores`` is false).
            targets: (N, 1, H, W) bool/float.
            num_objects: normaliser (≥ 1).
        Returns:
            {"loss_mask", "loss_dice", "loss_iou", "loss_class"}: float32 scalars, already divided by num_objects.
        """
        if self.mask_loss == "lean":
            focal, dice, actual = lean_mask_terms(multimasks, targets, self.focal_alpha, self.focal_gamma,
                                                  chunk_elements=self.chunk_elements)  # (N, M) each
        else:
            focal, dice, actual = direct_mask_terms(multimasks, targets, self.focal_alpha, self.focal_gamma)
        iou = iou_head_loss(ious, actual, use_l1=self.iou_use_l1_loss, use_bce=self.iou_use_bce_loss)
        if focal.shape[1] > 1:
            combo = focal * self.weights["loss_mask"] + dice * self.weights["loss_dice"]
            best = combo.argmin(dim=1, keepdim=True)  # (N, 1): the candidate closest to the target
            focal, dice = focal.gather(1, best), dice.gather(1, best)
            iou = iou.mean(dim=1, keepdim=True) if self.supervise_all_iou else iou.gather(1, best)
        if self.pred_obj_scores:
            present = targets.flatten(1).any(dim=1, keepdim=True).to(torch.float32)  # (N, 1)
            loss_class = object_score_loss(object_score_logits, present).sum() / num_objects
        else:
            present = torch.ones_like(focal)
            loss_class = focal.new_zeros(())
        # mask terms only for objects present in the target
        return {"loss_mask": (focal * present).sum() / num_objects,
                "loss_dice": (dice * present).sum() / num_objects,
                "loss_iou": (iou * present).sum() / num_objects,
                "loss_class": loss_class}

    def forward(self, step_outputs: Iterable[PromptStep], targets: Tensor, num_objects: float) -> dict[str, Tensor]:
        """Task loss summed over prompting steps.

        Args:
            step_outputs: one :class:`~edgetam_train.distill.prompting.PromptStep` per decoder pass: ``multimasks``
                (N, M, h, w) logits, ``ious`` (N, M) and ``object_score_logits`` (N, 1) (its prompt is not read).
            targets: (N, 1, H, W) or (N, H, W) bool/float ground truth, one row per object.
            num_objects: the loss normaliser; for DDP pass the per-rank object count averaged over ranks (SAM 2:
                all-reduce sum / world size), since DDP averages gradients. Clamped to ≥ 1.
        Returns:
            {"loss_task", "loss_mask" (focal), "loss_dice", "loss_iou", "loss_class"}, float32 scalars;
            ``loss_task`` is the weighted sum. For video the caller sums these over frames.
        """
        if targets.dim() == 3:
            targets = targets.unsqueeze(1)
        num_objects = max(float(num_objects), 1.0)
        steps = list(step_outputs)
        if not steps:
            raise ValueError("TaskLoss needs at least one prompting step output")
        totals: dict[str, Tensor] = {}
        for step in steps:
            masks = step.multimasks
            if masks.shape[0] != targets.shape[0]:
                raise ValueError(f"step multimasks have {masks.shape[0]} objects but targets have {targets.shape[0]}")
            obj = step.object_score_logits if self.pred_obj_scores else None
            terms = self.step_losses(masks, step.ious, obj, targets, num_objects)
            for k, v in terms.items():
                totals[k] = totals[k] + v if k in totals else v
        totals["loss_task"] = self.combine(totals)
        return totals

    def combine(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the four task terms (terms with weight 0 are skipped)."""
        total = None
        for k in TASK_KEYS:
            if self.weights[k] != 0:
                total = terms[k] * self.weights[k] if total is None else total + terms[k] * self.weights[k]
        return total if total is not None else terms["loss_mask"] * 0.0


# ---------------------------------------------------------------------------------------------- distillation
class DistillationLoss(nn.Module):
    """``loss = loss_task + λ_F · MSE(F16_s, F16_t) + λ_M · MSE(F_M_s, F_M_t)``.

    Args:
        task_loss: the :class:`TaskLoss` (weights and options live there).
        lambda_f16: weight of the stride-16 image-feature MSE (paper: 1.0 in both stages).
        lambda_fm: weight of the memory-attention-output MSE (paper: 0 for images / stage 1, 1.0 for video).
    """

    def __init__(self, task_loss: TaskLoss | None = None, lambda_f16: float = 1.0, lambda_fm: float = 0.0) -> None:
        super().__init__()
        self.task_loss = task_loss if task_loss is not None else TaskLoss()
        self.lambda_f16 = float(lambda_f16)
        self.lambda_fm = float(lambda_fm)

    def forward(self, task_losses: Mapping[str, Tensor], f16_student: Tensor | None, f16_teacher: Tensor | None,
                fm_student: Tensor | None = None, fm_teacher: Tensor | None = None) -> dict[str, Tensor]:
        """All loss terms, each returned on its own for logging.

        Args:
            task_losses: the :class:`TaskLoss` terms (``self.task_loss``'s output, summed over the frames of a clip
                by the caller): ``loss_task``, ``loss_mask``, ``loss_dice``, ``loss_iou``, ``loss_class`` scalars.
            f16_student / f16_teacher: (B, C, H, W) stride-16 features; the term is 0 when either is None (no
                teacher).
            fm_student / fm_teacher: (B, N, C) or (B, C, H, W) memory-attention outputs; 0 when either is None.
        Returns:
            {"loss", "loss_task", "loss_f16", "loss_fm", "loss_mask", "loss_dice", "loss_iou", "loss_class"};
            the feature terms are unweighted MSEs, ``loss`` is the weighted total to back-propagate.
        """
        out = dict(task_losses)
        zero = out["loss_task"].new_zeros(())
        out["loss_f16"] = (feature_distillation_loss(f16_student, f16_teacher)
                           if f16_student is not None and f16_teacher is not None else zero)
        out["loss_fm"] = (feature_distillation_loss(fm_student, fm_teacher)
                          if fm_student is not None and fm_teacher is not None else zero)
        out["loss"] = out["loss_task"] + self.lambda_f16 * out["loss_f16"] + self.lambda_fm * out["loss_fm"]
        return out


def sum_loss_dicts(dicts: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Key-wise sum of loss dicts (e.g. TaskLoss outputs of the frames of a clip)."""
    total: dict[str, Tensor] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total[k] + v if k in total else v
    return total
