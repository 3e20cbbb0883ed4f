"""The recipe report (``run/recipe_report.py``): every recipe-critical setting beside the paper's / SAM 2's value,
read from the composed config, a mark where they differ (a changed GPU count shows as a global batch that is no
longer 128 / 256), written to the run directory and logged to TensorBoard / W&B."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from edgetam_train.config import CONFIG_DIR
from edgetam_train.run.recipe_report import (
    DIFFERS,
    REPORT_FILE,
    file_sha256,
    recipe_rows,
    report_recipe,
    resolve_world_size,
)


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=["paths.root_dir=/tmp/unused", "paths.output_dir=/tmp/unused/out",
                                           *overrides])


def _by_setting(cfg, world_size=None) -> dict:
    return {r.setting: r for r in recipe_rows(cfg, world_size)}


def _differing(rows: dict) -> set[str]:
    return {name for name, r in rows.items() if r.differs}


GLOBAL = "global batch (batch x accumulate x devices)"


def test_the_papers_stage1_on_eight_gpus_matches_every_reference_but_the_trunk_file_check(tmp_path):
    trunk = tmp_path / "repvit_m1.dist_in1k.safetensors"
    cfg = _compose("experiment=edgetam_distill", "trainer=ddp", "trainer.devices=8",
                   f"model.student.image_encoder.trunk.weights={trunk}")
    rows = _by_setting(cfg)
    batch, accumulate = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches  # read, never assumed
    assert rows[GLOBAL].value.startswith(f"{batch * accumulate * 8} = {batch} x {accumulate} x 8")
    # everything the config sets to the paper's value is unmarked; the teacher file is absent here
    assert _differing(rows) <= {"teacher", GLOBAL}
    assert (GLOBAL in _differing(rows)) == (batch * accumulate * 8 != 128)


def test_a_changed_gpu_count_or_lr_is_a_marked_difference():
    base = ["experiment=edgetam_distill", "trainer=ddp"]
    rows = _by_setting(_compose(*base, "trainer.devices=4", "model.optimizer.lr=1e-3"))
    assert rows[GLOBAL].differs and rows[GLOBAL].reference == 128 and "x 4 devices" in rows[GLOBAL].value
    assert rows["lr"].differs and rows["lr"].value == 1e-3 and rows["lr"].reference == 4e-4
    rows = _by_setting(_compose(*base, "trainer.devices=2", "trainer.num_nodes=2"))
    assert "x 4 devices" in rows[GLOBAL].value  # devices x nodes
    cfg = _compose(*base, "trainer.devices=8", "data.batch_size=1", "trainer.accumulate_grad_batches=16")
    assert not _by_setting(cfg)[GLOBAL].differs  # 1 x 16 x 8 = 128 again


def test_stage2_uses_stage2_references_and_marks_a_missing_init_from():
    rows = _by_setting(_compose("experiment=edgetam_distill_video", "trainer=ddp"), world_size=8)
    assert rows["lr"].reference == 3e-4 and not rows["lr"].differs
    assert rows["vision lr (image_encoder.*)"].value == 6e-5 and rows["λ_M (MSE F_M)"].reference == 1.0
    assert rows["SA-1B masks per image in stage 2"].value == 3 and "unpublished" in rows[
        "SA-1B masks per image in stage 2"].source
    assert rows["init_from"].differs and rows["student trunk init"].differs
    assert "masks per image (stage 1)" not in rows and rows[GLOBAL].reference == 256


@pytest.mark.parametrize("trainer,expected", [({"devices": 3}, 3), ({"devices": [0, 1]}, 2),
                                              ({"devices": "4", "num_nodes": 2}, 8),
                                              ({"devices": "auto", "accelerator": "cpu"}, 1)])
def test_world_size_from_the_trainer_config(trainer, expected):
    assert resolve_world_size(OmegaConf.create(trainer)) == expected


class TensorBoardLogger:  # named as Lightning's: the report dispatches on the logger's class name
    def __init__(self):
        self.texts = []
        self.experiment = self

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


def test_report_is_written_logged_and_names_the_teacher_sha(tmp_path, caplog):
    teacher = tmp_path / "sam2.1_hiera_base_plus.pt"
    teacher.write_bytes(b"weights")
    cfg = _compose("experiment=edgetam_distill", "trainer.devices=1", f"model.teacher.checkpoint={teacher}")
    tb = TensorBoardLogger()
    with caplog.at_level("INFO"):
        rows = report_recipe(cfg, [tb], tmp_path / "run", world_size=1)
    text = (Path(tmp_path / "run") / REPORT_FILE).read_text()
    assert tb.texts[0][0] == "recipe_report" and tb.texts[0][1].strip() == text.strip()
    assert f"sha256 {file_sha256(teacher)[:12]}" in text
    assert f"| {GLOBAL} | {DIFFERS} " in text  # one device: not the paper's 128
    assert any("recipe: global batch" in m for m in caplog.messages)
    assert sum(r.differs for r in rows) == text.count(f"| {DIFFERS} ")
