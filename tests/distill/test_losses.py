"""Losses (hand-computed values, best-of-3, normalisation, distillation gradients), parameter groups and schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from edgetam_train.distill.losses import (
    DistillationLoss,
    TaskLoss,
    dice_loss,
    feature_distillation_loss,
    iou_prediction_loss,
    mask_iou,
    object_score_loss,
    sigmoid_focal_loss,
    sum_loss_dicts,
)
from edgetam_train.distill.optim import (
    build_optimizer,
    build_scheduler,
    cosine_schedule,
    inverse_sqrt_schedule,
    no_weight_decay,
    param_groups,
)
from edgetam_train.distill.prompting import PromptStep

LN2 = math.log(2.0)
BIG = 40.0  # a saturated logit


def _t(rows) -> torch.Tensor:
    """(H, W) nested list → (1, 1, H, W) float tensor."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# ---------------------------------------------------------------------------------------------- elementwise pieces
def test_focal_loss_hand_values():
    # logit 0 → p = 0.5 → p_t = 0.5, BCE = ln 2, (1 - p_t)^2 = 1/4; α_t = 0.25 for positives, 0.75 for negatives
    logits = torch.zeros(1, 1, 2, 2)
    targets = _t([[1, 0], [1, 0]]).bool()
    expected = (0.25 * 0.25 * LN2 * 2 + 0.75 * 0.25 * LN2 * 2) / 4
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # logit ln 3 → p = 3/4 on a positive pixel: BCE = ln(4/3), (1 - p_t)^2 = 1/16, α = 1/4
    one = sigmoid_focal_loss(torch.full((1, 1, 1, 1), math.log(3.0)), torch.ones(1, 1, 1, 1))
    assert one.item() == pytest.approx(math.log(4 / 3) / 64, rel=1e-6)
    # a saturated correct prediction costs ~nothing; alpha < 0 disables the class weighting
    perfect = (targets.float() * 2 - 1) * BIG
    assert sigmoid_focal_loss(perfect, targets).item() < 1e-12
    assert sigmoid_focal_loss(logits, targets, alpha=-1).item() == pytest.approx(0.25 * LN2, rel=1e-6)


def test_focal_and_dice_broadcast_targets_over_candidates():
    logits = torch.randn(2, 3, 4, 4)
    targets = torch.rand(2, 1, 4, 4) > 0.5
    f = sigmoid_focal_loss(logits, targets)
    d = dice_loss(logits, targets)
    assert f.shape == d.shape == (2, 3)
    assert torch.allclose(f[:, 1], sigmoid_focal_loss(logits[:, 1:2], targets)[:, 0])


def test_dice_hand_values():
    targets = _t([[1, 0], [0, 0]])
    # perfect saturated prediction → 0
    assert dice_loss((targets * 2 - 1) * BIG, targets).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: overlap 0.5, Σp 2, Σt 1 → 1 - (2·0.5 + 1) / (2 + 1 + 1) = 0.5
    assert dice_loss(torch.zeros(1, 1, 2, 2), targets).item() == pytest.approx(0.5, rel=1e-6)
    # completely wrong saturated prediction: 1 - 1 / (3 + 1 + 1) = 0.8
    assert dice_loss(-(targets * 2 - 1) * BIG, targets).item() == pytest.approx(0.8, rel=1e-6)


def test_iou_prediction_uses_actual_iou_of_thresholded_mask():
    pred = _t([[1, 1, 0], [0, 0, 0]]) * 2 - 1            # 2 pixels on
    gt = _t([[1, 0, 1], [1, 0, 0]]).bool()              # 3 pixels, 1 shared → IoU 1/4
    assert mask_iou(pred, gt).item() == pytest.approx(0.25)
    assert iou_prediction_loss(torch.tensor([[0.75]]), pred, gt).item() == pytest.approx(0.5)
    assert iou_prediction_loss(torch.tensor([[0.75]]), pred, gt, use_l1=False).item() == pytest.approx(0.25)
    # empty prediction and empty target: IoU 0 (union clamped to 1), as SAM 2
    assert mask_iou(-torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 0.0


def test_iou_prediction_bce_keeps_a_gradient_when_the_head_saturates():
    """BCE against the actual IoU: value and gradient p - IoU in the head's logit, also at logit -30 where L1 (SAM
    2.1's) has none left (the from-scratch learning curve's failure)."""
    pred = _t([[1, 1, 0], [0, 0, 0]]) * 2 - 1            # IoU 1/4 against gt below
    gt = _t([[1, 0, 1], [1, 0, 0]]).bool()
    head_logit = torch.tensor([[[0.0]], [[-30.0]], [[3.0]]], requires_grad=True)  # 3 objects × 1 candidate
    p = torch.sigmoid(head_logit).reshape(3, 1)
    masks, targets = pred.expand(3, 1, 2, 3), gt.expand(3, 1, 2, 3)
    loss = iou_prediction_loss(p, masks, targets, use_bce=True)
    expected = [-(0.25 * math.log(q) + 0.75 * math.log(1 - q)) for q in (0.5, 1 / (1 + math.exp(30)),
                                                                        1 / (1 + math.exp(-3)))]
    assert loss.flatten().tolist() == pytest.approx(expected, rel=1e-5)
    loss.sum().backward()
    assert head_logit.grad.flatten().tolist() == pytest.approx((p.detach().flatten() - 0.25).tolist(), abs=1e-6)
    # the same saturated head under L1 gets ~1e-13: nothing to learn from
    sat = torch.tensor([[-30.0]], requires_grad=True)
    iou_prediction_loss(torch.sigmoid(sat), pred, gt).sum().backward()
    assert abs(sat.grad.item()) < 1e-12
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*iou_prediction_use_sigmoid"):
        iou_prediction_loss(torch.tensor([[1.5]]), pred, gt, use_bce=True)
    with pytest.raises(ValueError, match="iou_use_l1_loss and iou_use_bce_loss are both true"):
        TaskLoss(iou_use_l1_loss=True, iou_use_bce_loss=True)


def test_object_score_bce_hand_values():
    logits = torch.tensor([[0.0], [math.log(3.0)]])
    present = torch.tensor([True, False])
    out = object_score_loss(logits, present)
    assert out.shape == (2, 1)
    assert out[0].item() == pytest.approx(LN2, rel=1e-6)
    assert out[1].item() == pytest.approx(math.log(4.0), rel=1e-6)  # -ln(1 - 3/4)


# ---------------------------------------------------------------------------------------------- TaskLoss
def _step(multimasks: torch.Tensor, ious: torch.Tensor, obj: torch.Tensor) -> PromptStep:
    """A decoder pass without its prompt (the loss reads only the outputs)."""
    return PromptStep(multimasks, ious, obj, point_coords=None, point_labels=None)


def _three_candidates():
    """One object, target = left half of a 4×4 image; candidates: wrong (right half), perfect, all on."""
    gt = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    gt[..., :2] = True
    perfect = (gt.float() * 2 - 1) * BIG
    masks = torch.cat([-perfect, perfect, torch.full_like(perfect, BIG)], dim=1).requires_grad_(True)  # (1, 3, 4, 4)
    ious = torch.tensor([[0.1, 0.9, 0.3]], requires_grad=True)
    obj = torch.tensor([[BIG]], requires_grad=True)
    return gt, _step(masks, ious, obj)


def test_best_of_three_selects_lowest_focal_plus_dice():
    gt, step = _three_candidates()
    out = TaskLoss()([step], gt, num_objects=1)
    assert out["loss_mask"].item() < 1e-9 and out["loss_dice"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss_iou"].item() == pytest.approx(0.1, rel=1e-5)   # |0.9 - 1|, the perfect candidate's IoU
    assert out["loss_class"].item() < 1e-9
    expected = 20 * out["loss_mask"] + out["loss_dice"] + out["loss_iou"] + out["loss_class"]
    assert out["loss_task"].item() == pytest.approx(expected.item(), rel=1e-6)
    (g_masks, g_ious) = torch.autograd.grad(out["loss_task"], [step.multimasks, step.ious])
    assert g_masks[:, 0].abs().sum() == 0 and g_masks[:, 2].abs().sum() == 0  # only the chosen candidate trains
    assert g_ious[0].tolist() == pytest.approx([0.0, -1.0, 0.0])
    # supervise_all_iou: mean |pred - actual| over candidates: actual IoUs 0, 1, 0.5
    out_all = TaskLoss(supervise_all_iou=True)([step], gt, num_objects=1)
    assert out_all["loss_iou"].item() == pytest.approx((0.1 + 0.1 + 0.2) / 3, rel=1e-5)


def test_single_mask_output_and_absent_object():
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    gt[0, :, :2] = True  # object 0 present, object 1 absent
    step = _step(torch.zeros(2, 1, 4, 4), torch.full((2, 1), 0.3), torch.zeros(2, 1))
    out = TaskLoss()([step], gt, num_objects=1)
    # only object 0 counts for the mask terms: focal at logit 0 over 8 positive + 8 negative pixels
    assert out["loss_mask"].item() == pytest.approx((8 * 0.0625 + 8 * 0.1875) * LN2 / 16, rel=1e-6)
    assert out["loss_dice"].item() == pytest.approx(1 - (2 * 4 + 1) / (8 + 8 + 1), rel=1e-6)
    assert out["loss_iou"].item() == pytest.approx(0.3, rel=1e-6)  # logit 0 is "off": actual IoU 0, predicted 0.3
    assert out["loss_class"].item() == pytest.approx(2 * LN2, rel=1e-6)  # BCE at logit 0 for both objects
    no_obj = TaskLoss(pred_obj_scores=False)([step], gt, num_objects=1)
    assert no_obj["loss_class"].item() == 0.0
    assert no_obj["loss_iou"].item() == pytest.approx(0.6, rel=1e-6)  # the absent object counts too


def test_num_objects_normalisation_and_sum_over_steps():
    torch.manual_seed(0)
    gt = torch.rand(1, 1, 8, 8) > 0.5
    step = _step(torch.randn(1, 3, 8, 8), torch.rand(1, 3), torch.randn(1, 1))
    loss = TaskLoss()
    one = loss([step], gt, num_objects=1)
    half = loss([step], gt, num_objects=2)
    doubled = _step(*(torch.cat([v, v]) for v in (step.multimasks, step.ious, step.object_score_logits)))
    two_objects = loss([doubled], torch.cat([gt, gt]), num_objects=2)
    two_steps = loss([step, step], gt, num_objects=1)
    clamped = loss([step], gt, num_objects=0)
    for k in ("loss_task", "loss_mask", "loss_dice", "loss_iou", "loss_class"):
        assert half[k].item() == pytest.approx(one[k].item() / 2, rel=1e-6)
        assert two_objects[k].item() == pytest.approx(one[k].item(), rel=1e-6)
        assert two_steps[k].item() == pytest.approx(2 * one[k].item(), rel=1e-6)
        assert clamped[k].item() == pytest.approx(one[k].item(), rel=1e-6)  # normaliser clamped to ≥ 1


def test_low_res_logits_are_upsampled_to_target_size():
    gt = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    gt[..., :4] = True
    low = _step(torch.full((1, 1, 2, 2), 1.5), torch.zeros(1, 1), torch.zeros(1, 1))
    # bilinear upsampling of a constant is the constant
    full = _step(torch.full((1, 1, 8, 8), 1.5), low.ious, low.object_score_logits)
    a, b = TaskLoss()([low], gt, 1), TaskLoss()([full], gt, 1)
    assert all(a[k].item() == pytest.approx(b[k].item(), rel=1e-6) for k in a)


def test_task_loss_targets_layouts_and_reports_bad_input():
    gt = torch.ones(1, 4, 4, dtype=torch.bool)  # (N, H, W) is accepted as well as (N, 1, H, W)
    step = _step(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1), torch.zeros(1, 1))
    out = TaskLoss()([step], gt, 1)
    assert set(out) == {"loss_task", "loss_mask", "loss_dice", "loss_iou", "loss_class"}
    assert all(out[k].item() == TaskLoss()([step], gt[:, None], 1)[k].item() for k in out)
    with pytest.raises(ValueError, match="at least one"):
        TaskLoss()([], gt, 1)
    with pytest.raises(ValueError, match="2 objects"):
        TaskLoss()([_step(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1), torch.zeros(2, 1))], gt, 1)


# ---------------------------------------------------------------------------------------------- distillation
def test_feature_mse_gradient_only_into_student():
    student = torch.zeros(2, 3, 4, 4, requires_grad=True)
    teacher = torch.ones(2, 3, 4, 4, requires_grad=True)
    loss = feature_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert teacher.grad is None
    assert torch.allclose(student.grad, torch.full_like(student, -2.0 / student.numel()))
    with pytest.raises(ValueError, match="same shape"):
        feature_distillation_loss(torch.zeros(1, 4, 8), torch.zeros(1, 8, 4))


def test_distillation_loss_combines_and_reports_every_term():
    gt, step = _three_candidates()
    s16, t16 = torch.zeros(1, 2, 2, 2, requires_grad=True), torch.full((1, 2, 2, 2), 2.0)   # MSE 4
    sfm, tfm = torch.zeros(1, 5, 3, requires_grad=True), torch.ones(1, 5, 3)                 # MSE 1
    stage1 = DistillationLoss(TaskLoss(), lambda_f16=1.0, lambda_fm=0.0)
    out = stage1(TaskLoss()([step], gt, 1), f16_student=s16, f16_teacher=t16, fm_student=sfm, fm_teacher=tfm)
    assert set(out) == {"loss", "loss_task", "loss_f16", "loss_fm", "loss_mask", "loss_dice", "loss_iou", "loss_class"}
    assert out["loss_f16"].item() == pytest.approx(4.0) and out["loss_fm"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(out["loss_task"].item() + 4.0, rel=1e-6)
    stage2 = DistillationLoss(TaskLoss(), lambda_f16=1.0, lambda_fm=0.5)
    out2 = stage2(task_losses=sum_loss_dicts([TaskLoss()([step], gt, 1)] * 2), f16_student=s16, f16_teacher=t16,
                  fm_student=sfm, fm_teacher=tfm)
    assert out2["loss_task"].item() == pytest.approx(2 * out["loss_task"].item(), rel=1e-6)
    assert out2["loss"].item() == pytest.approx(out2["loss_task"].item() + 4.0 + 0.5, rel=1e-6)
    no_teacher = stage1(TaskLoss()([step], gt, 1), f16_student=s16, f16_teacher=None)
    assert no_teacher["loss_f16"].item() == 0.0 and no_teacher["loss"].item() == pytest.approx(out["loss_task"].item())
    assert no_teacher["loss_fm"].item() == 0.0  # no memory features given: the term is 0


# ---------------------------------------------------------------------------------------------- param groups
class LayerNorm2d(nn.Module):
    """A custom channels-first LayerNorm (like SAM 2's), recognised by its class name."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))


class ToyTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, 4, 4))


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Module()
        self.image_encoder.trunk = ToyTrunk()
        self.image_encoder.neck = nn.Conv2d(8, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.ln2d = LayerNorm2d(8)
        self.tokens = nn.Embedding(4, 8)
        self.latents = nn.Parameter(torch.zeros(16, 8))
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(7, 1, 1, 8))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, 8))
        self.obj_ptr_tpos_proj = nn.Linear(8, 4)  # "tpos" in the module name, but a Linear weight: decayed
        self.head = nn.Linear(8, 2)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_sam2_decay_rule_is_the_default():
    """SAM 2.1's training config: weight decay 0 only for *bias* and torch.nn.LayerNorm; BatchNorm and LayerNorm2d
    scales, embeddings, position tables, latents and the no-object tensors are decayed."""
    model = ToyModel()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1, lr=1e-3)}
    assert set(groups) == {"decay", "no_decay"}
    assert _names(model, groups["no_decay"]) == {
        "image_encoder.trunk.conv.bias", "image_encoder.trunk.bn.bias", "image_encoder.neck.bias", "norm.weight",
        "norm.bias", "ln2d.bias", "obj_ptr_tpos_proj.bias", "head.bias"}
    assert _names(model, groups["decay"]) == {
        "image_encoder.trunk.conv.weight", "image_encoder.trunk.bn.weight", "image_encoder.trunk.pos_embed",
        "image_encoder.neck.weight", "ln2d.weight", "tokens.weight", "latents", "maskmem_tpos_enc", "no_obj_ptr",
        "obj_ptr_tpos_proj.weight", "head.weight"}
    with pytest.raises(ValueError, match="weight_decay_rule"):
        param_groups(model, weight_decay=0.1, lr=1e-3, weight_decay_rule="timm")


def test_param_groups_extended_decay_rule():
    model = ToyModel()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1, lr=1e-3, weight_decay_rule="extended")}
    assert set(groups) == {"decay", "no_decay"}
    assert _names(model, groups["decay"]) == {"image_encoder.trunk.conv.weight", "image_encoder.neck.weight",
                                              "obj_ptr_tpos_proj.weight", "head.weight"}
    assert _names(model, groups["no_decay"]) == {
        "image_encoder.trunk.conv.bias", "image_encoder.trunk.bn.weight", "image_encoder.trunk.bn.bias",
        "image_encoder.trunk.pos_embed", "image_encoder.neck.bias", "norm.weight", "norm.bias", "ln2d.weight",
        "ln2d.bias", "tokens.weight", "latents", "maskmem_tpos_enc", "no_obj_ptr", "obj_ptr_tpos_proj.bias",
        "head.bias"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert no_weight_decay(nn.LayerNorm(4), "weight", torch.zeros(4))


def test_param_groups_vision_lr_and_optimizer():
    """SAM 2's vision_lr covers image_encoder.* (trunk and neck); image_encoder.trunk keeps it to the trunk."""
    model = ToyModel()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, vision_lr=1e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay", "vision_decay", "vision_no_decay"}
    assert _names(model, groups["vision_decay"]) == {"image_encoder.trunk.conv.weight", "image_encoder.trunk.bn.weight",
                                                     "image_encoder.trunk.pos_embed", "image_encoder.neck.weight"}
    assert _names(model, groups["vision_no_decay"]) == {"image_encoder.trunk.conv.bias", "image_encoder.trunk.bn.bias",
                                                        "image_encoder.neck.bias"}
    assert groups["vision_decay"]["lr"] == 1e-4 and groups["decay"]["lr"] == 1e-3
    assert groups["vision_decay"]["weight_decay"] == 0.05
    trunk_only = build_optimizer(model, lr=1e-3, vision_lr=1e-4, vision_prefix="image_encoder.trunk")
    names = {g["name"]: _names(model, g) for g in trunk_only.param_groups}
    assert "image_encoder.neck.weight" in names["decay"] and "image_encoder.trunk.conv.weight" in names["vision_decay"]
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable  # frozen ones left out, none twice
    assert isinstance(opt, torch.optim.AdamW)


# ---------------------------------------------------------------------------------------------- schedules
def test_inverse_sqrt_schedule_key_steps():
    f = inverse_sqrt_schedule(warmup_steps=10, cooldown_steps=20, total_steps=100, timescale=10)
    assert f(0) == 0.0                                    # warmup start
    assert f(5) == pytest.approx(0.5)                     # mid warmup
    assert f(10) == pytest.approx(1.0)                    # warmup end
    assert f(20) == pytest.approx(1 / math.sqrt(2))       # one timescale later
    assert f(50) == pytest.approx(1 / math.sqrt(5))
    assert f(80) == pytest.approx(1 / math.sqrt(8))       # cooldown start
    assert f(90) == pytest.approx(1 / 3 * 0.5)            # half-way through the cooldown
    assert f(100) == 0.0 and f(130) == 0.0                # cooldown end
    with pytest.raises(ValueError, match="total_steps"):
        inverse_sqrt_schedule(10, 200, 100)


def test_cosine_schedule_key_steps():
    f = cosine_schedule(warmup_steps=10, total_steps=110)
    assert [f(0), f(5), f(10)] == pytest.approx([0.0, 0.5, 1.0])
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    g = cosine_schedule(warmup_steps=0, total_steps=100, min_ratio=0.1)
    assert [g(0), g(50), g(100), g(500)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_build_scheduler_scales_every_group():
    model = ToyModel()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, vision_lr=1e-4)
    sched = build_scheduler(opt, "inverse_sqrt", total_steps=100, warmup_steps=10, cooldown_steps=20, timescale=10)
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["decay"] == pytest.approx(1e-3) and lrs["vision_decay"] == pytest.approx(1e-4)
    assert build_scheduler(opt, "constant").get_last_lr()[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="max_steps"):
        build_scheduler(opt, "cosine", total_steps=None)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(opt, "linear", total_steps=10)
