"""The weights-initialisation refusals of ``python train.py`` (``run/preflight.check_initialisation``) and their
opt-outs: a random student trunk, stage 2 without ``model.init_from`` and a missing teacher file are refused before
anything is built, naming the key, the download command and the opt-out; ``random`` / ``none`` say it on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from edgetam_train.config import CONFIG_DIR
from edgetam_train.run import train as train_mod
from edgetam_train.run.preflight import TRUNK_KEY, check_initialisation

REPO = Path(__file__).resolve().parents[2]
DOWNLOAD = "python scripts/download.py weights repvit_m1"


def _compose(root: Path, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/out", *overrides])


@pytest.fixture()
def teacher_file(tmp_path) -> Path:
    """A file where the teacher checkpoint is expected (the preflight only needs it to exist)."""
    path = tmp_path / "weights" / "sam2.1_hiera_base_plus.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {}}, path)
    return path


def _refusal(cfg) -> str:
    with pytest.raises(ValueError) as err:
        check_initialisation(cfg)
    return str(err.value)


def test_stage1_without_trunk_weights_is_refused_with_key_download_and_opt_out(tmp_path, teacher_file):
    msg = _refusal(_compose(tmp_path, "experiment=edgetam_distill", f"model.teacher.checkpoint={teacher_file}"))
    assert TRUNK_KEY in msg and DOWNLOAD in msg and f"{TRUNK_KEY}=random" in msg
    assert "repvit_m1.dist_in1k.safetensors does not exist" in msg
    # unset (null) is refused too, with the same hints
    msg = _refusal(_compose(tmp_path, "experiment=edgetam_distill", f"model.teacher.checkpoint={teacher_file}",
                            f"{TRUNK_KEY}=null"))
    assert "is not set" in msg and DOWNLOAD in msg and f"{TRUNK_KEY}=random" in msg


def test_stage1_passes_with_the_downloaded_file_or_the_explicit_opt_out(tmp_path, teacher_file):
    trunk = tmp_path / "weights" / "repvit_m1.dist_in1k.safetensors"
    trunk.write_bytes(b"x")
    check_initialisation(_compose(tmp_path, "experiment=edgetam_distill", f"model.teacher.checkpoint={teacher_file}"))
    trunk.unlink()
    check_initialisation(_compose(tmp_path, "experiment=edgetam_distill", f"model.teacher.checkpoint={teacher_file}",
                                  f"{TRUNK_KEY}=random"))


def test_stage2_without_init_from_is_refused_and_none_opts_out(tmp_path, teacher_file):
    base = ["experiment=edgetam_distill_video", f"model.teacher.checkpoint={teacher_file}"]
    msg = _refusal(_compose(tmp_path, *base))
    assert "model.init_from is not set" in msg and "model.init_from=none" in msg
    assert "edgetam_distill/checkpoints" in msg
    # none on purpose: then the trunk must say where it starts (its own refusal), random on purpose passes
    msg = _refusal(_compose(tmp_path, *base, "model.init_from=none"))
    assert "model.init_from is not set" not in msg and TRUNK_KEY in msg
    check_initialisation(_compose(tmp_path, *base, "model.init_from=none", f"{TRUNK_KEY}=random"))
    stage1 = tmp_path / "stage1.ckpt"
    stage1.write_bytes(b"x")
    check_initialisation(_compose(tmp_path, *base, f"model.init_from={stage1}"))  # init_from replaces the trunk
    msg = _refusal(_compose(tmp_path, *base, f"model.init_from={tmp_path}/missing.ckpt"))
    assert "missing.ckpt does not exist" in msg


def test_missing_teacher_file_is_refused_with_its_download(tmp_path):
    msg = _refusal(_compose(tmp_path, "experiment=edgetam_distill", f"{TRUNK_KEY}=random"))
    assert "model.teacher.checkpoint=" in msg and "download.py weights sam2.1_hiera_base_plus" in msg


@pytest.mark.parametrize("overrides", [
    ["experiment=edgetam_distill", "debug=quickstart"],
    ["experiment=edgetam_distill_video", "debug=quickstart_video"],
    ["experiment=edgetam_distill", "debug=identity"], ["experiment=edgetam_distill_video", "debug=identity"],
    ["experiment=learning_curve"],
    ["experiment=edgetam_finetune", "debug=quickstart", "model.teacher=null"],
])
def test_debug_configs_and_experiments_opt_out_in_config(tmp_path, overrides):
    cfg = _compose(tmp_path, *overrides)
    if overrides[0] == "experiment=edgetam_finetune":  # starts from init_from: every weight, the trunk's included
        Path(cfg.model.init_from).parent.mkdir(parents=True)
        Path(cfg.model.init_from).write_bytes(b"x")
    check_initialisation(cfg)


@pytest.mark.parametrize("debug", ["fdr", "overfit", "default"])
def test_debug_default_family_opts_the_trunk_out(tmp_path, teacher_file, debug):
    check_initialisation(_compose(tmp_path, "experiment=edgetam_distill", f"debug={debug}",
                                  f"model.teacher.checkpoint={teacher_file}"))


def test_train_in_process_refuses_before_building_anything(tmp_path, teacher_file, monkeypatch):
    built = []
    monkeypatch.setattr(hydra.utils, "instantiate", lambda *a, **k: built.append(a) or pytest.fail("built"))
    cfg = _compose(tmp_path, "experiment=edgetam_distill", f"model.teacher.checkpoint={teacher_file}")
    with pytest.raises(ValueError, match="model.student.image_encoder.trunk.weights"):
        train_mod.train(cfg)
    cfg = _compose(tmp_path, "experiment=edgetam_distill_video", f"model.teacher.checkpoint={teacher_file}")
    with pytest.raises(ValueError, match="model.init_from is not set"):
        train_mod.train(cfg)
    assert not built


def test_train_py_exits_non_zero_naming_key_download_and_opt_out(tmp_path, teacher_file):
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    env.pop("WANDB_API_KEY", None)
    for experiment, needles in (("edgetam_distill", [TRUNK_KEY, DOWNLOAD, f"{TRUNK_KEY}=random"]),
                                ("edgetam_distill_video", ["model.init_from is not set", "model.init_from=none"])):
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), f"experiment={experiment}",
                               f"model.teacher.checkpoint={teacher_file}"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert all(n in out for n in needles) and "refusing to start" in out, out
        assert "instantiating" not in out  # no callback, logger or model was built
