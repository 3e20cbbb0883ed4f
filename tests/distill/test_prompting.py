"""Stage-2 (clip) distillation: overfitting one clip through memory, an object that leaves and re-enters, and the
independence of the student's and the teacher's memory banks.

The module is composed as ``python train.py experiment=edgetam_distill_video debug=quickstart_video`` (256² student,
randomly initialised SAM 2.1-T teacher), on a synthetic 3-frame clip.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import edgetam_train.distill.prompting as prompting
from edgetam_train.config import CONFIG_DIR, register_resolvers
from edgetam_train.models.memory_bank import MemoryBank
from edgetam_train.models.step_rules import INFERENCE

S, T = 256, 3


def build_module(*overrides: str):
    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill_video", "debug=quickstart_video",
                                          "paths.root_dir=.", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="partial")


def make_clip() -> dict:
    """One clip: a square moving right (object 0) and a disc that leaves on frame 1 and re-enters on frame 2."""
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    images = torch.zeros(1, T, 3, S, S)
    masks = torch.zeros(T, 2, S, S, dtype=torch.bool)
    for t in range(T):
        square = (ys >= 60) & (ys < 130) & (xs >= 40 + 12 * t) & (xs < 110 + 12 * t)
        disc = ((ys - 180) ** 2 + (xs - 170) ** 2) < 30 ** 2
        masks[t, 0] = square
        if t != 1:
            masks[t, 1] = disc
        background = 0.3 * torch.sin(xs / 9.0) * torch.cos(ys / 13.0)
        images[0, t] = background + torch.stack([square * 1.5, masks[t, 1] * 1.5, square * -1.0]).float()
    return {"images": images, "masks": masks, "obj_to_img": torch.zeros(2, dtype=torch.long)}


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


@pytest.mark.parametrize("name", ["edgetam", "sam2.1_hiera_t"])
def test_training_forward_equals_video_predictor_in_eval(name):
    """The training forward (prompting.run_clip) and the VideoPredictor share the frame step and the memory bank:
    under the inference rules, with the same click on frame 0 and tracking through the clip, they agree to 1e-5."""
    from edgetam_train.models.build import build_model
    from edgetam_train.predictor import VideoPredictor

    torch.manual_seed(0)
    model = build_model(name, image_size=S).eval()
    frames = make_clip()["images"][0]  # (T, 3, S, S)
    clicks = torch.tensor([[[80.0, 95.0]], [[170.0, 180.0]]])  # one positive click per object on frame 0
    labels = torch.ones(2, 1, dtype=torch.int32)
    predictor = VideoPredictor(model, memory_bf16=False)
    state = predictor.init_state_from_tensor(frames, (S, S))
    for obj in range(2):
        predictor.add_clicks(state, 0, obj, points=clicks[obj].numpy(), labels=labels[obj].numpy())
    list(predictor.propagate(state))

    cfg = prompting.PromptConfig(num_correction_clicks=0)
    plan = prompting.ClipPlan(T, [0], [], "point")
    first = prompting.PromptStep(None, None, None, clicks, labels)  # replayed prompt for frame 0
    with torch.no_grad():
        feats = model.encode_image(frames)
        records = prompting.run_clip(model, [feats.select(torch.full((2,), t)) for t in range(T)],
                                     torch.zeros(T, 2, 1, S, S, dtype=torch.bool), plan, cfg,
                                     replay=[prompting.FrameRecord(0, [first], None, None, False)],
                                     rules=INFERENCE)
    for record in records:
        step = record.steps[-1]
        best = step.ious.argmax(dim=1)
        for obj in range(2):
            ours = predictor.get_output(state, record.frame_idx, obj)
            train_logits = step.multimasks[obj, best[obj]]
            assert torch.allclose(train_logits, ours.low_res_logits[0], atol=1e-5), (record.frame_idx, obj)
            assert torch.allclose(step.object_score_logits[obj], ours.object_score_logit, atol=1e-5)
