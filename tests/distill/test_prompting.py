"""Prompt simulation and the clip forward of :mod:`edgetam_train.distill.prompting`: the clip plan drawn by
``plan_clip`` follows SAM 2's training rules, and ``run_clip`` under the inference rules equals the VideoPredictor.
"""

from __future__ import annotations

import pytest
import torch

import edgetam_train.distill.prompting as prompting
from edgetam_train.models.step_rules import INFERENCE
from tests.helpers.video_clip import S, T, make_clip


@pytest.mark.parametrize("seed", range(20))
def test_plan_clip_follows_the_training_rules(seed):
    """Frame 0 is always a conditioning frame; 1..max_init_cond_frames distinct ones; mask-prompted clips get no
    corrections; click/box clips correct every conditioning frame plus up to max_corrected_frames in all."""
    cfg = prompting.PromptConfig(max_init_cond_frames=2, max_corrected_frames=3)
    torch.manual_seed(seed)
    plan = prompting.plan_clip(8, cfg)
    assert plan.init_cond_frames[0] == 0 and len(set(plan.init_cond_frames)) == len(plan.init_cond_frames)
    assert 1 <= len(plan.init_cond_frames) <= 2 and all(0 <= t < 8 for t in plan.init_cond_frames)
    if plan.first_kind == "mask":
        assert plan.correct_frames == []
    else:
        assert plan.first_kind in ("point", "box")
        assert plan.correct_frames[: len(plan.init_cond_frames)] == plan.init_cond_frames
        assert len(plan.correct_frames) <= 3 and len(set(plan.correct_frames)) == len(plan.correct_frames)


def test_plan_clip_of_one_frame_and_without_corrections():
    """A single frame is prompted (and corrected when num_correction_clicks > 0) on frame 0."""
    torch.manual_seed(0)
    single = prompting.plan_clip(1, prompting.PromptConfig(point=1.0, box=0.0))
    assert (single.init_cond_frames, single.correct_frames, single.first_kind) == ([0], [0], "point")
    none = prompting.plan_clip(1, prompting.PromptConfig(num_correction_clicks=0))
    assert none.correct_frames == []


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
