"""The fine-tuning quick start as a user runs it (docs/finetune.md): ``python train.py experiment=edgetam_finetune
debug=quickstart data=coco ... model.init_from=edgetam.pt "model.freeze=[image_encoder.trunk]"`` on generated COCO
data, then ``edgetam-export --format official`` and ``edgetam-predict image`` on the result.

``edgetam.pt`` is a randomly initialised EdgeTAM saved in the official layout (no downloads). The official EdgeTAM
code is not installed here; the stand-in for "loads in the official code" is what that code's loader does: a strict
``load_state_dict`` of ``torch.load(path)["model"]``, checked against the official key / shape list
(``shared/reference/edgetam_state_dict.tsv``) and loaded strictly into our model.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.reference import read_layout

REPO = Path(__file__).resolve().parents[2]
NAME = "ft_quick"


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    return env


def _run(project: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(project), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Generated COCO data, a random official edgetam.pt, and the quick-start run of the issue's exact command."""
    from edgetam_train.data.synthetic import make_sample_data
    from edgetam_train.models.build import build_model
    from edgetam_train.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("finetune")
    make_sample_data(["--out", str(root / "data"), "--formats", "coco", "--num-images", "4",
                           "--num-val-images", "2", "--max-masks", "6"])
    torch.manual_seed(0)
    init = save_checkpoint(build_model("edgetam", image_size=256), root / "weights" / "edgetam.pt")
    coco = root / "data" / "coco"
    proc = _run(root, "train.py", "experiment=edgetam_finetune", "debug=quickstart", "data=coco",
                f"data.train.annotations={coco / 'instances_train.json'}", f"data.train.images={coco / 'train'}",
                f"data.val.annotations={coco / 'instances_val.json'}", f"data.val.images={coco / 'val'}",
                f"model.init_from={init}", "model.freeze=[image_encoder.trunk]", "trainer.max_steps=6",
                "logger=csv", f"run_name={NAME}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, init, proc


def test_quickstart_logs_validation_and_keeps_the_best_checkpoint(finetuned):
    root, _, proc = finetuned
    run_dir = root / "logs" / "train" / "runs" / NAME
    (metrics,) = list(run_dir.glob("csv/version_*/metrics.csv"))
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    miou = [float(r["val/mIoU_1click"]) for r in rows if r.get("val/mIoU_1click")]
    assert len(miou) == 1 and 0.0 <= miou[0] <= 1.0  # validated once, after the last step (FinalValidation)
    assert [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    best = list((run_dir / "checkpoints").glob("best_*.ckpt"))
    assert len(best) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "fine-tuning on 4 images (COCODataset)" in proc.stderr + proc.stdout


def test_export_keeps_the_frozen_trunk_bit_identical_and_loads_strictly(finetuned, tmp_path):
    from edgetam_train.export.official import load_model

    root, init, _ = finetuned
    ckpt = root / "logs" / "train" / "runs" / NAME / "checkpoints" / "last.ckpt"
    out = tmp_path / "edgetam_finetuned.pt"
    proc = _run(root, "-m", "edgetam_train.export", str(ckpt), "--format", "official", "--out", str(out),
                "--image-size", "256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout

    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert set(exported) == {"model", "edgetam_arch"}  # the official key + the recorded architecture (issue 16)
    sd, before = exported["model"], torch.load(init, map_location="cpu", weights_only=True)["model"]
    # the official loader's view: exactly the official keys, in order, with their shapes
    layout = read_layout("edgetam")
    assert list(sd) == list(layout)
    assert all(tuple(sd[k].shape) == layout[k][0] for k in sd)
    load_model(out, "edgetam", image_size=256)  # strict load into a fresh model

    trunk = [k for k in sd if k.startswith("image_encoder.trunk.")]
    stats = [k for k in trunk if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(trunk) == 676 and len(stats) == 318
    unchanged = [k for k in trunk if torch.equal(sd[k], before[k]) and sd[k].dtype == before[k].dtype]
    assert unchanged == trunk  # bit-identical, BatchNorm statistics included
    trained = [k for k in sd if k.startswith("sam_mask_decoder.") and not torch.equal(sd[k], before[k])]
    assert trained, "the mask decoder did not change: nothing was fine-tuned"


def test_finetuned_checkpoint_predicts(finetuned, tmp_path):
    root, _, _ = finetuned
    ckpt = root / "logs" / "train" / "runs" / NAME / "checkpoints" / "last.ckpt"
    image = sorted((root / "data" / "coco" / "val").glob("*.jpg"))[0]
    proc = _run(root, "-m", "edgetam_train.predictor.cli", "image", "--ckpt", str(ckpt), "--image-size", "256",
                "--image", str(image), "--points", "100,100", "--labels", "1", "--out", str(tmp_path / "pred"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pred.npz").is_file() and (tmp_path / "pred.png").is_file()


def _metrics(run_dir: Path) -> list[dict]:
    (metrics,) = list(run_dir.glob("csv/version_*/metrics.csv"))
    with open(metrics) as f:
        return list(csv.DictReader(f))


CPU_SMALL = ("trainer=cpu", "model.student.image_size=256", "model.teacher=null", "data.num_workers=0",
             "data.pin_memory=false", "model.prompts.num_correction_clicks=1", "trainer.max_steps=2", "logger=csv")


def test_videos_train_through_memory_and_validate_by_jf(finetuned):
    """``data=vos_finetune`` with ``model=distill_video``: clips through memory, J&F on the val videos, best
    checkpoint by val/J&F; no teacher; weight EMA from the command line."""
    from edgetam_train.data.synthetic import make_sample_data
    root, init, _ = finetuned
    make_sample_data(["--out", str(root / "data"), "--formats", "davis", "--num-davis-videos", "1",
                           "--video-frames", "2"])
    davis = root / "data" / "davis"
    proc = _run(root, "train.py", "experiment=edgetam_finetune", "model=distill_video", "data=vos_finetune",
                f"data.train.root={davis}", f"data.val.root={davis}", "data.val.max_frames=4", "data.clip_len=3",
                f"model.init_from={init}", "callbacks=[finetune,ema]", *CPU_SMALL, "run_name=ft_video")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = root / "logs" / "train" / "runs" / "ft_video"
    rows = _metrics(run_dir)
    assert [r for r in rows if r.get("val/J&F")] and not [r for r in rows if r.get("val/mIoU_1click")]
    (best,) = list((run_dir / "checkpoints").glob("best_*.ckpt"))
    assert "current_model_state" in torch.load(best, map_location="cpu", weights_only=True)  # the EMA ran
    assert "fine-tuning on 1 videos (VOSDataset clips of 3 frames)" in proc.stderr + proc.stdout


def test_mask_folder_trains_and_validates(finetuned):
    from edgetam_train.data.synthetic import make_sample_data
    root, init, _ = finetuned
    make_sample_data(["--out", str(root / "data"), "--formats", "mask_folder", "--num-images", "2",
                           "--num-val-images", "1", "--max-masks", "3"])
    folder = root / "data" / "mask_folder"
    proc = _run(root, "train.py", "experiment=edgetam_finetune", "data=mask_folder", f"data.train.root={folder}/train",
                f"data.val.root={folder}/val", "data.batch_size=1", "data.max_masks=2", f"model.init_from={init}",
                "callbacks=[finetune,early_stopping]", *CPU_SMALL, "run_name=ft_masks")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r for r in _metrics(root / "logs" / "train" / "runs" / "ft_masks") if r.get("val/mIoU_1click")]
    assert "EarlyStopping" in proc.stderr + proc.stdout  # instantiated, watching val/mIoU_1click
