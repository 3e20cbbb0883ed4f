"""Recipe fidelity: SAM 2's train/eval differences as explicit step rules, and the self-distillation identity check.

The identity check (``debug=identity``): with the student as its own teacher (weights copied every batch, dropout off,
BatchNorm frozen), every feature loss must be ~0, in stage 1 and in stage 2 where the teacher replays the clip through
its own memory. It is run here twice: in-process on a synthetic clip (fast, and it shows that the check fails when
the teacher replays under the inference rules), and through ``python train.py ... debug=identity`` on sample data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import edgetam_train.distill.prompting as prompting
from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.models.build import build_model
from edgetam_train.models.memory_bank import FrameOutput, MemoryBank
from edgetam_train.models.step_rules import INFERENCE, TRAINING

REPO = Path(__file__).resolve().parents[2]
S = 256


# ------------------------------------------------------------------------------------------------ step rules


def test_rules_are_explicit_not_train_or_eval():
    model = build_model("edgetam", image_size=S)
    assert model.rules is INFERENCE  # predictors and validation
    model.train()
    assert model.rules is INFERENCE  # train() switches dropout/BatchNorm only
    with model.using_rules("training"):
        assert model.rules is TRAINING
        model.eval()
        assert model.rules is TRAINING
    assert model.rules is INFERENCE


def _pointer_count(model, rules) -> int:
    """Object pointers frame 1 reads when conditioning frames 0 and 3 are in the bank (3 lies in the future)."""
    bank = MemoryBank()
    for t in (0, 3):
        out = FrameOutput(*(torch.zeros(1, 1) for _ in range(6)))
        out.obj_ptr = torch.zeros(1, 256)
        out.memory, out.memory_pos = torch.zeros(1, 4, 64), torch.zeros(1, 4, 64)
        bank.add(t, out, is_cond=True)
    with model.using_rules(rules):
        memory = model.read_memory(1, bank, num_frames=4)
    return memory.num_obj_ptr_tokens // (256 // 64)


def test_training_rules_read_pointers_of_later_conditioning_frames():
    """SAM 2 (sam2_base.py:591): in training every selected conditioning frame gives a pointer, in eval only past
    ones (``only_obj_ptrs_in_the_past_for_eval``)."""
    model = build_model("edgetam", image_size=S)
    assert _pointer_count(model, TRAINING) == 2 and _pointer_count(model, INFERENCE) == 1


def test_memory_mask_binarisation_and_dynamic_multimask_follow_the_rules():
    torch.manual_seed(0)
    model = build_model("edgetam", image_size=S).eval()
    feats = model.encode_image(torch.randn(1, 3, S, S))
    logits = torch.randn(1, 1, S, S) * 3
    score = torch.ones(1, 1)
    mem = {}
    for rules in (TRAINING, INFERENCE):
        with model.using_rules(rules):
            mem[rules.name] = model.encode_memory(feats, logits, score, is_mask_from_pts=True)[0]
    with model.using_rules(INFERENCE):  # inference = the binarised mask (logits > 0) as input
        binary = model.encode_memory(feats, (logits > 0).float() * 1e4 - 5e3, score, is_mask_from_pts=True)[0]
    torch.testing.assert_close(mem["inference"], binary)
    assert not torch.allclose(mem["training"], mem["inference"])
    # dynamic multimask: the decoder is told by the rules, not by .training
    calls = []
    real = model.sam_mask_decoder._dynamic_multimask_via_stability
    model.sam_mask_decoder._dynamic_multimask_via_stability = lambda m, i: calls.append(1) or real(m, i)
    coords, labels = torch.tensor([[[10.0, 10.0], [200.0, 220.0]]]), torch.tensor([[2, 3]], dtype=torch.int32)
    for rules in (TRAINING, INFERENCE):
        with model.using_rules(rules):
            model.decode(feats.f16, feats.high_res, coords, labels, multimask_output=False)
    assert calls == [1]  # only under the inference rules


# ------------------------------------------------------------------------------------------------ identity, in-process


def build_identity_module(experiment: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=[f"experiment={experiment}", "debug=identity", "paths.root_dir=.",
                                          *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="partial")


def synthetic_clip(t: int) -> dict:
    """One clip of t frames at 256²: a square moving right and a disc."""
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    images = torch.zeros(1, t, 3, S, S)
    masks = torch.zeros(t, 2, S, S, dtype=torch.bool)
    for i in range(t):
        masks[i, 0] = (ys >= 60) & (ys < 130) & (xs >= 40 + 12 * i) & (xs < 110 + 12 * i)
        masks[i, 1] = ((ys - 180) ** 2 + (xs - 170) ** 2) < 30 ** 2
        images[0, i] = 0.3 * torch.sin(xs / 9.0) + torch.stack([masks[i, 0] * 1.5, masks[i, 1] * 1.5,
                                                                 masks[i, 0] * -1.0]).float()
    if t == 1:
        return {"images": images[:, 0], "masks": masks[0], "obj_to_img": torch.zeros(2, dtype=torch.long)}
    return {"images": images, "masks": masks, "obj_to_img": torch.zeros(2, dtype=torch.long)}


@pytest.mark.parametrize("experiment,frames", [("edgetam_distill", 1), ("edgetam_distill_video", 4)])
def test_self_distillation_identity_in_process(experiment, frames):
    """Training mode (BatchNorm frozen, dropout 0), several prompt plans (point, box, mask prompts; 1-2 conditioning
    and corrected frames): F16 and F_M equal the student's."""
    module = build_identity_module(experiment, "model.prompts.num_correction_clicks=2")
    module.train()
    assert module.student.training and module.teacher.net.training is False
    batch = synthetic_clip(frames)
    kinds = set()
    for seed in range(4):
        torch.manual_seed(seed)
        plan = prompting.plan_clip(frames, module.prompts)
        kinds.add(plan.first_kind)
        torch.manual_seed(seed)
        out = module.clip_step(batch)
        losses = {k: v.detach() for k, v in out.losses.items()}
        assert float(losses["loss_f16"]) <= 1e-6 and float(losses["loss_fm"]) <= 1e-6, (seed, losses)
        assert (out.teacher_records is not None) == (frames > 1)  # stage 2: the teacher replayed the clip
    assert len(kinds) >= 2


def test_identity_check_fails_when_the_teacher_replays_under_the_inference_rules():
    """The check has teeth: the pre-fix teacher (eval() = inference rules: binarised memory masks, past-only
    pointers, dynamic multimask) gives another F_M than the student's training step."""
    module = build_identity_module("edgetam_distill_video", "model.teacher.rules=inference",
                                   "model.prompts.num_correction_clicks=2", "model.prompts.video_prob_points=1.0")
    module.train()
    torch.manual_seed(0)
    losses = module.clip_step(synthetic_clip(4)).losses
    assert float(losses["loss_f16"]) <= 1e-6 < float(losses["loss_fm"])


# ------------------------------------------------------------------------------------------------ identity, train.py


@pytest.fixture(scope="module")
def sample_project(tmp_path_factory) -> Path:
    """A project root with the generated sample data under data/sample (what `make sample-data` writes)."""
    root = tmp_path_factory.mktemp("identity")
    make_sample_data(["--out", str(root / "data" / "sample"), "--num-images", "4"])
    return root


def test_identity_run_through_train_py(sample_project):
    """python train.py experiment=edgetam_distill_video debug=identity (shortened clips): the run passes and prints
    every logged feature loss; the CSV log has one row per step with both losses <= 1e-6. Through Lightning, so the
    student's BatchNorm must stay frozen there too (Lightning builds the module in train mode and never calls
    ``train()`` before fitting). Stage 1's config is checked in-process above (same debug config)."""
    env = {**os.environ, "PROJECT_ROOT": str(sample_project), "PYTHONPATH": str(REPO)}
    extra = ["data.clip_len=3", "data.max_objects=2", "model.prompts.num_correction_clicks=1", "trainer.max_steps=2"]
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=edgetam_distill_video",
                           "debug=identity", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "identity check (4 values, tolerance 1e-06)" in proc.stdout and ": PASS" in proc.stdout, proc.stdout
    metrics = sample_project / "logs" / "debug" / "runs" / "identity" / "csv"
    rows = max(metrics.rglob("metrics.csv")).read_text().splitlines()
    header = rows[0].split(",")
    f16, fm = header.index("train/loss_f16"), header.index("train/loss_fm")
    values = [(r.split(",")[f16], r.split(",")[fm]) for r in rows[1:] if r.split(",")[f16]]
    assert len(values) == 2 and all(float(a) <= 1e-6 and float(b) <= 1e-6 for a, b in values)
