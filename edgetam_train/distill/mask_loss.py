"""The full-resolution mask terms of SAM 2's loss without keeping N × M × S² tensors alive for backward.

SAM 2 (``training/loss_fns.py``) upsamples each decoder pass's low-res logits (bilinear, ``align_corners=False``) to
the image size S and evaluates, per object and candidate mask, the focal loss (mean over pixels), the dice loss and
the IoU of the thresholded mask against the full-resolution target. Written directly (:class:`TaskLoss` with
``lean=false``), autograd keeps several float32 (N, M, S, S) tensors per pass until backward: at 1024² with 64 masks
that is ~0.8 GB each, the largest tensors of the whole step.

Every one of those terms is a sum over the mask's own pixels, so :class:`LeanMaskTerms` computes them chunk by chunk
of objects and keeps only the low-res logits and the (bool) targets. Backward recomputes each chunk's upsample and
applies the analytic derivatives

    focal, target 1:  d/dx α (1-p)^γ softplus(-x)      = α (1-p)^γ (γ p log p - (1-p))
    focal, target 0:  d/dx (1-α) p^γ softplus(x)       = (1-α) p^γ (p - γ (1-p) log(1-p))
    dice:             d/dx 1 - (2 Σpt + s)/(Σp + Σt + s) = p (1-p) (-2 t / D + (2 Σpt + s) / D²),  D = Σp + Σt + s

then the adjoint of the bilinear upsample (``F.interpolate``'s own backward) brings the gradient to the low-res
logits. Values and gradients equal the direct path's to float32 rounding (``tests/distill/test_mask_loss.py``,
``scripts/bench/lean_loss.py``); peak memory is one chunk's few (n, M, S, S) temporaries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# elements of one chunk's (n, M, S, S) float32 temporaries: 2^24 = 64 MiB each (5 objects × 3 masks at 1024²)
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _upsample(low: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, M, h, w) low-res logits -> float32 (n, M, S, S), bilinear, ``align_corners=False`` (SAM 2's)."""
    x = low.to(torch.float32)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _focal_elementwise(x: Tensor, p: Tensor, t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-pixel RetinaNet focal loss of logits ``x`` (``p = sigmoid(x)``) against bool ``t`` (torchvision's
    ``sigmoid_focal_loss``)."""
    pos = F.softplus(-x) * (1.0 - p).pow(gamma)  # -log p · (1-p)^γ
    neg = F.softplus(x) * p.pow(gamma)  # -log(1-p) · p^γ
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1.0 - alpha)
    return torch.where(t, pos, neg)


def _focal_grad(x: Tensor, p: Tensor, t: Tensor, alpha: float, gamma: float) -> Tensor:
    """d focal / d x per pixel (see the module docstring)."""
    log_p, log_1mp = -F.softplus(-x), -F.softplus(x)
    pos = (1.0 - p).pow(gamma) * (gamma * p * log_p - (1.0 - p))
    neg = p.pow(gamma) * (p - gamma * (1.0 - p) * log_1mp)
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1.0 - alpha)
    return torch.where(t, pos, neg)


def _chunks(n: int, per_object: int, chunk_elements: int) -> list[slice]:
    step = max(1, chunk_elements // max(per_object, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class LeanMaskTerms(torch.autograd.Function):
    """Focal (mean over pixels), dice and actual IoU of every candidate mask, chunked over objects.

    ``apply(low, targets, alpha, gamma, smooth, chunk_elements)``:
        low: (N, M, h, w) low-res mask logits (any float dtype; upsampled in float32).
        targets: (N, 1, S, S) bool ground truth at full resolution.
    Returns (float32, (N, M) each): focal, dice, IoU of ``upsample(low) > 0`` with the target (no gradient; an
    empty union gives 0, as SAM 2).
    """

    @staticmethod
    def forward(ctx, low: Tensor, targets: Tensor, alpha: float, gamma: float, smooth: float,
                chunk_elements: int) -> tuple[Tensor, Tensor, Tensor]:
        n, m = low.shape[:2]
        size = tuple(targets.shape[-2:])
        pixels = size[0] * size[1]
        focal = low.new_zeros((n, m), dtype=torch.float32)
        sum_p, sum_pt, inter, union = (torch.zeros_like(focal) for _ in range(4))
        sum_t = targets.flatten(1).sum(-1, dtype=torch.float32)[:, None]  # (N, 1)
        for sl in _chunks(n, m * pixels, chunk_elements):
            x = _upsample(low[sl], size)
            t = targets[sl].expand_as(x)
            p = torch.sigmoid(x)  # once per chunk: focal and dice both read it
            focal[sl] = _focal_elementwise(x, p, t, alpha, gamma).flatten(2).mean(-1)
            sum_p[sl] = p.flatten(2).sum(-1)
            sum_pt[sl] = (p * t).flatten(2).sum(-1)
            pred = x > 0
            inter[sl] = (pred & t).flatten(2).sum(-1, dtype=torch.float32)
            union[sl] = (pred | t).flatten(2).sum(-1, dtype=torch.float32)
        denom = sum_p + sum_t + smooth
        dice = 1.0 - (2.0 * sum_pt + smooth) / denom
        iou = inter / union.clamp(min=1.0)
        ctx.save_for_backward(low, targets, sum_pt, denom)
        ctx.params = (alpha, gamma, smooth, chunk_elements)
        ctx.mark_non_differentiable(iou)
        return focal, dice, iou

    @staticmethod
    def backward(ctx, g_focal: Tensor, g_dice: Tensor, _g_iou: Tensor):
        low, targets, sum_pt, denom = ctx.saved_tensors
        alpha, gamma, smooth, chunk_elements = ctx.params
        n, m = low.shape[:2]
        size = tuple(targets.shape[-2:])
        pixels = size[0] * size[1]
        # dice = 1 - (2 Σpt + s) / D: its derivative in Σpt and Σp (both reached through p(1-p) per pixel)
        d_pt = (g_dice * (-2.0 / denom))[..., None, None]
        d_p = (g_dice * (2.0 * sum_pt + smooth) / denom.square())[..., None, None]
        d_focal = (g_focal / pixels)[..., None, None]
        grad_low = torch.empty_like(low)
        for sl in _chunks(n, m * pixels, chunk_elements):
            with torch.enable_grad():
                x_low = low[sl].detach().to(torch.float32).requires_grad_(True)
                x = _upsample(x_low, size)
            xd = x.detach()
            t = targets[sl].expand_as(xd)
            p = torch.sigmoid(xd)
            grad_x = d_focal[sl] * _focal_grad(xd, p, t, alpha, gamma)
            grad_x += p * (1.0 - p) * (d_pt[sl] * t + d_p[sl])
            if x is x_low:  # no upsample: the gradient is already at the logits' resolution
                grad_low[sl] = grad_x.to(low.dtype)
            else:
                (g,) = torch.autograd.grad(x, x_low, grad_x)
                grad_low[sl] = g.to(low.dtype)
        return grad_low, None, None, None, None, None


def lean_mask_terms(low: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, smooth: float = 1.0,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor, Tensor]:
    """(focal, dice, IoU), each (N, M) float32, of low-res logits (N, M, h, w) upsampled to the bool targets'
    (N, 1, S, S) resolution; see :class:`LeanMaskTerms`. ``chunk_elements`` bounds one chunk's (n, M, S, S) size."""
    if low.dim() != 4 or targets.dim() != 4 or targets.shape[1] != 1 or targets.shape[0] != low.shape[0]:
        raise ValueError(f"lean_mask_terms: expected logits (N, M, h, w) and targets (N, 1, S, S), got "
                         f"{tuple(low.shape)} and {tuple(targets.shape)}")
    if chunk_elements < 1:
        raise ValueError(f"lean_mask_terms: chunk_elements={chunk_elements}, expected >= 1")
    return LeanMaskTerms.apply(low, targets.bool(), float(alpha), float(gamma), float(smooth), int(chunk_elements))
