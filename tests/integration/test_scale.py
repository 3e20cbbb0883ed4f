"""Ready for the cluster: activation checkpointing leaves losses and gradients unchanged and saves memory, bf16-mixed
runs both stages (teacher under the same autocast), ``model.compile`` works for the image step, the memory plan's
fake trace equals a real step's peak, and the experiments' defaults give the paper's global batch.

CPU only, 256² (the smallest size the student's 2D perceiver allows), randomly initialised SAM 2.1-T teachers.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from edgetam_train.config import CONFIG_DIR
from edgetam_train.distill.efficiency import apply_activation_checkpointing, checkpoint_level, compile_target

REPO = Path(__file__).resolve().parents[2]

import step_memory  # noqa: E402
from _memtrace import traced_peak  # noqa: E402

S = 256
QUICK = {"image": ["experiment=edgetam_distill", "debug=quickstart"],
         "video": ["experiment=edgetam_distill_video", "debug=quickstart_video"]}


def compose_cfg(stage: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=[*QUICK[stage], f"paths.root_dir={REPO}",
                                           *overrides])


def build(stage: str, *overrides: str):
    torch.manual_seed(0)
    return instantiate(compose_cfg(stage, *overrides).model, _convert_="partial")


def make_batch(stage: str) -> dict:
    """Stage 1: one image with 3 objects; stage 2: one 3-frame clip with 2 objects (a moving square, a disc)."""
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    frames = 1 if stage == "image" else 3
    images = torch.zeros(1, frames, 3, S, S)
    masks = torch.zeros(frames, 3 if stage == "image" else 2, S, S, dtype=torch.bool)
    for t in range(frames):
        masks[t, 0] = (ys >= 60) & (ys < 130) & (xs >= 40 + 12 * t) & (xs < 110 + 12 * t)
        masks[t, 1] = ((ys - 180) ** 2 + (xs - 170) ** 2) < 30 ** 2
        if stage == "image":
            masks[t, 2] = (ys >= 150) & (xs < 60)
        images[0, t] = 0.3 * torch.sin(xs / 9.0) + torch.stack([masks[t, 0], masks[t, 1], masks[t, -1]]).float()
    if stage == "image":
        return {"images": images[:, 0], "masks": masks[0], "obj_to_img": torch.zeros(3, dtype=torch.long)}
    return {"images": images, "masks": masks, "obj_to_img": torch.zeros(2, dtype=torch.long)}


def step(module, batch: dict, autocast: bool = False) -> tuple[dict, dict]:
    """Losses and student gradients of one clip step (prompts seeded)."""
    module.train()
    module.student.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = module.clip_step(batch).losses
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in module.student.named_parameters() if p.grad is not None}
    return {k: v.detach().float() for k, v in losses.items()}, grads


# ---------------------------------------------------------------------------------------------- checkpointing
def test_checkpoint_switch_values():
    assert [checkpoint_level(v) for v in (None, False, True, "heads", "FULL")] == ["none", "none", "full", "heads",
                                                                                    "full"]
    assert [compile_target(v) for v in (False, True, "student")] == ["none", "encoder", "student"]
    with pytest.raises(ValueError, match="model.activation_checkpointing='decoder'.*none, heads, full"):
        checkpoint_level("decoder")
    with pytest.raises(ValueError, match="model.compile='all'"):
        compile_target("all")


@pytest.mark.parametrize("stage", ["image", "video"])
def test_activation_checkpointing_keeps_losses_and_gradients_and_saves_memory(stage):
    """The same step with checkpointing none / heads / full: losses and every student gradient equal within 1e-5;
    the traced peak of live tensor bytes drops with each level; the config switch reaches the module."""
    module = build(stage)
    batch = make_batch(stage)
    results, peaks = {}, {}
    for level in ("none", "heads", "full"):
        apply_activation_checkpointing(module.student, module.loss.task_loss, level)
        out = {}
        peaks[level] = traced_peak(lambda: out.update(zip(("losses", "grads"), step(module, batch))), None).peak
        results[level] = out
    ref = results["none"]
    assert len(ref["grads"]) > 400
    for level in ("heads", "full"):
        got = results[level]
        for k, v in ref["losses"].items():
            assert abs(float(got["losses"][k]) - float(v)) <= 1e-5, (level, k)
        assert got["grads"].keys() == ref["grads"].keys()
        worst = max(float((got["grads"][n] - g).abs().max()) for n, g in ref["grads"].items())
        assert worst <= 1e-5, (level, worst)
    # stage 1's peak is mostly the decoder passes; a short 256² clip's mostly the encoder and memory attention
    assert peaks["heads"] < (0.8 if stage == "image" else 1.0) * peaks["none"], peaks
    assert peaks["full"] < 0.8 * peaks["heads"], peaks
    # the config switch reaches the module
    cfg_module = build(stage, "model.activation_checkpointing=heads")
    assert getattr(cfg_module.student.decode, "_edgetam_checkpointed", False)
    # the lean mask loss (default) keeps nothing of size N x 3 x S² for backward: it is not recomputed again;
    # the direct loss is checkpointed with the decoder passes
    assert not getattr(cfg_module.loss.task_loss.step_losses, "_edgetam_checkpointed", False)
    direct = build(stage, "model.activation_checkpointing=heads", "model.loss.task_loss.mask_loss=direct")
    assert getattr(direct.loss.task_loss.step_losses, "_edgetam_checkpointed", False)


# ---------------------------------------------------------------------------------------------- bf16 / compile
@pytest.mark.parametrize("stage,tolerance", [("image", 0.05), ("video", 0.05)])
def test_bf16_autocast_step_is_finite_close_to_fp32_and_teacher_runs_in_bf16(stage, tolerance):
    """The step under bf16 autocast (what ``trainer.precision=bf16-mixed`` does on CPU): finite loss and gradients,
    total loss within ``tolerance`` (relative) of fp32 on the same batch and prompts; the teacher's trunk runs
    in bf16 under the same autocast."""
    module = build(stage)
    batch = make_batch(stage)
    seen = []  # dtype of the teacher trunk's outputs, per step

    def hook(_mod, _inp, out):
        seen.append({t.dtype for t in (out if isinstance(out, (list, tuple)) else [out])})

    handle = module.teacher.net.image_encoder.trunk.register_forward_hook(hook)
    fp32, _ = step(module, batch)
    bf16, grads = step(module, batch, autocast=True)
    handle.remove()
    assert seen[0] == {torch.float32} and torch.bfloat16 in seen[1], seen
    assert all(math.isfinite(float(v)) for v in bf16.values())
    assert all(torch.isfinite(g).all() for g in grads.values())
    rel = abs(float(bf16["loss"]) - float(fp32["loss"])) / abs(float(fp32["loss"]))
    assert rel <= tolerance, (float(bf16["loss"]), float(fp32["loss"]))


@pytest.mark.parametrize("stage", ["image", "video"])
def test_trainer_runs_both_stages_in_bf16_mixed(stage, tmp_path):
    """``trainer.precision=bf16-mixed`` through Lightning on the CPU, 3 optimizer steps: finite logged losses."""
    from edgetam_train.data.synthetic import make_sample_data
    data = tmp_path / "data" / "sample"
    formats = "sa1b" if stage == "image" else "sa1b,sav,davis"
    make_sample_data(["--out", str(data), "--num-images", "2", "--formats", formats])
    cfg = compose_cfg(stage, f"paths.root_dir={tmp_path}", "trainer.precision=bf16-mixed", "trainer.max_steps=3",
                      "data/val=none", "data.batch_size=1")
    torch.manual_seed(0)
    module = instantiate(cfg.model, _convert_="partial")
    datamodule = instantiate(cfg.data, _convert_="partial")
    assert cfg.trainer.precision == "bf16-mixed"
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=cfg.trainer.precision, max_steps=3, logger=False,
                         callbacks=[], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    assert trainer.precision == "bf16-mixed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 3
    loss = trainer.callback_metrics["train/loss"]
    assert math.isfinite(float(loss))


@pytest.mark.slow  # inductor builds the encoder's C++ kernels: 2-12 minutes on 2 busy cores
@pytest.mark.timeout(3600)
def test_compiled_student_image_step_matches_eager():
    """``model.compile=true`` (the image encoder through torch.compile / inductor on the CPU): the image step runs,
    forward and backward, and matches the eager step."""
    eager = build("image")
    batch = make_batch("image")
    ref, ref_grads = step(eager, batch)
    compiled = build("image", "model.compile=true")
    assert type(compiled.student.image_encoder).__name__ == type(eager.student.image_encoder).__name__
    assert compiled.student.state_dict().keys() == eager.student.state_dict().keys()
    got, grads = step(compiled, batch)
    assert abs(float(got["loss"]) - float(ref["loss"])) <= 1e-3 * abs(float(ref["loss"]))
    name = "image_encoder.trunk.body.stem.conv1.c.weight"
    g = grads.get(name, next(iter(grads.values())))
    r = ref_grads.get(name, next(iter(ref_grads.values())))
    assert torch.allclose(g, r, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------- memory plan
def test_fake_trace_equals_real_peak():
    """step_memory's method: the FakeTensorMode trace of a stage-1 step gives the real step's peak (within 2 %)."""
    job = step_memory.Job("image", 1, "32-true", "none", S, masks=4)
    fake = step_memory.estimate(job)
    real = step_memory.estimate(job, fake=False)
    assert real["peak"] > 100 * 2**20
    assert abs(fake["peak"] - real["peak"]) <= 0.02 * real["peak"], (fake["peak"], real["peak"])


def test_cross_check_rss_growth_is_measured_from_after_the_build():
    """The cross-check's RSS growth starts at the step, not at the process's earlier peak: with ``ru_maxrss`` alone a
    model build that peaked higher than the step hid the step (the table printed "peak RSS growth 0.0 GiB"). In a
    fresh process, as the bench's ``--rss-child`` (a long-lived one may reuse resident freed memory)."""
    import os
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("no writable /proc/self/clear_refs (not Linux): the bench falls back to ru_maxrss")
    code = ("import numpy as np, step_memory\n"
            "earlier = np.ones(400 * 2**20, dtype=np.uint8)  # a higher peak before the step (the models' build)\n"
            "del earlier\n"
            "base = step_memory.reset_peak_rss()\n"
            "step = np.ones(100 * 2**20, dtype=np.uint8)  # the step\n"
            "print(step_memory.peak_rss() - base)\n")
    bench = Path(step_memory.__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", code], cwd=bench, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.strip().splitlines()[-1])
    assert 90 * 2**20 <= grown < 300 * 2**20, grown


def test_memory_check_reads_experiment_defaults_and_global_batch(monkeypatch, capsys, tmp_path):
    """--check: the experiments give the paper's global batch on 8 devices; a row that does not fit fails."""
    for stage, total in (("image", 128), ("video", 256)):
        cfg = step_memory.compose(stage, ["trainer=ddp"])
        assert 8 * cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == total
        # the lean mask loss lets both stages fit 80 GB without recompute (docs/benchmarks.md "Lean mask loss")
        assert cfg.trainer.precision == "bf16-mixed" and cfg.model.activation_checkpointing == "none"
        assert cfg.model.loss.task_loss.mask_loss == "lean"

    def fake_estimate(job, fake=True, built=None):
        device = 70e9 if job.stage == "video" else 30e9
        return {"device": device, "fits": device <= 0.85 * 80e9, "headroom": 1 - device / 80e9}

    monkeypatch.setattr(step_memory, "estimate", fake_estimate)
    assert step_memory.check(8, tmp_path / "rows.json") == 1
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["value"], r["passed"]) for r in rows] == [(27.9, True), (65.2, False)]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("step_memory --check: FAIL") and "video 65.2 GiB (12% free)" in last
    assert step_memory.check(4) == 1  # 4 devices: the global batch is half the paper's


@pytest.mark.slow
def test_memory_check_passes_for_the_defaults():
    """The real --check (fake traces at 1024², ~2 minutes): the defaults fit 80 GB with >= 15 % free."""
    assert step_memory.check(8) == 0
