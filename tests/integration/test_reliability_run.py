"""Hardening of a training run (docs/reliability.md): Ctrl-C saves last.ckpt, a damaged last.ckpt does not block the
relaunch, an unwritable or full run directory is found before the first step, config values are checked up front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from edgetam_train.callbacks.sigterm_checkpoint import SigtermCheckpoint
from edgetam_train.data.workers import init_worker
from edgetam_train.run.checkpoint_io import AtomicCheckpointIO
from tests.helpers.toy_module import ToyModule

REPO = Path(__file__).resolve().parents[2]


class _CtrlCAt(pl.Callback):
    """Sends this process ``times`` real SIGINTs (what Ctrl-C in the terminal sends) during the given step."""

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times = step, times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def _fit(tmp_path: Path, *extra: pl.Callback) -> Path:
    ckpt_dir = tmp_path / "checkpoints"
    trainer = Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), plugins=[AtomicCheckpointIO()],
                      callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=5),
                                 SigtermCheckpoint(ckpt_dir), *extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ToyModule(), torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=2))
    return ckpt_dir


# ------------------------------------------------------------------------------------------- 3: Ctrl-C


def test_first_ctrl_c_saves_last_checkpoint_after_the_batch(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, _CtrlCAt(2))
    assert exit_info.value.code in (None, 0)  # as on SIGTERM: saved, clean exit
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # before the first periodic save (step 5): nothing else would have been kept
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert batches["completed"] == batches["processed"] == 2  # the interrupted batch finished first
    with pytest.raises(KeyboardInterrupt):  # after fit, Ctrl-C interrupts as usual
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the Python handler runs between bytecodes
            pass
    signal.signal(signal.SIGINT, before)


def test_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, _CtrlCAt(2, times=2))
    assert exit_info.value.code == 1  # Lightning's KeyboardInterrupt shutdown
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_dataloader_workers_ignore_ctrl_c():
    """The terminal sends Ctrl-C to the whole process group: workers leave it to the training process."""
    before = signal.getsignal(signal.SIGINT)
    try:
        init_worker(0)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false"]


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_to_train_py_process_group_saves_last_checkpoint(tmp_path, ranks):
    """``python train.py`` (quick start, 1 DataLoader worker) gets Ctrl-C as from a terminal (SIGINT to its process
    group): exit status 0 and last.ckpt saved after a completed batch (DataLoader workers do not end the run). With
    2 DDP ranks (CPU, gloo) both stop after the same batch: no rank is left in a collective, no traceback."""
    project = tmp_path / "project"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(project / "data" / "sample"), "--num-images", "4", "--formats", "sa1b"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    args = ["experiment=edgetam_distill", "debug=quickstart", "trainer.max_steps=40", "run_name=ctrlc",
            "model.prompts.num_correction_clicks=1", "data.max_masks=2", "data.batch_size=1", "data.num_workers=1",
            "data.val.vos.root=null", "data.val.miou.root=null",
            "callbacks.mask_pictures=null", "callbacks.model_checkpoint.save_top_k=0", "ckpt_path=auto",
            "callbacks.model_checkpoint.every_n_train_steps=1000", *(DDP_CPU if ranks > 1 else [])]
    env = {**os.environ, "PROJECT_ROOT": str(project), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    metrics = project / "logs" / "train" / "runs" / "ctrlc" / "csv"
    try:
        import time

        end = time.monotonic() + 400
        while not any("train/loss" in p.read_text() for p in metrics.glob("version_*/metrics.csv")):
            assert proc.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Ctrl-C: saved" in text and "Traceback" not in text, text[-3000:]
    last = project / "logs" / "train" / "runs" / "ctrlc" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert 1 <= ckpt["global_step"] < 40 and batches["completed"] == batches["processed"] == ckpt["global_step"]


# ------------------------------------------------------------------------------------------- 4: damaged last.ckpt


def _lightning_ckpt(path: Path, step: int, mtime_s: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"pytorch-lightning_version": "2.6.0", "global_step": step, "state_dict": {"w": torch.zeros(1000)}},
               path)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def test_auto_resume_skips_a_truncated_last_checkpoint(tmp_path, caplog):
    from edgetam_train.run.train import resolve_ckpt_path

    step = _lightning_ckpt(tmp_path / "checkpoints" / "step_0000004.ckpt", 4, 1)
    hpc = _lightning_ckpt(tmp_path / "hpc_ckpt_1.ckpt", 5, 2)
    last = _lightning_ckpt(tmp_path / "checkpoints" / "last.ckpt", 6, 3)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a full disk or a killed copy
    os.utime(last, ns=(3 * 10**9, 3 * 10**9))
    with caplog.at_level("WARNING", logger="edgetam_train.run.cluster"):
        assert resolve_ckpt_path("auto", tmp_path) == str(hpc)
    assert f"skipping {last}" in caplog.text and "truncated" in caplog.text
    hpc.write_bytes(b"garbage")
    os.utime(hpc, ns=(2 * 10**9, 2 * 10**9))
    assert resolve_ckpt_path("auto", tmp_path) == str(step)  # the newest loadable one
    step.unlink()
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing loadable: a fresh start, said in the warnings


# ------------------------------------------------------------------------------------------- 6: messages


def test_ckpt_path_to_official_weights_or_garbage_names_the_file(tmp_path):
    from edgetam_train.run.train import resolve_ckpt_path

    official = tmp_path / "edgetam.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, official)
    with pytest.raises(ValueError) as err:
        resolve_ckpt_path(str(official), tmp_path)
    assert str(official) in str(err.value) and "model.init_from" in str(err.value)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError) as err:
        resolve_ckpt_path(str(garbage), tmp_path)
    assert str(garbage) in str(err.value) and "not a PyTorch checkpoint" in str(err.value)
    assert "weights_only=False" not in str(err.value)  # never torch's unsafe advice


# ------------------------------------------------------------------------------------------- 5: run directory


def test_unwritable_or_full_run_dir_is_found_before_the_first_step(tmp_path, monkeypatch):
    from edgetam_train.run import preflight

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError) as err:
        preflight.check_run_dir({"paths.ckpt_dir": blocker / "checkpoints"})
    assert "paths.ckpt_dir" in str(err.value) and str(blocker / "checkpoints") in str(err.value)
    assert "not writable" in str(err.value)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", read_only)  # a read-only mount (root ignores chmod here)
    with pytest.raises(PermissionError, match="paths.output_dir=.*not writable"):
        preflight.check_run_dir({"paths.output_dir": tmp_path / "run"})
    monkeypatch.undo()
    with pytest.raises(OSError) as err:
        preflight.check_run_dir({"paths.output_dir": tmp_path / "run"}, need_bytes=10**18)
    assert "disk full" in str(err.value) and "paths.output_dir" in str(err.value) and str(tmp_path / "run") in str(
        err.value)
    preflight.check_run_dir({"paths.output_dir": tmp_path / "run"}, need_bytes=1)  # fine
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # the probe file is gone


def test_checkpoint_size_estimate_counts_weights_and_adam_moments():
    from edgetam_train.run.preflight import checkpoint_bytes

    net = torch.nn.Linear(10, 10)  # 110 float32 parameters
    assert checkpoint_bytes(net) == 110 * 4 * 3


def test_enospc_during_a_checkpoint_save_says_disk_full_and_where(tmp_path, monkeypatch):
    import builtins

    import edgetam_train.models.checkpoint as ckpt_mod

    target = tmp_path / "checkpoints" / "last.ckpt"
    def full_disk(path, mode):  # every write fails with ENOSPC, as on a full filesystem
        return builtins.open("/dev/full", mode)

    monkeypatch.setattr(ckpt_mod, "open", full_disk, raising=False)
    with pytest.raises(OSError) as err:
        ckpt_mod.atomic_torch_save({"w": torch.zeros(100_000)}, target)
    assert err.value.errno == 28 and "disk full" in str(err.value) and str(target) in str(err.value)
    assert not target.exists()

    def torch_zip_error(obj, f):  # what torch's zip writer raises for a failed write (the errno is lost)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 32")

    monkeypatch.undo()
    monkeypatch.setattr(ckpt_mod.torch, "save", torch_zip_error)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: shutil_usage(free=1000))
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.atomic_torch_save({"w": torch.zeros(1)}, target)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: shutil_usage(free=10**12))
    with pytest.raises(RuntimeError, match="inline_container"):  # not a full disk: torch's error as it is
        ckpt_mod.atomic_torch_save({"w": torch.zeros(1)}, target)


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)


# ------------------------------------------------------------------------------------------- 6: config values


def _compose(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from edgetam_train.config import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=["experiment=edgetam_distill", "debug=quickstart",
                                           f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                                           *overrides])


@pytest.mark.parametrize("override, key", [
    ("model.optimizer.lr=abc", "model.optimizer.lr"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("data.batch_size=-1", "data.batch_size"),
    ("data.max_skip_rate=2", "data.max_skip_rate"),
])
def test_bad_numeric_config_is_named_before_anything_is_built(tmp_path, monkeypatch, override, key):
    import edgetam_train.run.train as train_mod

    cfg = _compose(tmp_path, override)

    def no_build(*args, **kwargs):
        raise AssertionError("built something before checking the config values")

    monkeypatch.setattr(train_mod.hydra.utils, "instantiate", no_build)
    with pytest.raises(ValueError) as err:
        train_mod.train(cfg)
    assert f"{key}=" in str(err.value) and "expected" in str(err.value)


def test_numeric_rules_accept_the_shipped_configs(tmp_path):
    from edgetam_train.run.preflight import check_numeric_config

    check_numeric_config(_compose(tmp_path))
    check_numeric_config(_compose(tmp_path, "data=video_mixture", "model=distill_video"))


def test_garbage_checkpoint_names_the_file_and_gives_no_unsafe_advice(tmp_path):
    from edgetam_train.models.checkpoint import CheckpointMismatchError, read_state_dict

    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointMismatchError) as err:
        read_state_dict(garbage)
    msg = str(err.value)
    assert str(garbage) in msg and "not a PyTorch checkpoint" in msg and "weights_only=False" not in msg
    torch.save({"model": {"w": torch.zeros(10_000)}}, garbage)
    garbage.write_bytes(garbage.read_bytes()[:3000])
    with pytest.raises(CheckpointMismatchError, match="truncated"):
        read_state_dict(garbage)


class _Pickled:
    """A Python object in a checkpoint: weights_only loading refuses it (it could run code when unpickled)."""


def test_checkpoint_with_python_objects_is_refused_without_unsafe_advice(tmp_path):
    from edgetam_train.models.checkpoint import CheckpointMismatchError, read_state_dict

    path = tmp_path / "pickled.pt"
    torch.save({"model": _Pickled()}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "unsafe" in str(err.value) and "weights_only=False" not in str(err.value)


def test_reliability_doc_names_existing_tests():
    """Every test named in docs/reliability.md exists (the table stays backed by tests)."""
    import re

    doc = (REPO / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`((?:\w+/)?test_\w+\.py)::(test_\w+)`", doc))
    assert len(named) >= 25
    missing = [f"{f}::{t}" for f, t in sorted(named)
               if not re.search(rf"^def {t}\(", (REPO / "tests" / f).read_text(), re.MULTILINE)]
    assert not missing, missing
