"""Learning evidence (README "Learning evidence"): ``scripts/learning_curve.py`` trains the EdgeTAM student from
scratch (``experiment=learning_curve``) on generated sample-style images and scores 1-click mIoU on held-out images of
the same generator, from step 0 (``edgetam_train/callbacks/initial_validation.py``) on.

The slow test is the documented command with its outputs in a temporary directory (~42 min on 1 CPU thread): the
held-out mIoU must rise from <= 0.2 at step 0 to >= 0.5 at the last step. The fast test runs the same script for 2
steps on 4 images: the plumbing (data, validation at step 0 and at the end, metrics, PNG, the FAIL verdict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[2]

import learning_curve  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(tmp_path: Path, *extra: str) -> tuple[int, list[tuple[int, float]], Path]:
    """The script with its outputs under ``tmp_path``; (exit status, (step, mIoU) points, PNG path)."""
    png = tmp_path / "learning_curve.png"
    rc = learning_curve.main(["--data", str(tmp_path / "data"), "--log-dir", str(tmp_path / "logs"), "--png", str(png),
                              *extra])
    metrics = learning_curve.latest_metrics(tmp_path / "logs" / "train" / "runs" / "learning_curve")
    return rc, learning_curve.curve(metrics), png


def test_short_run_validates_at_step_0_and_at_the_end_and_draws_the_curve(tmp_path, capsys):
    rc, points, png = run(tmp_path, "--train-images", "4", "--val-images", "2", "trainer.max_steps=2",
                          "trainer.val_check_interval=2", "data.batch_size=1",
                          "callbacks.mask_pictures.every_n_steps=1000")
    assert [step for step, _ in points] == [0, 2]  # the untrained weights are scored before the first step
    assert all(0.0 <= v <= 1.0 for _, v in points)
    assert rc == 1 and "FAIL" in capsys.readouterr().out  # 2 steps do not reach 0.5: the verdict says so
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert len(list((tmp_path / "data" / "val" / "sa1b").glob("*.json"))) == 2  # the held-out set: seed 1
    train_jpgs = {p.name: p.read_bytes() for p in (tmp_path / "data" / "train" / "sa1b").glob("*.jpg")}
    val_jpgs = {p.name: p.read_bytes() for p in (tmp_path / "data" / "val" / "sa1b").glob("*.jpg")}
    assert all(train_jpgs[name] != data for name, data in val_jpgs.items())  # other images, not copies
    for record in (tmp_path / "data").glob("*/sa1b/*.json"):  # --min-area-frac 0.01: no annotated slivers
        data = json.loads(record.read_text())
        image_area = data["image"]["width"] * data["image"]["height"]
        assert 3 <= len(data["annotations"]) <= 6, record
        assert all(mask_utils.area(a["segmentation"]) >= 0.01 * image_area for a in data["annotations"]), record


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)  # 3000 steps: ~42 min on 1 idle thread; pyproject's 900 s would stop it
def test_student_learns_from_scratch_on_held_out_images(tmp_path):
    rc, points, png = run(tmp_path)
    (first_step, first), (last_step, last) = points[0], points[-1]
    assert first_step == 0 and first <= learning_curve.FIRST_MAX, points
    steps = OmegaConf.load(REPO / "configs" / "experiment" / "learning_curve.yaml").trainer.max_steps
    assert last_step == steps and last >= learning_curve.LAST_MIN, points
    assert rc == 0 and png.read_bytes()[:8] == PNG_MAGIC
