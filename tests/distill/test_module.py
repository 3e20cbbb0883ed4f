"""Stage-1 distillation end to end: the DistillationModule overfits a fixed batch, the feature term pulls the student's
F16 towards the frozen teacher's, the teacher stays out of the optimizer and the checkpoints, a student-only Lightning
checkpoint resumes and exports, the optimiser / schedule follow the recipe, and skipped samples reach the metrics.

Everything runs on the CPU at 256 px with a randomly initialised SAM 2.1-T teacher (``allow_random_init``), built from
the real Hydra configs (``experiment=edgetam_distill debug=quickstart``).
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from edgetam_train.callbacks.mask_pictures import MaskPictures, title_height
from edgetam_train.config import CONFIG_DIR, register_resolvers
from edgetam_train.data.datamodule import SA1BDataModule
from edgetam_train.data.datasets.fixed_batch import FixedBatch
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.optim import inverse_sqrt_schedule
from edgetam_train.distill.step_output import ClipStepOutput
from edgetam_train.distill.teacher import FrozenTeacher
from edgetam_train.models.build import build_model
from edgetam_train.models.checkpoint import read_state_dict

TASK_WEIGHTS = ("weight_focal", "weight_dice", "weight_iou", "weight_class")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root with the generated sample data under data/sample/sa1b (4 images)."""
    root = tmp_path_factory.mktemp("project")
    make_sample_data(["--out", str(root / "data" / "sample"), "--num-images", "4", "--formats", "sa1b"])
    return root


def compose_train(project: Path, *overrides: str) -> DictConfig:
    """``train.yaml`` composed as ``python train.py experiment=edgetam_distill debug=quickstart <overrides>``."""
    register_resolvers()
    base = ["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={project}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=base + list(overrides))


def build_module(project: Path, *overrides: str, seed: int = 0) -> DistillationModule:
    """The DistillationModule of the composed config (random student and SAM 2.1-T teacher, seeded)."""
    cfg = compose_train(project, *overrides)
    torch.manual_seed(seed)
    module = instantiate(cfg.model, _convert_="partial")
    assert isinstance(module, DistillationModule)
    return module


@pytest.fixture(scope="module")
def batch(project) -> dict:
    """One fixed image (256 px) with 3 masks, no flip."""
    ds = SA1BDataset(project / "data" / "sample" / "sa1b", image_size=256, max_masks=3, hflip_p=0.0)
    out = collate_sa1b([ds[0]])
    assert out["images"].shape == (1, 3, 256, 256) and out["masks"].shape == (3, 256, 256)
    return out


@pytest.fixture(scope="module")
def module(project) -> DistillationModule:
    """A pristine module for read-only checks (do not train it)."""
    return build_module(project)


def _quiet_step(module: DistillationModule, batch: dict, batch_idx: int) -> torch.Tensor:
    """``training_step`` outside a Trainer (its ``self.log`` calls only warn there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.training_step(batch, batch_idx)["loss"]


def _tensors(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------- learning
def test_overfits_a_fixed_batch_with_distillation(project, batch):
    """λ_F = 1, fixed prompts (the RNG is re-seeded before every step): the total loss, the dice term and the F16
    distance all fall by half within 50 optimiser steps. One correction click instead of 7 keeps it fast."""
    module = build_module(project, "model.prompts.num_correction_clicks=1", "model.scheduler.name=constant")
    assert module.loss.lambda_f16 == 1.0
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    history = []
    for step in range(50):
        torch.manual_seed(1234)  # the same prompts (first prompt type, clicks) every step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = module.clip_step(batch).losses
        history.append({k: float(v.detach()) for k, v in losses.items()})
        first, now = history[0], history[-1]
        if (now["loss"] <= 0.5 * first["loss"] and now["loss_dice"] <= 0.5 * first["loss_dice"]
                and now["loss_f16"] <= 0.5 * first["loss_f16"]):
            break
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        nn.utils.clip_grad_norm_(module.student.parameters(), 0.1)
        opt.step()
    first, now = history[0], history[-1]
    print(f"overfit: {len(history) - 1} steps, loss {first['loss']:.2f} -> {now['loss']:.2f}, dice "
          f"{first['loss_dice']:.3f} -> {now['loss_dice']:.3f}, f16 {first['loss_f16']:.3f} -> {now['loss_f16']:.3f}")
    assert first["loss_f16"] > 0 and first["loss_dice"] > 0
    assert now["loss"] <= 0.5 * first["loss"], [round(h["loss"], 3) for h in history]
    assert now["loss_dice"] <= 0.5 * first["loss_dice"], [round(h["loss_dice"], 3) for h in history]
    assert now["loss_f16"] <= 0.5 * first["loss_f16"], [round(h["loss_f16"], 3) for h in history]


def test_feature_term_pulls_student_f16_to_frozen_teacher(project, batch):
    """Task weights 0, λ_F = 1: MSE(F16_s, F16_t) falls at every step; the teacher's weights, buffers and outputs do
    not change and it gets no gradients."""
    zero_task = [f"model.loss.task_loss.{w}=0" for w in TASK_WEIGHTS]
    module = build_module(project, *zero_task, "model.loss.lambda_f16=1.0", "model.prompts.num_correction_clicks=0",
                          "model.scheduler.name=constant")
    teacher = module.teacher
    images = batch["images"]
    teacher_sd = _tensors(teacher.state_dict())
    f16_teacher = teacher.encode_image(images).f16
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    mses = []
    for step in range(4):
        with torch.no_grad():
            mses.append(float(nn.functional.mse_loss(module.student.encode_image(images).f16, f16_teacher)))
        torch.manual_seed(step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = module.clip_step(batch).losses
        assert float(losses["loss_task"].detach()) == 0.0
        assert math.isclose(float(losses["loss"].detach()), float(losses["loss_f16"].detach()), rel_tol=1e-6)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
    assert all(b < a for a, b in zip(mses, mses[1:])), mses
    assert mses[-1] < 0.95 * mses[0], mses
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    assert after.keys() == teacher_sd.keys() and all(torch.equal(after[k], v) for k, v in teacher_sd.items())
    assert torch.equal(teacher.encode_image(images).f16, f16_teacher)


# ---------------------------------------------------------------------------------------------- step output, pictures
def test_step_returns_the_typed_output_and_the_callback_draws_from_it(project, batch, tmp_path, monkeypatch):
    """training_step returns {"loss", "step": ClipStepOutput} on every step and no pictures; MaskPictures draws from
    that output on its own steps only, calling the teacher's first_prompt_masks there (never on other steps)."""
    module = build_module(project, "model.prompts.num_correction_clicks=1")
    module.train()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.training_step(batch, 0)
    assert set(out) == {"loss", "step"} and isinstance(out["step"], ClipStepOutput)
    step = out["step"]
    assert torch.equal(out["loss"], step.losses["loss"]) and step.num_objects == 3
    assert step.clip_images.shape == (1, 1, 3, 256, 256) and step.clip_gt.shape == (1, 3, 1, 256, 256)
    assert len(step.records) == 1 and len(step.records[0].steps) == 2 and step.teacher_records is None

    calls = []
    real = module.teacher.first_prompt_masks
    monkeypatch.setattr(module.teacher, "first_prompt_masks", lambda *a: calls.append(torch.is_grad_enabled())
                        or real(*a))
    cb = MaskPictures(every_n_steps=2, panel_size=32)
    trainer = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path), is_global_zero=True, global_step=1)
    cb.on_train_batch_start(trainer, module, batch, 0)
    cb.on_train_batch_end(trainer, module, out, batch, 0)  # step 1: not a drawing step
    assert calls == [] and not (tmp_path / "mask_pictures").exists()
    trainer.global_step = 2
    cb.on_train_batch_start(trainer, module, batch, 0)
    cb.on_train_batch_end(trainer, module, out, batch, 0)
    assert calls == [False]  # one teacher pass, without gradients
    (png,) = (tmp_path / "mask_pictures").iterdir()
    assert png.name == "step_0000002_0.png" and Image.open(png).size == (4 * 32, 32 + title_height(32))


# ---------------------------------------------------------------------------------------------- the frozen teacher
def test_teacher_outside_optimizer_state_dict_and_train_mode(module):
    teacher = module.teacher
    assert isinstance(teacher, FrozenTeacher)
    assert "teacher" not in dict(module.named_children())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert len(teacher_ids) > 0

    module.trainer = pl.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu")
    try:
        opt = module.configure_optimizers()["optimizer"]
    finally:
        module.trainer = None
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert not teacher_ids & {id(p) for p in in_opt}
    assert {id(p) for p in in_opt} == {id(p) for p in module.student.parameters() if p.requires_grad}

    keys = list(module.state_dict())
    assert keys and all(k.startswith("student.") for k in keys)
    assert len(keys) == len(module.student.state_dict())

    module.train()
    assert module.student.training
    assert not any(m.training for m in teacher.modules())
    teacher.train()
    assert not any(m.training for m in teacher.modules())


def test_teacher_without_checkpoint_refuses_unless_random_init_allowed(project, module, caplog):
    net = module.teacher.net
    with pytest.raises(ValueError, match=r"model\.teacher\.checkpoint=.*model\.teacher\.allow_random_init=true"):
        FrozenTeacher(net)
    with caplog.at_level(logging.WARNING, logger="edgetam_train.distill.teacher"):
        FrozenTeacher(net, allow_random_init=True)
    (record,) = [r for r in caplog.records if r.name == "edgetam_train.distill.teacher"]
    assert record.levelno == logging.WARNING and "RANDOMLY INITIALISED" in record.getMessage()

    # the same through the config: checkpoint null, allow_random_init false -> refuses before training starts
    cfg = compose_train(project, "model.teacher.allow_random_init=false")
    with pytest.raises(Exception, match="allow_random_init=true"):
        instantiate(cfg.model.teacher)
    # the paper config (no debug) points at a local file; a missing file is named in the error
    cfg = compose_train(project, "model.teacher.checkpoint=${paths.weights_dir}/sam2.1_hiera_tiny.pt",
                        "model.teacher.allow_random_init=false")
    with pytest.raises(Exception, match=r"weights/sam2\.1_hiera_tiny\.pt does not exist"):
        instantiate(cfg.model.teacher)


# ---------------------------------------------------------------------------------------------- optimiser
def test_optimizer_groups_adamw_no_decay_on_norms_and_biases(module):
    module.trainer = pl.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu")
    try:
        conf = module.configure_optimizers()
    finally:
        module.trainer = None
    opt = conf["optimizer"]
    assert type(opt) is torch.optim.AdamW
    assert conf["lr_scheduler"]["interval"] == "step"
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay"}
    # base lr 4e-4; the scheduler has already set step 0 of the linear warmup (lr 0)
    assert all(g["initial_lr"] == pytest.approx(4e-4) and g["lr"] == 0.0 for g in groups.values())
    assert groups["decay"]["weight_decay"] == pytest.approx(0.1) and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    decay = {id(p) for p in groups["decay"]["params"]}
    checked = {"layernorm": 0, "bias": 0, "kernel": 0}
    for mod_name, mod in module.student.named_modules():  # SAM 2's rule: only *bias* and nn.LayerNorm are exempt
        for leaf, p in mod.named_parameters(recurse=False):
            if type(mod) is nn.LayerNorm or leaf == "bias":
                assert id(p) in no_decay, f"{mod_name}.{leaf} ({type(mod).__name__}) is decayed"
                checked["layernorm" if type(mod) is nn.LayerNorm else "bias"] += 1
            elif isinstance(mod, (nn.Conv2d, nn.Linear)) and leaf == "weight":
                assert id(p) in decay, f"{mod_name}.{leaf} is not decayed"
                checked["kernel"] += 1
    assert min(checked.values()) > 5, checked
    norms = [m for m in module.student.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(id(m.weight) in decay for m in norms)  # the RepViT trunk's BatchNorm scales, as SAM 2 would


# ---------------------------------------------------------------------------------------------- Lightning: resume
class _Probe(Callback):
    """Records the step each batch starts at, checks the teacher stays in eval mode, stops after ``stop_at`` steps."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.steps = stop_at, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        assert pl_module.student.training and not any(m.training for m in pl_module.teacher.modules())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def _trainer(tmp: Path, max_steps: int, probe: _Probe, version: int) -> pl.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp / "checkpoints", save_last=True, every_n_train_steps=3, save_top_k=0)
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, precision="32-true",
                      gradient_clip_val=0.1, log_every_n_steps=1, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp),
                      logger=CSVLogger(str(tmp), name="csv", version=version),
                      callbacks=[ckpt, LearningRateMonitor(logging_interval="step"), probe])


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_resume_schedule_and_export_from_student_only_checkpoint(project, batch, tmp_path):
    """Fit 3 of 6 steps, resume from last.ckpt to 6: the run continues at step 3, the inverse-sqrt schedule (warmup 2,
    cooldown 2) drives the LR across both runs, and the checkpoint holds only student weights that
    ``read_state_dict`` + ``build_model("edgetam", 256)`` load strictly."""
    overrides = ["model.prompts.num_correction_clicks=0", "model.scheduler.warmup_steps=2",
                 "model.scheduler.cooldown_steps=2"]
    loader = torch.utils.data.DataLoader(FixedBatch(batch, 2), batch_size=None)

    first = build_module(project, *overrides)
    probe = _Probe(stop_at=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 6, probe, version=0).fit(first, train_dataloaders=loader)
    assert probe.steps == [0, 1, 2]
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert set(ckpt["state_dict"]) == {f"student.{k}" for k in first.student.state_dict()}
    n_student = sum(1 for p in first.student.parameters() if p.requires_grad)
    (opt_state,) = ckpt["optimizer_states"]
    assert sum(len(g["params"]) for g in opt_state["param_groups"]) == n_student  # no teacher tensor anywhere
    assert ckpt["data_skips"]["corrupt_image"] == 0

    # export: the student's official layout, loaded strictly into a fresh EdgeTAM
    sd = read_state_dict(last)
    export = build_model("edgetam", image_size=256)
    export.load_state_dict(sd, strict=True)
    trained = first.student.state_dict()
    assert all(torch.equal(export.state_dict()[k], v) for k, v in trained.items())

    # resume: a fresh module (different init) continues at step 3 with the saved weights and optimiser state
    second = build_module(project, *overrides, seed=1)
    probe2 = _Probe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer(tmp_path, 6, probe2, version=1)
        trainer.fit(second, train_dataloaders=loader, ckpt_path=str(last))
    assert probe2.steps == [3, 4, 5] and trainer.global_step == 6
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6

    # the LR monitor: lr(s) = 4e-4 · f(s) for both parameter groups, across the two runs
    f = inverse_sqrt_schedule(warmup_steps=2, cooldown_steps=2, total_steps=6, timescale=1000.0)
    lrs = {}
    for version in (0, 1):
        for row in _rows(tmp_path / "csv" / f"version_{version}" / "metrics.csv"):
            if row.get("lr-AdamW/decay"):
                assert row["lr-AdamW/no_decay"] == row["lr-AdamW/decay"]
                lrs[int(row["step"])] = float(row["lr-AdamW/decay"])
    assert sorted(lrs) == [0, 1, 2, 3, 4, 5]
    for step, lr in lrs.items():
        assert lr == pytest.approx(4e-4 * f(step), rel=1e-6, abs=1e-12), (step, lr)
    assert lrs[0] == 0 and lrs[1] == pytest.approx(2e-4) and lrs[2] == pytest.approx(4e-4)  # warmup
    assert lrs[5] == pytest.approx(0.5 * 4e-4 / math.sqrt(1.003))                            # cooldown


# ---------------------------------------------------------------------------------------------- bad data
def test_corrupt_sample_is_skipped_and_logged(project, tmp_path):
    """A garbage jpg in the data dir: training goes on, the skip is counted and logged as data/skipped_corrupt_image."""
    import shutil

    root = tmp_path / "sa1b"
    shutil.copytree(project / "data" / "sample" / "sa1b", root, ignore=shutil.ignore_patterns(".*"))
    bad = sorted(root.glob("*.jpg"))[1]
    bad.write_bytes(b"not a jpeg at all")
    dm = SA1BDataModule(root, image_size=256, max_masks=2, batch_size=2, num_workers=0, pin_memory=False,
                        hflip_p=0.0, max_skip_rate=0.5)
    module = build_module(project, "model.prompts.num_correction_clicks=0", "trainer.max_steps=2")
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                         logger=CSVLogger(str(tmp_path), name="csv", version=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2  # one epoch of 4 images: the bad one was replaced by the next
    assert dm.train_set.skips.as_dict()["corrupt_image"] == 1
    rows = _rows(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert "data/skipped_corrupt_image" in rows[0] and "data/skipped" in rows[0]
    skipped = [float(r["data/skipped"]) for r in rows if r.get("data/skipped")]
    assert len(skipped) == 2 and skipped[-1] == 1.0  # running total
    assert max(float(r["data/skipped_corrupt_image"]) for r in rows if r.get("data/skipped_corrupt_image")) == 1.0
    assert module.skip_totals["corrupt_image"] == 1 and sum(module.skip_totals.values()) == 1
    ckpt = {"state_dict": {}}  # the totals go through the checkpoint, so a resumed run keeps counting
    module.on_save_checkpoint(ckpt)
    module.skip_totals = dict.fromkeys(module.skip_totals, 0)
    module.on_load_checkpoint(ckpt)
    assert module.skip_totals["corrupt_image"] == 1
