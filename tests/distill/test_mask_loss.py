"""The lean full-resolution mask terms equal the direct path (upsample, then torchvision focal / dice / IoU)."""

from __future__ import annotations

import pytest
import torch
from lean_loss import TARGET_KINDS, relative_difference, target_masks

from edgetam_train.distill.losses import direct_mask_terms
from edgetam_train.distill.mask_loss import lean_mask_terms


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)])
def test_values_and_gradients_equal_the_direct_path(kind, alpha, gamma):
    gen = torch.Generator().manual_seed(0)
    n, m, h, s = 5, 3, 16, 64
    low = (torch.randn(n, m, h, h, generator=gen) * 4).requires_grad_(True)
    target = target_masks(kind, n, s, gen, tiny=(7, 9))
    w_f, w_d = torch.randn(n, m, generator=gen), torch.randn(n, m, generator=gen)

    focal, dice, iou = direct_mask_terms(low, target, alpha, gamma)
    (focal * w_f + dice * w_d).sum().backward()
    grad_direct, low.grad = low.grad.clone(), None
    # chunks of 2 objects: the chunk loop and its edges are exercised
    lean_focal, lean_dice, lean_iou = lean_mask_terms(low, target, alpha, gamma, chunk_elements=2 * m * s * s)
    (lean_focal * w_f + lean_dice * w_d).sum().backward()

    assert relative_difference(lean_focal, focal) < 1e-5 and relative_difference(lean_dice, dice) < 1e-5
    assert torch.equal(lean_iou, iou) and not lean_iou.requires_grad
    assert relative_difference(low.grad, grad_direct) < 1e-5


def test_same_resolution_and_bf16_logits():
    """No upsample when the logits are already at the targets' size; bf16 logits get a bf16 gradient."""
    gen = torch.Generator().manual_seed(1)
    low = torch.randn(3, 3, 32, 32, generator=gen).to(torch.bfloat16).requires_grad_(True)
    targets = torch.rand(3, 1, 32, 32, generator=gen) > 0.5
    focal, dice, _ = lean_mask_terms(low, targets)
    (focal.sum() + dice.sum()).backward()
    grad_lean, low.grad = low.grad.clone(), None
    ref_f, ref_d, _ = direct_mask_terms(low, targets, 0.25, 2.0)
    (ref_f.sum() + ref_d.sum()).backward()
    assert grad_lean.dtype == torch.bfloat16
    torch.testing.assert_close(focal, ref_f, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_lean.float(), low.grad.float(), rtol=1e-2, atol=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"expected logits \(N, M, h, w\) and targets \(N, 1, S, S\)"):
        lean_mask_terms(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_elements=0"):
        lean_mask_terms(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 16, 16, dtype=torch.bool), chunk_elements=0)


@pytest.mark.parametrize("supervise_all_iou,iou_bce", [(True, False), (False, True)])
def test_task_loss_lean_equals_direct_over_passes(supervise_all_iou, iou_bce):
    """TaskLoss(mask_loss=lean) vs direct on 3 decoder passes (best of 3, IoU head, object score, an absent object):
    every term and the gradients into the logits, the IoU head and the object score agree within 1e-5."""
    from edgetam_train.distill.losses import TaskLoss
    from edgetam_train.distill.prompting import PromptStep

    gen = torch.Generator().manual_seed(3)
    n, m, h, s = 6, 3, 16, 64
    targets = torch.rand(n, 1, s, s, generator=gen) > 0.5
    targets[2] = False  # absent: no mask terms, object score only
    leaves = [(torch.randn(n, m, h, h, generator=gen) * 3, torch.rand(n, m, generator=gen),
               torch.randn(n, 1, generator=gen)) for _ in range(3)]
    results = {}
    for kind in ("direct", "lean"):
        params = [tuple(t.clone().requires_grad_(True) for t in leaf) for leaf in leaves]
        steps = [PromptStep(mm, iou.sigmoid() if iou_bce else iou, obj, None, None) for mm, iou, obj in params]
        loss = TaskLoss(supervise_all_iou=supervise_all_iou, iou_use_l1_loss=not iou_bce, iou_use_bce_loss=iou_bce,
                        mask_loss=kind, chunk_elements=m * s * s)  # one object per chunk
        terms = loss(steps, targets, num_objects=4.0)
        terms["loss_task"].backward()
        results[kind] = (terms, [t.grad for p in params for t in p])
    (direct, g_direct), (lean, g_lean) = results["direct"], results["lean"]
    for k in direct:
        torch.testing.assert_close(lean[k], direct[k], rtol=1e-5, atol=1e-7)
    for a, b in zip(g_lean, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_task_loss_refuses_unknown_mask_loss():
    from edgetam_train.distill.losses import TaskLoss

    with pytest.raises(ValueError, match=r"mask_loss='fast': expected one of lean, direct"):
        TaskLoss(mask_loss="fast")
