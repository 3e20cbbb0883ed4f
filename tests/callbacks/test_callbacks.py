"""Hydra config groups (trainer / callbacks / logger / paths / hydra / debug) compose and instantiate; a 2-step CPU fit
of a toy module through them writes mask pictures, throughput metrics and checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig
from PIL import Image

from edgetam_train.callbacks.batch_seed import BatchSeed
from edgetam_train.callbacks.best_checkpoint import BestCheckpoint
from edgetam_train.callbacks.loss_curve import LossCurve
from edgetam_train.callbacks.mask_pictures import MaskPictures, StepPictures, sample_picture, title_height
from edgetam_train.callbacks.model_checkpoint import ModelCheckpoint
from edgetam_train.callbacks.sigterm_checkpoint import SigtermCheckpoint
from edgetam_train.callbacks.step_progress_bar import StepProgressBar
from edgetam_train.callbacks.throughput import Throughput, batch_sizes
from edgetam_train.callbacks.train_log import TrainLog
from edgetam_train.distill.optim import build_optimizer, build_scheduler
from edgetam_train.distill.prompting import ClipPlan, FrameRecord, PromptStep
from edgetam_train.distill.step_output import ClipStepOutput
from edgetam_train.drawing import GT_COLOUR, POSITIVE_COLOUR, STUDENT_COLOUR, TEACHER_COLOUR
from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD
from edgetam_train.run.cluster import assign_wandb_run_ids

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

PRIMARY = f"""
defaults:
  - paths: default
  - trainer: cpu
  - callbacks: default
  - logger: csv
  - hydra: default
  - _self_
hydra:
  searchpath:
    - file://{CONFIG_DIR}
task_name: test
run_name: default
"""


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides) → the config of a minimal primary config using the project's groups, paths under tmp."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "primary.yaml").write_text(PRIMARY)

    def _compose(*overrides: str, hydra_cfg: bool = False) -> DictConfig:
        base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path / "cfg")):
            return compose("primary", overrides=base + list(overrides), return_hydra_config=hydra_cfg)

    return _compose


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values()]


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("option", ["default", "cpu", "gpu", "ddp"])
def test_trainer_options_instantiate(compose_cfg, option):
    cfg = compose_cfg(f"trainer={option}")
    assert cfg.trainer.gradient_clip_val == 0.1 and cfg.trainer.accumulate_grad_batches == 1
    expected_precision = {"default": "32-true", "cpu": "32-true", "gpu": "bf16-mixed", "ddp": "bf16-mixed"}[option]
    assert cfg.trainer.precision == expected_precision
    if option == "ddp":
        assert cfg.trainer.sync_batchnorm is True and cfg.trainer.num_nodes == 1 and cfg.trainer.devices == "auto"
    # this machine has no GPU: build the same trainer on the CPU
    cfg = compose_cfg(f"trainer={option}", "trainer.accelerator=cpu", "trainer.devices=1")
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_steps == cfg.trainer.max_steps and trainer.gradient_clip_val == 0.1
    if option == "ddp":
        assert isinstance(trainer.strategy, DDPStrategy)


def test_callbacks_default_and_none(compose_cfg, tmp_path):
    cfg = compose_cfg("callbacks=default")
    assert list(cfg.callbacks) == ["model_checkpoint", "best_checkpoint", "lr_monitor", "step_progress_bar",
                                   "train_log", "throughput", "mask_pictures", "loss_curve", "sigterm_checkpoint",
                                   "batch_seed"]
    cbs = _instantiate_all(cfg.callbacks)
    types = [type(c) for c in cbs]
    assert types == [ModelCheckpoint, BestCheckpoint, LearningRateMonitor, StepProgressBar, TrainLog,
                     Throughput, MaskPictures, LossCurve, SigtermCheckpoint, BatchSeed]
    assert cbs[8].path == tmp_path / "out" / "checkpoints" / "last.ckpt"  # the file ckpt_path=auto resumes from
    assert (cbs[1].monitor, cbs[1].mode, cbs[1].save_top_k, cbs[1].save_last) == ("val/J&F", "max", 1, False)
    assert cbs[4].every_n_steps == cfg.trainer.log_every_n_steps and cbs[3].refresh_rate == 1
    ckpt = cbs[0]
    assert Path(ckpt.dirpath) == tmp_path / "out" / "checkpoints" and ckpt.save_last is True
    assert _instantiate_all(compose_cfg("callbacks=none").callbacks) == []


def test_loggers_csv_wandb_offline_none(compose_cfg, tmp_path, monkeypatch):
    csv_logger = _instantiate_all(compose_cfg("logger=csv").logger)
    assert len(csv_logger) == 1 and isinstance(csv_logger[0], CSVLogger)
    assert Path(csv_logger[0].save_dir) == tmp_path / "out"
    assert _instantiate_all(compose_cfg("logger=none").logger) == []

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg("logger=wandb", "logger.wandb.offline=true", "run_name=cfgtest")
    assert "key" not in cfg.logger.wandb and cfg.logger.wandb.project == "edgetam-train"
    assert cfg.logger.wandb.id is None and cfg.logger.wandb.resume == "allow"  # train.py assigns the id:
    run_id = assign_wandb_run_ids(cfg.logger, tmp_path / "out", "cfgtest", resuming=False, rank_zero=True)
    (wb,) = _instantiate_all(cfg.logger)
    assert isinstance(wb, WandbLogger)
    try:
        assert run_id.startswith("cfgtest-") and wb.experiment.id == run_id
        assert wb.experiment.settings.mode in ("offline", "dryrun")
        wb.log_metrics({"x": 1.0}, step=0)
    finally:
        wb.experiment.finish()


def test_stable_run_dir_and_paths(compose_cfg, tmp_path):
    cfg = compose_cfg("run_name=myrun", hydra_cfg=True)
    assert cfg.hydra.run.dir == f"{tmp_path}/logs/test/runs/myrun"          # no timestamp: re-launch continues it
    assert cfg.hydra.sweep.dir == f"{tmp_path}/logs/test/multiruns/myrun"
    assert cfg.hydra.job.chdir is False
    assert cfg.paths.data_dir == f"{tmp_path}/data" and cfg.paths.ckpt_dir == f"{tmp_path / 'out'}/checkpoints"
    assert cfg.paths.weights_dir == f"{tmp_path}/weights"


@pytest.mark.parametrize("option", ["default", "fdr", "overfit"])
def test_debug_configs(compose_cfg, option):
    cfg = compose_cfg(f"+debug={option}", "trainer=gpu")
    assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    if option == "fdr":
        assert cfg.trainer.fast_dev_run is True
    if option == "overfit":
        assert cfg.trainer.overfit_batches == 2
    assert isinstance(instantiate(cfg.trainer, logger=False), pl.Trainer)


# ---------------------------------------------------------------------------------------------- callbacks
def test_batch_sizes_layouts():
    assert batch_sizes({"images": torch.zeros(4, 3, 8, 8)}) == (4, 4)
    assert batch_sizes({"images": torch.zeros(2, 8, 3, 8, 8)}) == (2, 16)       # clips: B·T frames
    assert batch_sizes({"batch_size": 3, "images": torch.zeros(3, 3, 8, 8)}) == (3, 3)
    assert batch_sizes([torch.zeros(5, 3, 8, 8), torch.zeros(5)]) == (5, 5)
    assert batch_sizes({"other": 1}) == (0, 0)


def _normalised(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> ImageNet-normalised."""
    return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.abs(pixel.astype(int) - np.asarray(colour)).max() <= tol)


@pytest.mark.parametrize("background", [0.0, 1.0])
def test_sample_picture_layout_colours_and_prompt(background):
    """One row per frame; GT / student / teacher keep their colours on black and on white frames; the click is drawn;
    no teacher panel when there is no teacher."""
    s, p = 64, 64
    img = _normalised(torch.full((3, s, s), background))
    gt = torch.zeros(s, s, dtype=torch.bool)
    gt[16:48, 16:48] = True
    student = torch.full((s, s), -1.0)
    student[20:52, 20:52] = 1.0  # shifted by 4 px: its outline is not under the GT's
    coords, labels = torch.tensor([[32.0, 32.0]]), torch.tensor([1])
    pic = sample_picture(img, gt, student, None, panel_size=p, point_coords=coords, point_labels=labels,
                         notes=["click"])
    h = title_height(p)
    assert pic.size == (3 * p, p + h) and pic.mode == "RGB"  # image | GT | student: no black teacher panel
    arr = np.asarray(pic)
    assert _near(arr[h + 32, 32], POSITIVE_COLOUR)               # the click, on the image panel
    assert _near(arr[h + 16, p + 32], GT_COLOUR)                 # GT outline (top edge), fully opaque
    assert _near(arr[h + 20, 2 * p + 40], STUDENT_COLOUR)        # student outline
    assert _near(arr[h + 16, 2 * p + 40], GT_COLOUR)             # with the GT outline on the student panel
    assert _near(arr[h + 4, 2 * p + 32], (0, 0, 0) if background == 0 else (255, 255, 255), tol=10)  # no mask here
    # a 3-frame clip with a teacher: 3 rows of 4 panels, the teacher in its own colour
    clip = sample_picture(img.expand(3, 3, s, s), gt.expand(3, s, s), student.expand(3, s, s),
                          student.expand(3, s, s), panel_size=p)
    assert clip.size == (4 * p, 3 * (p + h))
    assert _near(np.asarray(clip)[2 * (p + h) + h + 20, 3 * p + 40], TEACHER_COLOUR)


def test_mask_pictures_go_to_wandb_logger_when_present(tmp_path):
    class FakeWandb(WandbLogger):
        def __init__(self) -> None:
            super().__init__(offline=True, save_dir=str(tmp_path))
            self.calls = []

        def log_image(self, key, images, step=None, **kwargs):
            self.calls.append((key, images, step, kwargs))

    fake = FakeWandb()
    cb = MaskPictures(every_n_steps=1, max_images=2, panel_size=32)
    # 3 two-frame clips of one object each, no teacher replay and no teacher
    step = toy_step(torch.zeros(3, 2, 3, 16, 16), torch.ones(2, 3, 1, 16, 16, dtype=torch.bool),
                    torch.ones(2, 3, 16, 16), teacher_logits=None)
    trainer = SimpleNamespace(loggers=[fake], log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                              is_global_zero=True, global_step=0)
    cb.on_train_batch_start(trainer, None, None, 0)
    cb.on_train_batch_end(trainer, None, {"loss": torch.zeros(()), "step": step}, None, 0)
    (key, images, step, kwargs), (okey, frames, ostep, okwargs) = fake.calls
    assert key == "train/mask_pictures" and step == 0 and len(images) == 2 and isinstance(images[0], Image.Image)
    # per frame of the 2 samples: the frame with switchable ground-truth / student overlays (wandb.Image masks=)
    assert okey == "train/mask_pictures_overlays" and ostep == 0 and len(frames) == 4 == len(okwargs["masks"])
    assert frames[0].shape == (16, 16, 3) and set(okwargs["masks"][0]) == {"ground_truth", "student"}
    assert okwargs["masks"][0]["student"]["mask_data"].dtype == np.uint8
    assert not (tmp_path / "mask_pictures").exists()


class ToyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"images": torch.randn(3, 16, 16, generator=g), "masks": torch.rand(16, 16, generator=g) > 0.5}


def toy_step(images: torch.Tensor, gt: torch.Tensor, logits: torch.Tensor,
             teacher_logits: torch.Tensor | None) -> ClipStepOutput:
    """A training step's output for B clips of T frames with one object each and one decoder pass per frame.

    Args:
        images: (B, T, 3, S, S); gt: (T, B, 1, S, S) bool; logits / teacher_logits: (T, B, S, S) (teacher: None for
            no teacher replay).
    """
    b, t = images.shape[:2]

    def records(masks: torch.Tensor) -> list[FrameRecord]:
        steps = [PromptStep(masks[i][:, None], torch.ones(b, 1), torch.ones(b, 1), None, None) for i in range(t)]
        return [FrameRecord(i, [steps[i]], masks[i][:, None] > 0, torch.zeros(b, 1), i > 0) for i in range(t)]

    return ClipStepOutput(losses={"loss": logits.sum()}, clip_images=images, clip_gt=gt, obj_to_img=torch.arange(b),
                          plan=ClipPlan(t, [0], [], "point"), records=records(logits),
                          teacher_records=None if teacher_logits is None else records(teacher_logits))


class ToyModule(pl.LightningModule):
    """A 1×1 conv "segmenter" whose training step returns a ClipStepOutput, as DistillationModule's does."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, 1, 1)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self.head(batch["images"])[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["masks"].float())
        self.log("train/loss", loss, batch_size=batch["images"].shape[0])
        step = toy_step(batch["images"][:, None], batch["masks"][None, :, None], logits[None].detach(),
                        -logits[None].detach())
        return {"loss": loss, "step": step}

    def configure_optimizers(self):
        opt = build_optimizer(self, lr=1e-3, weight_decay=0.1)
        sched = build_scheduler(opt, "inverse_sqrt", total_steps=2, warmup_steps=1, cooldown_steps=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_two_step_fit_through_configs_writes_pictures_metrics_and_checkpoints(compose_cfg, tmp_path):
    cfg = compose_cfg("trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                      "trainer.enable_model_summary=false", "callbacks.mask_pictures.every_n_steps=1",
                      "callbacks.mask_pictures.max_images=2", "callbacks.mask_pictures.panel_size=32",
                      "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.throughput.window=2",
                      "~callbacks.step_progress_bar")
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.callbacks), logger=_instantiate_all(cfg.logger))
    loader = torch.utils.data.DataLoader(ToyData(), batch_size=4)
    trainer.fit(ToyModule(), train_dataloaders=loader)
    assert trainer.global_step == 2

    log_dir = Path(trainer.log_dir)
    assert log_dir.is_relative_to(tmp_path / "out" / "csv")
    pictures = sorted(p.name for p in (log_dir / "mask_pictures").iterdir())
    assert pictures == ["step_0000000_0.png", "step_0000000_1.png", "step_0000001_0.png", "step_0000001_1.png"]
    assert Image.open(log_dir / "mask_pictures" / pictures[0]).size == (4 * 32, 32 + title_height(32))

    with open(log_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    for name in ("perf/samples_per_s", "perf/images_per_s", "perf/data_wait_s", "perf/compute_s",
                 "perf/data_wait_frac", "train/loss", "lr-AdamW/decay", "lr-AdamW/no_decay"):
        assert name in columns, f"{name} missing from metrics.csv columns {sorted(columns)}"
    rates = [float(r["perf/samples_per_s"]) for r in rows if r.get("perf/samples_per_s")]
    assert len(rates) == 2 and all(r > 0 for r in rates)

    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and "step_0000002.ckpt" in ckpts, ckpts


def test_step_progress_bar_loss_lines_and_loss_curve(compose_cfg, tmp_path, capsys, caplog):
    """The bar counts optimiser steps of max_steps across epochs, the loss lines come every log_every_n_steps and at
    the end, and loss_curve.png lands next to metrics.csv."""
    cfg = compose_cfg("trainer.max_steps=3", "trainer.log_every_n_steps=2", "trainer.enable_model_summary=false",
                      "callbacks.mask_pictures.every_n_steps=100", "callbacks.model_checkpoint.every_n_train_steps=100")
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.callbacks), logger=_instantiate_all(cfg.logger))
    loader = torch.utils.data.DataLoader(ToyData(), batch_size=4)  # 2 batches per epoch: the run crosses an epoch
    with caplog.at_level("INFO", logger="edgetam_train.callbacks.train_log"):
        trainer.fit(ToyModule(), train_dataloaders=loader)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar) and (bar.train_progress_bar.n, bar.train_progress_bar.total) == (3, 3)
    out = capsys.readouterr().out
    assert "train: 100%" in out and "3/3" in out and "Epoch 1" not in out, out[-2000:]
    lines = [r.getMessage() for r in caplog.records if r.name == "edgetam_train.callbacks.train_log"]
    assert [line.split("  ")[0] for line in lines] == ["step 2/3", "step 3/3"], lines
    assert "  loss " in lines[0] and "  lr " in lines[0] and lines[1].endswith("s/step")
    png = Path(trainer.loggers[0].log_dir) / "loss_curve.png"
    assert png.is_file() and png.with_name("metrics.csv").is_file()
    assert min(Image.open(png).size) > 200


def test_loss_curve_panels(tmp_path):
    from edgetam_train.callbacks.loss_curve import plot_metrics_csv, read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,train/loss_mask,lr-AdamW/decay,val/J&F\n"
                    "0,0,10.0,5.0,,\n0,0,,,1e-4,\n0,1,8.0,4.0,,\n0,1,,,,0.5\n0,2,nan,3.0,,\n")
    series = read_metrics(path)
    assert series["train/loss"] == [(0, 10.0), (1, 8.0)] and series["val/J&F"] == [(1, 0.5)]  # nan dropped
    assert plot_metrics_csv(path, tmp_path / "c.png") == tmp_path / "c.png"
    assert Image.open(tmp_path / "c.png").size[1] > Image.open(tmp_path / "c.png").size[0]  # 4 stacked panels
    (tmp_path / "empty.csv").write_text("epoch,step\n")
    assert plot_metrics_csv(tmp_path / "empty.csv", tmp_path / "e.png") is None


def test_tensorboard_logger_config_gets_the_pictures(compose_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    (tb,) = _instantiate_all(compose_cfg("logger=tensorboard").logger)
    assert isinstance(tb, TensorBoardLogger) and Path(tb.log_dir).is_relative_to(tmp_path / "out" / "tensorboard")
    trainer = SimpleNamespace(loggers=[tb], default_root_dir=str(tmp_path), is_global_zero=True)
    cb = MaskPictures(every_n_steps=1, panel_size=32)
    pics = cb.draw(StepPictures(images=torch.zeros(1, 1, 3, 16, 16), gt=torch.ones(1, 1, 16, 16, dtype=torch.bool),
                                student=torch.ones(1, 1, 16, 16)))
    assert cb.write(trainer, pics, 0) == []  # went to TensorBoard, no PNG files
    tb.experiment.flush()
    assert list(Path(tb.log_dir).glob("events.out.tfevents.*"))


def test_console_each_lightning_line_once_and_no_noise(caplog):
    import logging
    import warnings

    from edgetam_train.run.console import drop_duplicate_lightning_handler, hide_noise

    light = logging.getLogger("lightning")
    own = logging.StreamHandler()
    light.addHandler(own)  # what lightning/__init__.py does
    try:
        assert drop_duplicate_lightning_handler() >= 1  # pytest's root logger has handlers, like Hydra's
        assert own not in light.handlers and light.propagate
    finally:
        light.removeHandler(own)
    hide_noise()
    with caplog.at_level("INFO"):
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, try X")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        hide_noise()  # catch_warnings reset the filters
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("a warning the user can act on", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning the user can act on"]


def test_progress_stage_lines(capsys):
    from edgetam_train.progress import stage

    with stage("edgetam-export", "loading x.ckpt as edgetam"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "edgetam-export: loading x.ckpt as edgetam ..."
    assert err[1].startswith("edgetam-export: loading x.ckpt as edgetam: done in ") and err[1].endswith(" s")


@pytest.mark.parametrize("max_steps,warmup", [(10, 2), (2, 0), (1, 0), (40, 8)])
def test_quickstart_video_warmup_follows_max_steps(max_steps, warmup):
    """debug=quickstart_video trainer.max_steps=2 used to fail: the cosine schedule needs warmup < max_steps."""
    from edgetam_train.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill_video", "debug=quickstart_video",
                                          f"trainer.max_steps={max_steps}", "paths.output_dir=/tmp/unused"])
    assert cfg.model.scheduler.warmup_steps == warmup
    from hydra.utils import instantiate

    from edgetam_train.distill.optim_select import make_scheduler

    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1e-3)
    make_scheduler(instantiate(cfg.model.scheduler), opt, total_steps=max_steps)


def test_full_config_reaches_the_loggers_and_wandb_tags(compose_cfg, tmp_path):
    """hparams.yaml holds every group of the resolved config and the parameter counts, not only the module's own
    hyper-parameters; W&B gets the experiment's name as a tag."""
    import yaml

    from edgetam_train.run.log_config import assign_wandb_tags, experiment_tags, log_config

    cfg = compose_cfg("logger=csv", "trainer.max_steps=7")
    (csv_logger,) = _instantiate_all(cfg.logger)
    log_config([csv_logger], cfg, ToyModule())
    csv_logger.save()
    logged = yaml.safe_load((Path(csv_logger.log_dir) / "hparams.yaml").read_text())
    assert logged["trainer"]["max_steps"] == 7 and logged["trainer"]["gradient_clip_val"] == 0.1
    assert logged["callbacks"]["model_checkpoint"]["every_n_train_steps"] == 1000
    assert logged["paths"]["output_dir"] == str(tmp_path / "out") and logged["run_name"] == "default"
    assert logged["model_params"] == {"total": 4, "trainable": 4, "non_trainable": 0}

    assert experiment_tags({"experiment": "edgetam_distill", "debug": "quickstart", "model": "distill_image"}) == [
        "edgetam_distill", "debug:quickstart"]
    assert experiment_tags({"experiment": None, "debug": None}) == []
    wb = compose_cfg("logger=wandb", "logger.wandb.tags=[mine]").logger
    assert assign_wandb_tags(wb, ["edgetam_distill", "mine"]) == ["mine", "edgetam_distill"]
    assert list(wb.wandb.tags) == ["mine", "edgetam_distill"]


def test_loss_curve_draws_each_row_at_the_optimiser_step_the_log_names(tmp_path):
    """Lightning writes the rows of step k (and a validation after it) at logger step k - 1; the console, train.log
    and the checkpoints say k. The curve uses k; a validation row's ``val_step`` (0 for the validation before
    training) wins."""
    from edgetam_train.callbacks.loss_curve import read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/mIoU_1click,val_step\n"
                    "0,0,,0.1,0\n0,0,10.0,,\n0,1,8.0,,\n0,1,,0.5,2\n")
    assert read_metrics(path) == {"train/loss": [(0, 10.0), (1, 8.0)], "val/mIoU_1click": [(0, 0.1), (1, 0.5)]}
    series = read_metrics(path, optimiser_steps=True)
    assert series == {"train/loss": [(1, 10.0), (2, 8.0)], "val/mIoU_1click": [(0, 0.1), (2, 0.5)]}


def test_validation_line_names_only_what_was_scored():
    """Image validation said "(0 objects, 13 masks, 0 skipped)": "0 objects" read as a bug."""
    from edgetam_train.distill.module import validation_summary

    counts = {"objects": torch.tensor(0), "masks": torch.tensor(13), "skipped": torch.tensor(0)}
    logged = {"val/mIoU_1click": torch.tensor(0.71239), "val/skipped": torch.tensor(0)}
    assert validation_summary(logged, counts) == "val/mIoU_1click=0.7124 (13 masks)"
    counts = {"objects": torch.tensor(6), "masks": torch.tensor(0), "skipped": torch.tensor(1)}
    logged = {"val/J&F": torch.tensor(0.5), "val/skipped": torch.tensor(1)}
    assert validation_summary(logged, counts) == "val/J&F=0.5000 (6 objects, 1 skipped)"
