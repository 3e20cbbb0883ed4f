"""Validation during training: the data.val sets, the DDP-safe J&F / mIoU metric, the validation step and the best
checkpoint by val/J&F.

- ``ValScores`` summed over two gloo ranks with unequal object counts gives the exact dataset means (not a mean of
  per-rank means); ``ShardSampler`` gives every rank the same number of batches without repeating an item;
- a perfect prediction scored through the validation step's path gives J = F = J&F = 1;
- a short ``train()`` of the quick-start config (2 steps, validation at step 2 on the sample DAVIS video and SA-1B
  images) logs val/J&F and val/mIoU_1click in [0, 1] and writes ``best_jf_*.ckpt``;
- ``BestCheckpoint`` does not fail when validation logs no val/J&F (where a plain ``ModelCheckpoint`` raises).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint

import edgetam_train.distill.module as lightning_module
from edgetam_train.callbacks.best_checkpoint import BestCheckpoint
from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.datamodule import VideoDataModule
from edgetam_train.data.datasets.val import MIoUValDataset, ShardSampler, VOSValDataset, build_val_sets, val_loaders
from edgetam_train.eval.validation import ValScores, combine_masks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root with data/sample/sa1b (3 images) and data/sample/davis (1 video of 8 frames, 3 objects)."""
    root = tmp_path_factory.mktemp("project")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(root / "data" / "sample"), "--formats", "sa1b,davis", "--num-images", "3",
                          "--num-davis-videos", "1", "--video-frames", "4"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return root


# ---------------------------------------------------------------------------------------------- metric and sampler
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        scores = ValScores()
        if rank == 0:  # one object, no mask
            scores.update(j=[1.0], f=[0.5])
        else:  # three objects and one mask
            scores.update(j=[0.0, 0.0, 0.0], f=[0.0, 0.0, 0.0], ious=[0.5])
        values = {k: float(v) for k, v in scores.compute().items()}
        local = float(scores.objects)  # compute restores the local state afterwards
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"values": values, "local_objects": local}))
    finally:
        dist.destroy_process_group()


VOS = "edgetam_train.data.datasets.vos.VOSDataset"


def test_val_scores_sum_over_ranks_with_unequal_counts(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # exact dataset means over the 4 objects: J = 1/4, F = 0.5/4 (a mean of the per-rank means would give 0.5, 0.25)
    expected = {"J": 0.25, "F": 0.125, "J&F": 0.1875, "mIoU_1click": 0.5, "objects": 4.0, "masks": 1.0,
                "skipped": 0.0}
    for r, res in enumerate(results):
        assert res["values"] == pytest.approx(expected), (r, res)
    assert [res["local_objects"] for res in results] == [1.0, 3.0]


def test_val_scores_nan_when_nothing_scored_and_reset():
    scores = ValScores()
    scores.update(ious=[1.0, 0.0])
    values = scores.compute()
    assert float(values["mIoU_1click"]) == 0.5 and values["objects"] == 0 and torch.isnan(values["J&F"])
    scores.reset()
    assert scores.masks == 0
    with pytest.raises(ValueError, match="one J and one F"):
        scores.update(j=[1.0], f=[])


@pytest.mark.parametrize("n, world", [(5, 2), (1, 3), (4, 4)])
def test_shard_sampler_disjoint_complete_equal_length(n, world):
    data = list(range(n))
    shards = [list(ShardSampler(data, world, rank)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(ShardSampler(data, world, 0)) for s in shards)
    items = [i for s in shards for i in s if i is not None]
    assert sorted(items) == data  # every item once, none repeated


def test_combine_masks_lower_id_wins():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    label = combine_masks({2: b, 1: a}, (4, 4))
    assert label[:, 0].tolist() == [1, 1, 2, 0]


# ---------------------------------------------------------------------------------------------- data
def test_val_sets_items_and_errors(project, tmp_path):
    sample = project / "data" / "sample"
    vos, miou = build_val_sets({"vos": {"root": sample / "davis", "max_frames": 5},
                                "miou": {"root": sample / "sa1b", "max_images": 2, "max_masks": 2}})
    assert isinstance(vos, VOSValDataset) and isinstance(miou, MIoUValDataset) and len(miou) == 2
    item = vos[0]
    assert item["kind"] == "vos" and item["frames"].shape == (5, 240, 320, 3) and item["frames"].dtype == np.uint8
    assert item["labels"].shape == (5, 240, 320) and {1, 2, 3} <= set(np.unique(item["labels"][0]).tolist())
    image = miou[0]
    assert image["kind"] == "miou" and image["masks"].dtype == bool and len(image["masks"]) == 2
    assert image["masks"].shape[1:] == image["image"].shape[:2]
    assert vos[None] == {"kind": "padding"}
    loaders = val_loaders([vos, miou], world=2, rank=1, num_workers=1)
    assert [len(dl) for dl in loaders] == [1, 1]
    assert next(iter(loaders[0])) == {"kind": "padding"}  # 1 video on 2 ranks: rank 1 gets the filler
    assert isinstance(next(iter(loaders[1]))["image"], np.ndarray)  # numpy kept (no tensor conversion)
    assert build_val_sets(None) == [] and build_val_sets({"vos": {"root": None}}) == []
    video_dm = VideoDataModule({"davis": {"_target_": VOS, "root": sample / "davis"}}, image_size=64, clip_len=2,
                               num_workers=0,
                               val={"vos": {"root": sample / "davis"}, "miou": {"root": None}})
    (loader,) = video_dm.val_dataloader()  # the stage-2 data module reads the same data.val
    assert isinstance(loader.dataset, VOSValDataset) and len(loader) == 1
    assert VideoDataModule({"davis": {"_target_": VOS, "root": sample / "davis"}}).val_dataloader() == []
    with pytest.raises(ValueError, match="max_frames"):
        VOSValDataset(sample / "davis", max_frames=2)
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        VOSValDataset(sample / "davis", mask_dir="Annotations/480p")
    with pytest.raises(ValueError, match="unknown keys"):
        build_val_sets({"davis": {}})


# ---------------------------------------------------------------------------------------------- validation step
def test_perfect_prediction_scores_one_through_the_validation_step(project, monkeypatch):
    from edgetam_train.distill.losses import DistillationLoss
    from edgetam_train.models.build import build_model

    module = lightning_module.DistillationModule(build_model("edgetam", image_size=256), None, DistillationLoss())
    monkeypatch.setattr(lightning_module, "track_video",
                        lambda model, frames, first: np.stack([np.where(first == 255, 0, first)] * len(frames)))
    (vos,) = build_val_sets({"vos": {"root": project / "data" / "sample" / "davis", "max_frames": 4}})
    item = vos[0]
    item["labels"] = np.stack([item["labels"][0]] * 4)  # a static video: the "tracker" above is then perfect
    module.validation_step(item, 0)
    module.validation_step({"kind": "padding"}, 1)
    values = module.val_scores.compute()
    assert values["objects"] == 3 and float(values["J&F"]) == float(values["J"]) == float(values["F"]) == 1.0
    with pytest.raises(ValueError, match="kind"):
        module.validation_step({"images": torch.zeros(1)}, 2)


def test_fit_with_validation_logs_scores_and_keeps_best_checkpoint(project):
    from edgetam_train.run.train import train

    overrides = ["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={project}",
                 f"paths.output_dir={project / 'logs' / 'val_run'}",
                 "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
                 "trainer.enable_progress_bar=false", "~callbacks.step_progress_bar", "~callbacks.mask_pictures",
                 "model.prompts.num_correction_clicks=1", "data.max_masks=2", "data.val.vos.max_frames=4",
                 "data.val.miou.max_images=2", "data.val.miou.max_masks=2"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg)
    for name in ("val/J&F", "val/J", "val/F", "val/mIoU_1click"):
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics)
    run_dir = Path(cfg.paths.output_dir)
    (csv_file,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(csv_file) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/J&F")]
    assert len(rows) == 1 and rows[0]["val/mIoU_1click"]  # one validation run (at step 2)
    best = run_dir / "checkpoints" / "best_jf_0000002.ckpt"
    assert best.is_file(), sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert all(k.startswith("student.") for k in ckpt["state_dict"])
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("BestCheckpoint")]
    assert float(state["best_model_score"]) == pytest.approx(metrics["val/J&F"])


class _ImageOnlyValidation(pl.LightningModule):
    """Logs val/mIoU_1click only (an image-only validation set)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/mIoU_1click", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("callback", [BestCheckpoint, ModelCheckpoint])
def test_best_checkpoint_without_its_metric(tmp_path, callback):
    ckpt = callback(dirpath=tmp_path, monitor="val/J&F", mode="max", save_top_k=1)
    trainer = pl.Trainer(max_steps=2, val_check_interval=1, check_val_every_n_epoch=None, logger=False,
                         callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, accelerator="cpu")
    loader = torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=2)
    if callback is ModelCheckpoint:  # what BestCheckpoint guards against
        with pytest.raises(MisconfigurationException, match="val/J&F"):
            trainer.fit(_ImageOnlyValidation(), loader, loader)
    else:
        trainer.fit(_ImageOnlyValidation(), loader, loader)
        assert trainer.global_step == 2 and list(tmp_path.iterdir()) == []
