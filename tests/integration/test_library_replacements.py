"""Hand-written code replaced by a kept library gives the same numbers: the focal loss (``torchvision.ops.
sigmoid_focal_loss`` + SAM 2's reduction and normalisation, values and gradients) and the box of a mask
(``torchvision.ops.masks_to_boxes``, empty masks included). The references below are the replaced implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgetam_train.distill.losses import TaskLoss, dice_loss, sigmoid_focal_loss
from edgetam_train.distill.prompting import PromptStep, mask_to_box


def focal_reference(logits, targets, alpha=0.25, gamma=2.0):
    """The replaced hand-written focal loss ((N, M) mean over pixels, float32), as SAM 2's ``loss_fns`` computes it."""
    t = targets.to(torch.float32).expand_as(logits)
    x = logits.to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = torch.sigmoid(x)
    p_true = t * p + (1.0 - t) * (1.0 - p)
    loss = bce * (1.0 - p_true).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return loss.flatten(2).mean(-1)


def box_reference(masks):
    """The replaced hand-written mask_to_box: (N, 1, H, W) bool -> (N, 4), zeros for an empty mask."""
    n, _, h, w = masks.shape
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    m = masks[:, 0]
    big = max(h, w)
    x0 = torch.where(m, xs, big).flatten(1).amin(1)
    y0 = torch.where(m, ys, big).flatten(1).amin(1)
    x1 = torch.where(m, xs, -1).flatten(1).amax(1)
    y1 = torch.where(m, ys, -1).flatten(1).amax(1)
    box = torch.stack((x0, y0, x1, y1), dim=1).float()
    return torch.where(m.flatten(1).any(1, keepdim=True), box, torch.zeros_like(box))


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (-1.0, 0.0), (0.5, 1.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_focal_equals_hand_written_values_and_gradients(alpha, gamma, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 3, 16, 16, generator=g) * 6).to(dtype)
    logits[0, 0] = 40.0  # saturated
    targets = torch.rand(3, 1, 16, 16, generator=g) > 0.6
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours, ref = sigmoid_focal_loss(a, targets, alpha, gamma), focal_reference(b, targets, alpha, gamma)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)
    (ours * torch.arange(1.0, 10.0).view(3, 3)).sum().backward()
    (ref * torch.arange(1.0, 10.0).view(3, 3)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)


def test_task_loss_mask_term_is_sam2_normalised_focal_of_best_candidate():
    """SAM 2 (MultiStepMultiMasksAndIous): per object, focal averaged over pixels / num_objects of the candidate with
    the lowest 20·focal + dice, times "target present", summed over objects and steps."""
    g = torch.Generator().manual_seed(1)
    targets = torch.rand(4, 1, 8, 8, generator=g) > 0.5
    targets[3] = False  # an absent object: no mask term
    steps = [PromptStep(torch.randn(4, 3, 8, 8, generator=g) * 3, torch.rand(4, 3, generator=g),
                        torch.randn(4, 1, generator=g), point_coords=None, point_labels=None) for _ in range(2)]
    num_objects = 2.5
    got = TaskLoss()(steps, targets, num_objects)["loss_mask"]
    expected = 0.0
    for step in steps:
        focal = focal_reference(step.multimasks, targets) / num_objects
        dice = dice_loss(step.multimasks, targets) / num_objects
        best = (focal * 20 + dice).argmin(1)
        present = targets.flatten(1).any(1).float()
        expected = expected + (focal[torch.arange(4), best] * present).sum()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_mask_to_box_equals_hand_written_including_empty_masks():
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(6, 1, 20, 30, dtype=torch.bool)
    masks[0, 0, 3:9, 4:25] = True
    masks[1, 0, 7, 11] = True  # one pixel: x0 = x1, y0 = y1
    masks[2] = True  # the whole image
    masks[3] = torch.rand(1, 20, 30, generator=g) > 0.97  # scattered pixels
    masks[5, 0, 19, 0] = True  # bottom-left corner; masks[4] stays empty
    boxes = mask_to_box(masks)
    assert boxes.dtype == torch.float32 and boxes.shape == (6, 4)
    assert torch.equal(boxes, box_reference(masks))
    assert boxes[0].tolist() == [4, 3, 24, 8] and boxes[1].tolist() == [11, 7, 11, 7]
    assert boxes[2].tolist() == [0, 0, 29, 19] and boxes[4].tolist() == [0, 0, 0, 0]
    assert mask_to_box(torch.zeros(0, 1, 5, 5, dtype=torch.bool)).shape == (0, 4)
