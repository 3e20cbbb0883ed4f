"""Distillation evidence (README "Distillation evidence"): ``scripts/distill_evidence.py`` trains a SAM 2.1-T teacher
on the learning-curve data, exports it in the official layout, and trains the EdgeTAM student with (b) and without
(a) its F16 target from the same init and data order, then tables and plots held-out 1-click mIoU.

The fast test runs every step of the script for a few steps on 4 images, with λ_F = 0 so that arm (b) must reproduce
arm (a) exactly (same init, data order and prompts: the teacher's presence changes nothing else) while its logged F16
MSE shows the teacher was live. The slow test is the documented full-size command: the teacher must beat the student
alone and the verdict must be that distillation helps (the issue's hypothesis; not yet measured at full size)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import distill_evidence
import pytest
import torch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of ``key`` in a run's (only) metrics.csv, in row order."""
    with distill_evidence.latest_metrics(run_dir).open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_every_arm_runs_and_is_paired_with_the_same_init_and_data(tmp_path, capsys):
    logs = tmp_path / "logs"
    rc = distill_evidence.main([
        "--data", str(tmp_path / "data"), "--log-dir", str(logs), "--json", str(tmp_path / "e.json"),
        "--png", str(tmp_path / "e.png"), "--train-images", "4", "--val-images", "2", "--teacher-steps", "2",
        "--steps", "4", "--seeds", "0", "--lambda-f16", "0", "data.batch_size=1",
        "callbacks.mask_pictures.every_n_steps=1000", "trainer.log_every_n_steps=1"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("distill_evidence: (b) - (a) = ") and "NO EFFECT" in line, line
    result = json.loads((tmp_path / "e.json").read_text())
    assert (tmp_path / "e.png").read_bytes()[:8] == PNG_MAGIC
    # the teacher: trained here, exported in the official layout ({"model": state_dict} with Hiera-T keys)
    teacher = result["teacher"]
    assert teacher["steps"] == 2 and 0.0 <= teacher["miou"] <= 1.0
    official = torch.load(teacher["checkpoint"], map_location="cpu", weights_only=True)
    assert any(k.startswith("image_encoder.trunk.blocks.") for k in official["model"])
    # the table reads real validations at 25 / 50 / 100 % of the steps
    runs = logs / "train" / "runs"
    for arm in ("a", "b"):
        rows = result["arms"][arm]["at"]
        assert [rows[k]["step"] for k in ("25%", "50%", "100%")] == [1, 2, 4]
        points = distill_evidence.curve(distill_evidence.latest_metrics(runs / f"distill_evidence_{arm}_seed0"))
        assert rows["100%"]["values"] == [dict(points)[4]]
    # paired: with λ_F = 0 arm (b) is arm (a) step for step, although its teacher computed an F16 MSE
    assert logged(runs / "distill_evidence_b_seed0", "train/loss") == logged(runs / "distill_evidence_a_seed0",
                                                                             "train/loss")
    assert result["arms"]["a"]["runs"]["distill_evidence_a_seed0"] == \
        result["arms"]["b"]["runs"]["distill_evidence_b_seed0"]
    assert all(v > 0 for v in logged(runs / "distill_evidence_b_seed0", "train/loss_f16"))
    assert all(v == 0 for v in logged(runs / "distill_evidence_a_seed0", "train/loss_f16"))
    assert result["arms"]["effect_b_minus_a"]["values"] == [0.0] and result["verdict"] == "NO EFFECT"


@pytest.mark.slow
@pytest.mark.timeout(16 * 3600)  # the full run: ~8 h with --jobs 2 on this machine
def test_a_trained_teacher_helps_the_student(tmp_path):
    json_path = tmp_path / "e.json"
    rc = distill_evidence.main(["--log-dir", str(tmp_path / "logs"), "--json", str(json_path),
                                "--png", str(tmp_path / "e.png"), "--jobs", "2"])
    result = json.loads(json_path.read_text())
    assert rc == 0
    # the premise: the teacher scores clearly better than the student trained alone
    assert result["teacher"]["miou"] > result["arms"]["a"]["at"]["100%"]["mean"] + 0.05, result["line"]
    assert result["verdict"] == "DISTILLATION HELPS", result["line"]
