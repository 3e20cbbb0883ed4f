"""``python train.py ...`` as users run it: the quick start trains and writes checkpoints, metrics and mask pictures;
config mistakes fail with clear messages; the paper experiment composes with every trainer option."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from edgetam_train.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]


def run_train(project: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` from the repository, with every path under ``project`` (PROJECT_ROOT)."""
    # one thread: two OpenMP threads on a busy 2-core machine wait on each other at every barrier
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root holding the generated sample data as ``make train`` makes it: data/sample/sa1b (4 images) and
    data/sample/davis (1 video; the quick start's validation set)."""
    root = tmp_path_factory.mktemp("project")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(root / "data" / "sample"), "--num-images", "4", "--formats", "sa1b,davis",
                          "--num-davis-videos", "1", "--video-frames", "4"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return root


def test_quickstart_two_steps_writes_checkpoint_metrics_and_pictures(project):
    proc = run_train(project, "experiment=edgetam_distill", "debug=quickstart", "trainer.max_steps=2",
                     "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=2",
                     "callbacks.mask_pictures.every_n_steps=1", "model.prompts.num_correction_clicks=1",
                     "data.max_masks=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = project / "logs" / "train" / "runs" / "quickstart"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and all(k.startswith("student.") for k in ckpt["state_dict"])
    assert (run_dir / "config_resolved.yaml").is_file()

    (metrics,) = list(run_dir.glob("csv/version_*/metrics.csv"))
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    for name in ("train/loss", "train/loss_task", "train/loss_f16", "train/loss_mask", "train/loss_dice",
                 "train/loss_iou", "train/loss_class", "train/num_objects", "data/skipped", "lr-AdamW/decay",
                 "perf/samples_per_s"):
        assert name in columns, f"{name} not in {sorted(columns)}"
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    f16 = [float(r["train/loss_f16"]) for r in rows if r.get("train/loss_f16")]
    assert all(v > 0 for v in f16)  # the random teacher is there and distils

    pictures = sorted(p.name for p in metrics.parent.glob("mask_pictures/*.png"))
    assert pictures and pictures[0].startswith("step_0000000_"), pictures
    assert "TEACHER IS RANDOMLY INITIALISED" in proc.stderr + proc.stdout
    # the recipe report: printed, in quickstart.log and the run directory, the quick start's deviations marked
    report = (run_dir / "recipe_report.md").read_text()
    assert "| student trunk init | ≠ random |" in report and "| image size | ≠ 256 | 1024 |" in report
    assert "Recipe report: quickstart" in proc.stderr + proc.stdout
    assert "| global batch" in (run_dir / "train.log").read_text()


def test_unknown_config_option_lists_the_valid_choices(project):
    proc = run_train(project, "experiment=edgetam_distill", "debug=quickstart", "trainer=tpu")
    assert proc.returncode != 0
    err = proc.stderr
    assert "Could not find 'trainer/tpu'" in err and "Available options in 'trainer':" in err, err
    listed = err.split("Available options in 'trainer':", 1)[1].split("Config search path", 1)[0].split()
    assert listed == ["cpu", "ddp", "default", "gpu", "slurm"], err


def test_architecture_as_model_names_the_arch_group(project):
    """Architectures live in their own group (configs/arch): ``model=edgetam`` is refused while composing, listing
    the training modules the model group holds."""
    proc = run_train(project, "experiment=edgetam_distill", "model=edgetam")
    assert proc.returncode != 0
    err = proc.stderr
    assert "Could not find 'model/edgetam'" in err and "Available options in 'model':" in err, err[-3000:]
    listed = err.split("Available options in 'model':", 1)[1].split("Config search path", 1)[0].split()
    assert listed == ["distill_image", "distill_video"], err


def test_model_check_runs_before_anything_is_built():
    """A ``model._target_`` that is not a LightningModule is refused before anything is built, naming the target."""
    from edgetam_train.run.train import check_model_config

    with pytest.raises(ValueError, match=r"model\._target_=edgetam_train\.models\.sam2_model\.SAM2Model, which is "
                                         r"not a LightningModule"):
        check_model_config(_compose("model._target_=edgetam_train.models.sam2_model.SAM2Model").model)
    with pytest.raises(ValueError, match="model._target_=no.such.Module cannot be imported"):
        check_model_config(_compose("model._target_=no.such.Module").model)
    check_model_config(_compose().model)  # model=distill_image


# ---------------------------------------------------------------------------------------------- composition
def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        paths = ["paths.root_dir=/tmp/unused", "paths.output_dir=/tmp/unused/out"]
        return compose("train", overrides=paths + list(overrides))


@pytest.mark.parametrize("option,precision", [("ddp", "bf16-mixed"), ("gpu", "bf16-mixed"), ("cpu", "32-true"),
                                              ("default", "32-true")])
def test_experiment_composes_with_trainer_options(option, precision):
    cfg = _compose("experiment=edgetam_distill", f"trainer={option}")
    t = cfg.trainer
    assert t.precision == precision
    assert t.gradient_clip_val == 0.1 and t.max_steps == 100000  # the experiment's values survive the swap
    assert cfg.model.optimizer.lr == 4e-4 and cfg.model.scheduler.name == "inverse_sqrt"
    assert cfg.model.teacher.net.image_size == 1024 == cfg.model.student.image_size == cfg.data.image_size
    if option == "ddp":
        assert t.sync_batchnorm is True and t.strategy._target_.endswith("DDPStrategy")
        assert t.accelerator == "gpu" and t.devices == "auto"
    if option == "cpu":
        assert t.accelerator == "cpu"
    # builds on this GPU-less machine when pointed at the CPU (DDPStrategy included)
    cfg = _compose("experiment=edgetam_distill", f"trainer={option}", "trainer.accelerator=cpu", "trainer.devices=1",
                   "trainer.precision=32-true")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == 100000 and trainer.gradient_clip_val == 0.1


def test_quickstart_scales_its_schedule_with_max_steps():
    cfg = _compose("experiment=edgetam_distill", "debug=quickstart")
    assert (cfg.trainer.max_steps, cfg.model.scheduler.warmup_steps, cfg.model.scheduler.cooldown_steps) == (40, 5, 10)
    cfg = _compose("experiment=edgetam_distill", "debug=quickstart", "trainer.max_steps=2")
    assert (cfg.model.scheduler.warmup_steps, cfg.model.scheduler.cooldown_steps) == (0, 0)
    assert cfg.model.teacher.checkpoint is None and cfg.model.teacher.allow_random_init is True
    assert cfg.trainer.precision == "32-true" and cfg.model.student.image_size == 256


@pytest.mark.parametrize("overrides", [
    ["experiment=edgetam_distill"], ["experiment=edgetam_distill", "debug=quickstart"],
    ["experiment=edgetam_distill_video"], ["experiment=edgetam_distill_video", "debug=quickstart_video"],
    ["experiment=edgetam_distill", "debug=identity"], ["experiment=edgetam_distill_video", "debug=identity"],
    ["experiment=edgetam_finetune", "debug=quickstart", "data=coco"],
    ["experiment=edgetam_finetune", "data=mask_folder"],
    ["experiment=edgetam_finetune", "model=distill_video", "data=vos_finetune"],
])
def test_data_config_check_accepts_every_documented_combination(overrides):
    from edgetam_train.run.train import check_data_config

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/unused"])
    check_data_config(cfg.data, [])


def test_quickstart_video_without_its_experiment_is_refused_before_building(tmp_path):
    """debug=quickstart_video on the default (image) experiment ended in an instantiate TypeError; now the keys the
    SA-1B data module does not take and the experiment to use are named, before any model is built."""
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "debug=quickstart_video"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "SA1BDataModule (data._target_) takes no ['clip_len', 'datasets', 'max_objects']" in out, out[-2000:]
    assert "debug=quickstart_video goes with experiment=edgetam_distill_video" in out
    assert "instantiating" not in out  # refused before any callback, logger or model was built


def test_data_choice_for_another_experiment_is_named_not_a_type_error():
    """``debug=quickstart data=vos_finetune``: VOSFinetuneDataModule takes ``**kwargs`` (handed to VideoDataModule),
    so the keys check follows them up to the base instead of skipping the class."""
    from edgetam_train.data.finetune import VOSFinetuneDataModule
    from edgetam_train.run.train import accepted_arguments, check_data_config

    assert {"train", "val", "clip_len", "batch_size"} <= accepted_arguments(VOSFinetuneDataModule)
    cfg = _compose("experiment=edgetam_distill", "debug=quickstart", "data=vos_finetune")
    with pytest.raises(ValueError, match=r"VOSFinetuneDataModule \(data._target_\) takes no \['max_masks', 'root'\]"
                                         r".*data=vos_finetune"):
        check_data_config(cfg.data, ["edgetam_distill", "debug:quickstart", "data=vos_finetune"])
    for data in ("coco", "mask_folder", "vos_finetune"):  # the fine-tuning experiment goes with every fine-tune data
        check_data_config(_compose("experiment=edgetam_finetune", f"data={data}").data, [])
