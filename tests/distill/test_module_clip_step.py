"""Stage-2 (clip) distillation step of the LightningModule (``DistillationModule.clip_step``): overfitting one clip
through memory, an object that leaves and re-enters, and the independence of the student's and the teacher's memory
banks.

The module is the stage-2 quick start (:func:`tests.helpers.video_clip.build_module`) on a synthetic 3-frame clip.
"""

from __future__ import annotations

import math

import pytest
import torch

import edgetam_train.distill.prompting as prompting
from edgetam_train.models.memory_bank import MemoryBank
from tests.helpers.video_clip import S, T, build_module, make_clip


def fit(module, batch, steps: int, lr: float = 1e-3) -> list[float]:
    """Plain optimisation loop on the module's clip step; the prompt plan and clicks are re-seeded every step."""
    module.train()
    opt = torch.optim.AdamW([p for p in module.student.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        out = module.clip_step(batch).losses
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.student.parameters(), 1.0)
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.fixture(scope="module")
def batch():
    return make_clip()


def test_overfits_one_clip_and_learns_that_an_object_left(batch):
    """Loss ≥ 50 % down within 40 steps; afterwards the object score says 'absent' on the frame the disc left and
    'present' again on the frame it came back (both frames tracked from memory, no prompt there)."""
    module = build_module("model.prompts.num_correction_clicks=1", "model.prompts.video_prob_points=1.0",
                          "model.prompts.max_init_cond_frames=1", "model.prompts.max_corrected_frames=1")
    losses = fit(module, batch, 40)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-5:]) <= 0.5 * losses[0], losses
    torch.manual_seed(0)  # the training plan: frame 0 prompted (and corrected), frames 1 and 2 from memory alone
    with torch.no_grad():
        images, gt, obj_to_img = module.as_clip(batch)
        feats = module.student.encode_image(images[0])
        plan = prompting.plan_clip(T, module.prompts)
        assert plan.init_cond_frames == [0] and plan.correct_frames == [0]
        records = {r.frame_idx: r for r in prompting.run_clip(
            module.student, [feats.select(torch.full_like(obj_to_img, t)) for t in range(T)], gt, plan,
            module.prompts)}
    disc_scores = [float(records[t].steps[-1].object_score_logits[1]) for t in range(T)]
    assert disc_scores[1] < 0 < disc_scores[2], disc_scores


def test_teacher_and_student_memory_banks_are_independent(batch, monkeypatch):
    """One clip step builds two banks: the student's holds 512-token perceiver memories written by the student,
    the teacher's holds (S/16)² tokens written by the teacher; no frame output is shared, and F_M is distilled."""
    banks: list[MemoryBank] = []

    class SpyBank(MemoryBank):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            banks.append(self)

    monkeypatch.setattr(prompting, "MemoryBank", SpyBank)
    module = build_module("model.prompts.num_correction_clicks=1", "model.prompts.video_prob_points=1.0")
    torch.manual_seed(0)
    losses = module.clip_step(batch).losses
    assert len(banks) == 2
    student_bank, teacher_bank = banks
    student_mem = [o.memory for o in {**student_bank.cond, **student_bank.non_cond}.values() if o.memory is not None]
    teacher_mem = [o.memory for o in {**teacher_bank.cond, **teacher_bank.non_cond}.values() if o.memory is not None]
    assert student_mem and teacher_mem
    assert {m.shape[1] for m in student_mem} == {512}
    assert {m.shape[1] for m in teacher_mem} == {(S // 16) ** 2}
    assert all(m.requires_grad for m in student_mem) and not any(m.requires_grad for m in teacher_mem)
    ids = {id(o) for o in student_bank.cond.values()} | {id(o) for o in student_bank.non_cond.values()}
    assert not ids & ({id(o) for o in teacher_bank.cond.values()} | {id(o) for o in teacher_bank.non_cond.values()})
    assert float(losses["loss_fm"]) > 0 and losses["loss_fm"].requires_grad
