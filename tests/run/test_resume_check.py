"""Safe resume (edgetam_train/run/resume_check.py): a run resumes with its stored config, with safe changes (logged and
recorded), or with changes the user accepted; any other change stops it before training, naming the keys and the
two ways out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from edgetam_train.config import CONFIG_DIR
from edgetam_train.run.resume_check import (
    CHANGES_FILE,
    STORED_CONFIG,
    ResumeConfigError,
    check_resume_config,
    classify_changes,
    config_diff,
)

REPO = Path(__file__).resolve().parents[2]


def _stored(run_dir: Path, cfg: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / STORED_CONFIG)


BASE = {"run_name": "r", "ckpt_path": "auto", "accept_config_changes": [],
        "model": {"optimizer": {"lr": 4e-4}}, "callbacks": {"mask_pictures": {"every_n_steps": 10}},
        "data": {"max_masks": 4, "num_workers": 8, "datasets": ["a", "b"]},
        "trainer": {"max_steps": 40, "val_check_interval": 20}}


def _with(**changes) -> dict:
    cfg = OmegaConf.create(BASE)
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return OmegaConf.to_container(cfg)


def test_diff_names_leaf_keys_and_absent_ones():
    diff = config_diff(BASE, _with(model__optimizer__lr=1e-3, data__new_key=1, ckpt_path="x.ckpt"))
    assert diff == {"model.optimizer.lr": (4e-4, 1e-3), "data.new_key": ("<absent>", 1)}  # ckpt_path never compared
    assert config_diff(BASE, _with(data__datasets=["a"])) == {"data.datasets": (["a", "b"], ["a"])}
    changes = classify_changes(config_diff(BASE, _with(trainer__max_steps=80, model__optimizer__lr=1e-3,
                                                       data__max_masks=2)), accepted=["model.optimizer"])
    assert set(changes.safe) == {"trainer.max_steps"} and set(changes.accepted) == {"model.optimizer.lr"}
    assert set(changes.refused) == {"data.max_masks"}


def test_identical_and_fresh_runs_pass_without_a_record(tmp_path):
    _stored(tmp_path, BASE)
    assert not check_resume_config(BASE, tmp_path, "last.ckpt", rank_zero=True)
    assert not check_resume_config(_with(model__optimizer__lr=1.0), tmp_path, None, rank_zero=True)  # not resuming
    assert not check_resume_config(BASE, tmp_path / "new_run", "last.ckpt", rank_zero=True)  # nothing stored
    assert not (tmp_path / CHANGES_FILE).exists()


def test_safe_changes_resume_and_are_recorded(tmp_path, caplog):
    _stored(tmp_path, BASE)
    with caplog.at_level("INFO"):
        new = _with(trainer__max_steps=80, data__num_workers=0, callbacks__mask_pictures__every_n_steps=5)
        changes = check_resume_config(new, tmp_path, "ck/last.ckpt", rank_zero=True)
    assert set(changes.safe) == {"trainer.max_steps", "data.num_workers",
                                 "callbacks.mask_pictures.every_n_steps"}
    assert "trainer.max_steps: 40 -> 80" in caplog.text
    (entry,) = OmegaConf.to_container(OmegaConf.load(tmp_path / CHANGES_FILE))
    assert entry["resumed_from"] == "ck/last.ckpt" and entry["safe"]["trainer.max_steps"] == {"old": 40, "new": 80}
    assert check_resume_config(_with(trainer__max_steps=80), tmp_path, "x", rank_zero=False)  # other ranks: no write
    assert len(OmegaConf.load(tmp_path / CHANGES_FILE)) == 1


def test_other_changes_stop_with_the_keys_and_both_ways_out(tmp_path):
    _stored(tmp_path, BASE)
    new = _with(model__optimizer__lr=1e-3, data__max_masks=2, trainer__max_steps=80)
    with pytest.raises(ResumeConfigError) as e:
        check_resume_config(new, tmp_path, "last.ckpt", rank_zero=True)
    msg = str(e.value)
    assert "model.optimizer.lr: 0.0004 -> 0.001" in msg and "data.max_masks: 4 -> 2" in msg
    assert "trainer.max_steps" not in msg  # safe: not a reason to stop
    assert "run_name=<a new name>" in msg and "accept_config_changes=[data.max_masks,model.optimizer.lr]" in msg
    assert not (tmp_path / CHANGES_FILE).exists()
    # accepting one key is not enough, accepting both (here by prefix) resumes and records them
    with pytest.raises(ResumeConfigError, match="data.max_masks"):
        check_resume_config({**new, "accept_config_changes": ["model.optimizer.lr"]}, tmp_path, "l", rank_zero=True)
    changes = check_resume_config({**new, "accept_config_changes": ["model.optimizer", "data.max_masks"]}, tmp_path,
                                  "last.ckpt", rank_zero=True)
    assert set(changes.accepted) == {"model.optimizer.lr", "data.max_masks"}
    (entry,) = OmegaConf.to_container(OmegaConf.load(tmp_path / CHANGES_FILE))
    assert entry["accepted"]["model.optimizer.lr"] == {"old": 4e-4, "new": 1e-3}
    with pytest.raises(ResumeConfigError, match="expected a list of config keys"):
        check_resume_config({**new, "accept_config_changes": 3}, tmp_path, "last.ckpt", rank_zero=True)


def _composed(*overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["paths.root_dir=/r", "paths.output_dir=/r/out", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("experiment", [["experiment=edgetam_distill"], ["experiment=edgetam_distill_video"],
                                        ["experiment=edgetam_distill", "debug=quickstart"]])
def test_the_documented_safe_overrides_are_safe_in_the_composed_configs(experiment):
    """Interpolations copy values into other keys (log_every_n_steps -> callbacks.train_log): every key a safe
    override touches must itself be safe, or a resume with it would be refused."""
    stored = _composed(*experiment)
    safe = ["trainer.log_every_n_steps=7", "trainer.val_check_interval=3", "data.num_workers=1",
            "callbacks.mask_pictures.every_n_steps=3", "logger=wandb",
            "callbacks.model_checkpoint.every_n_train_steps=9"]
    if "debug=quickstart" not in experiment:  # the quick start derives its warmup from max_steps: not safe there
        safe.append("trainer.max_steps=123")
    changes = classify_changes(config_diff(stored, _composed(*experiment, *safe)))
    assert changes.safe and not changes.refused, changes.refused


def test_train_py_refuses_a_changed_resume_before_building_anything(tmp_path):
    """The issue's command: resuming the quick start with another lr and max_masks stops at once, naming both."""
    project = tmp_path / "project"
    run_dir = project / "logs" / "train" / "runs" / "quickstart"
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill", "debug=quickstart", "ckpt_path=auto",
                                          f"paths.root_dir={project}", f"paths.output_dir={run_dir}"])
    _stored(run_dir, OmegaConf.to_container(cfg, resolve=True))
    (run_dir / "checkpoints").mkdir()
    # a loadable training checkpoint without weights: the config check comes before the weights are read
    torch.save({"pytorch-lightning_version": "2", "state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=edgetam_distill", "debug=quickstart",
                           "ckpt_path=auto", "model.optimizer.lr=1e-3", "data.max_masks=2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "refusing to resume run 'quickstart'" in out, out[-3000:]
    assert "model.optimizer.lr: 0.0004 -> 0.001" in out and "data.max_masks: 4 -> 2" in out
    assert "paths." not in out.split("refusing to resume", 1)[1].split("Nothing was trained", 1)[0]
    assert "instantiating" not in out  # stopped before data, model, callbacks and loggers were built


def test_accepting_an_unknown_key_is_refused_by_name(tmp_path):
    """``accept_config_changes=[bogus.key]`` accepted nothing, silently; a key only in the stored config (removed
    since) is known."""
    with pytest.raises(ResumeConfigError, match=r"accept_config_changes=\['bogus.key'\]: no such config key"):
        check_resume_config({**BASE, "accept_config_changes": ["bogus.key", "model.optimizer"]}, tmp_path, None)
    _stored(tmp_path, {**BASE, "old": {"gone": 1}})
    new = _with(model__optimizer__lr=1e-3)
    with pytest.raises(ResumeConfigError, match=r"\['model.optimizer.lrr'\]: no such config key"):
        check_resume_config({**new, "accept_config_changes": ["model.optimizer.lrr"]}, tmp_path, "l", rank_zero=True)
    changes = check_resume_config({**new, "accept_config_changes": ["model.optimizer.lr", "old.gone"]}, tmp_path,
                                  "l", rank_zero=False)
    assert set(changes.accepted) == {"model.optimizer.lr", "old.gone"}
