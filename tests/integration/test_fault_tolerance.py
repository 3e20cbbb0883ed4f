"""Fault tolerance (README "Fault tolerance"):

- step-exact resume: ``python train.py`` killed with SIGKILL mid-epoch and re-launched with the same ``run_name``
  logs the same losses for the remaining steps as an uninterrupted run (data position, prompts, optimizer, schedule);
- SIGTERM saves ``last.ckpt`` and exits with status 0; the re-launch continues at the next step, step-exact too;
- checkpoint files are written atomically: a save that fails or is killed midway leaves the previous one loadable;
- a non-finite loss skips the step (no update, all ranks together), is counted in ``train/nonfinite_steps``, and
  ``model.max_consecutive_nonfinite`` skips in a row stop the run with an error naming the step and the terms.

The ``train.py`` runs use the stage-1 quick start at its smallest: 4 sample images of 256 px, batch 1 (4 steps per
epoch), 2 masks, 1 correction click, random SAM 2.1-T teacher, one CPU thread, deterministic algorithms.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from edgetam_train.callbacks.batch_seed import seed_batch
from edgetam_train.callbacks.sigterm_checkpoint import SigtermCheckpoint
from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.datasets.fixed_batch import FixedBatch
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.mixture import MixtureBatchSampler, MixtureDataset
from edgetam_train.data.samplers import EpochDistributedSampler, EpochShuffleSampler
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.nonfinite import NonFiniteLossError
from edgetam_train.run.checkpoint_io import AtomicCheckpointIO
from tests.helpers.nonfinite_injector import NonFiniteInjector
from tests.helpers.toy_module import ToyModule

REPO = Path(__file__).resolve().parents[2]
STEPS = 7  # 4 batches per epoch: the runs cross into epoch 1
SMALL = ["experiment=edgetam_distill", "debug=quickstart", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
         "callbacks.model_checkpoint.save_top_k=0",  # only last.ckpt: one write per checkpoint
         "model.prompts.num_correction_clicks=1", "data.max_masks=2", "data.batch_size=1",
         "data.val.vos.root=null", "data.val.miou.root=null",
         "callbacks.mask_pictures=null", "deterministic=true", "ckpt_path=auto"]


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root with 4 generated SA-1B sample images under data/sample/sa1b."""
    root = tmp_path_factory.mktemp("project")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(root / "data" / "sample"), "--num-images", "4", "--formats", "sa1b"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return root


def start_train(project: Path, log: Path, *overrides: str) -> subprocess.Popen:
    """``python train.py <overrides>`` in the background, output to ``log``, every path under ``project``."""
    env = {**os.environ, "PROJECT_ROOT": str(project), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "HYDRA_FULL_ERROR": "1"}
    env.pop("WANDB_API_KEY", None)
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"train.py did not finish in {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for_writes(path: Path, count: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Return once ``path`` has been (re)written ``count`` times (each atomic write is a new file: a new (inode, mtime);
    an inode number alone may be reused)."""
    seen: set[tuple[int, int]] = set()
    end = time.monotonic() + timeout
    while len(seen) < count:
        assert proc.poll() is None, f"train.py ended (status {proc.returncode}) before {count} writes of {path}"
        assert time.monotonic() < end, f"{path} written {len(seen)} of {count} times in {timeout} s"
        try:
            st = path.stat()
            seen.add((st.st_ino, st.st_mtime_ns))
        except FileNotFoundError:
            pass
        time.sleep(0.01)


def losses(run_dir: Path) -> dict[int, dict[int, float]]:
    """{csv version: {step: train/loss}} of a run directory."""
    out = {}
    for metrics in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(metrics) as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
        out[int(metrics.parent.name.split("_")[1])] = {int(r["step"]): float(r["train/loss"]) for r in rows}
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


class Reference:
    """The uninterrupted run, started in the background (one thread: it runs beside the first interrupted run);
    :meth:`losses` waits for it and returns {step: train/loss}."""

    def __init__(self, project: Path, log: Path) -> None:
        self.project, self.log, self._losses = project, log, None
        self.proc = start_train(project, log, *SMALL, "run_name=reference",
                                "callbacks.model_checkpoint.every_n_train_steps=4")

    def losses(self) -> dict[int, float]:
        if self._losses is None:
            assert finish(self.proc, self.log) == 0, self.log.read_text()[-4000:]
            (steps,) = losses(self.project / "logs" / "train" / "runs" / "reference").values()
            assert sorted(steps) == list(range(STEPS)), steps
            self._losses = steps
        return self._losses


@pytest.fixture(scope="module")
def reference(project, tmp_path_factory):
    ref = Reference(project, tmp_path_factory.mktemp("logs") / "reference.log")
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def assert_same_losses(resumed: dict[int, float], reference: Reference, first: int) -> None:
    reference = reference.losses()
    assert sorted(resumed) == list(range(first, STEPS)), resumed
    diffs = {s: abs(resumed[s] - reference[s]) / abs(reference[s]) for s in resumed}
    assert max(diffs.values()) <= 1e-6, {s: (resumed[s], reference[s]) for s in resumed}


# ---------------------------------------------------------------------------------------------- resume
def test_sigkill_mid_epoch_resume_is_step_exact(project, reference, tmp_path):
    """SIGKILL after the checkpoint of step 5 (epoch 1, batch 1): the re-launch with the same run_name resumes from
    last.ckpt and steps 5.. log the uninterrupted run's losses (the same batches, prompts and weights)."""
    run_dir = project / "logs" / "train" / "runs" / "killed"
    args = [*SMALL, "run_name=killed", "callbacks.model_checkpoint.every_n_train_steps=1"]
    proc = start_train(project, tmp_path / "first.log", *args)
    wait_for_writes(run_dir / "checkpoints" / "last.ckpt", 5, proc)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc, tmp_path / "first.log") == -signal.SIGKILL
    k = load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 5 <= k < STEPS, k

    log = tmp_path / "second.log"
    assert finish(start_train(project, log, *args), log) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in text
    assert f"training data resumes at epoch 1 after {k - 4} batches" in text, text[-3000:]
    runs = losses(run_dir)
    assert_same_losses(runs[max(runs)], reference, first=k)


def test_sigterm_saves_last_checkpoint_exits_cleanly_and_resumes(project, reference, tmp_path):
    """SIGTERM after step 2's periodic checkpoint: Lightning finishes the step, SigtermCheckpoint saves last.ckpt
    (the state after the step, not ModelCheckpoint's mid-step one), the process exits 0; the re-launch continues at
    the next step with the uninterrupted run's losses."""
    run_dir = project / "logs" / "train" / "runs" / "terminated"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [*SMALL, "run_name=terminated", "callbacks.model_checkpoint.every_n_train_steps=2"]
    log = tmp_path / "first.log"
    proc = start_train(project, log, *args)
    wait_for_writes(last, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == 0, log.read_text()[-4000:]
    assert "SIGTERM: saved" in log.read_text()
    ckpt = load(last)
    k = ckpt["global_step"]
    assert 2 <= k < STEPS, k
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert batches["completed"] == batches["processed"] == k  # saved after the batch completed: SigtermCheckpoint
    assert not list(last.parent.glob("*.tmp")) and sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    log2 = tmp_path / "second.log"
    assert finish(start_train(project, log2, *args), log2) == 0, log2.read_text()[-4000:]
    runs = losses(run_dir)
    assert_same_losses(runs[max(runs)], reference, first=k)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt beside it
    assert load(last)["global_step"] == STEPS  # overwritten: by the periodic saves, then the final step (7, off the
    # 2-step schedule: callbacks.model_checkpoint writes it at the end of training)


class _SigtermAt(pl.Callback):
    """Sends this process a real SIGTERM at the end of the given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_before_any_periodic_checkpoint_becomes_modelcheckpoints_last(tmp_path):
    """SIGTERM at step 2, before ModelCheckpoint ever saved: the SIGTERM checkpoint is last.ckpt, ModelCheckpoint's
    saved state points at it, so after resuming ModelCheckpoint overwrites last.ckpt (no last-v1.ckpt beside it,
    which ckpt_path=auto would never pick)."""
    ckpt_dir = tmp_path / "checkpoints"
    loader = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=2)

    def trainer(*extra) -> Trainer:
        return Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=str(tmp_path), plugins=[AtomicCheckpointIO()],
                       callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                                  every_n_train_steps=3),  # first save at step 3
                                  SigtermCheckpoint(ckpt_dir), *extra])

    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("ignore")
        trainer(_SigtermAt(2)).fit(ToyModule(), loader)
    assert exit_info.value.code in (None, 0)  # Lightning's SIGTERMException: exit status 0
    ckpt = load(ckpt_dir / "last.ckpt")
    assert ckpt["global_step"] == 2
    (mc_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert mc_state["last_model_path"] == str(ckpt_dir / "last.ckpt")

    resumed = trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.fit(ToyModule(), loader, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]
    assert load(ckpt_dir / "last.ckpt")["global_step"] == 6


def _tail(sampler, epoch: int, skip: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)[skip:]


@pytest.mark.parametrize("kind", ["shuffle", "distributed", "mixture"])
def test_samplers_resume_at_a_position(kind):
    """resume_at(epoch, skip) continues that epoch's order after ``skip`` items, once; a pending position of another
    epoch is dropped."""
    data = list(range(20))
    if kind == "shuffle":
        make = lambda: EpochShuffleSampler(data, seed=3)  # noqa: E731
    elif kind == "distributed":
        make = lambda: EpochDistributedSampler(data, num_replicas=2, rank=1, seed=3)  # noqa: E731
    else:
        mixture = MixtureDataset({"a": list(range(12)), "b": list(range(8))})
        make = lambda: MixtureBatchSampler(mixture, {"a": 1.0, "b": 1.0}, batch_size=2, num_replicas=2,  # noqa: E731
                                           rank=0, seed=3)
    sampler = make()
    sampler.resume_at(2, 3)
    assert list(sampler) == _tail(make(), 2, 3) and len(list(sampler)) == len(_tail(make(), 2, 0))  # once
    assert _tail(make(), 2, 3) != _tail(make(), 1, 3)  # the epoch matters
    sampler.resume_at(2, 3)
    sampler.set_epoch(3)  # Lightning moved on to another epoch: nothing skipped
    assert list(sampler) == _tail(make(), 3, 0)


def test_batch_seed_depends_only_on_seed_rank_epoch_batch():
    def draws(*key):
        seed_batch(*key)
        return torch.rand(3).tolist(), float(np.random.rand()), __import__("random").random()

    torch.rand(100)  # state before the call does not matter
    first = draws(0, 0, 1, 5)
    assert draws(0, 0, 1, 5) == first
    for other in [(1, 0, 1, 5), (0, 1, 1, 5), (0, 0, 2, 5), (0, 0, 1, 6)]:
        assert draws(*other)[0] != first[0], other


# ---------------------------------------------------------------------------------------------- atomic checkpoints
class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_failed_checkpoint_save_keeps_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.arange(4.0)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000), "bad": _Unpicklable()}, path)
    ckpt = io.load_checkpoint(path)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # the temporary file is removed


KILLED_SAVE = """
import io, sys, time, torch
import edgetam_train.run.checkpoint_io as cio
path = sys.argv[1]
plugin = cio.AtomicCheckpointIO()
plugin.save_checkpoint({"global_step": 1, "w": torch.arange(4.0)}, path)
real_save = torch.save
def half_then_hang(obj, f):  # writes half of the serialised checkpoint, then stalls: killed mid-write
    buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
    f.write(data[: len(data) // 2]); f.flush()
    print("HALF WRITTEN", flush=True); time.sleep(120)
torch.save = half_then_hang  # the torch.save atomic_torch_save (models/checkpoint.py) calls
plugin.save_checkpoint({"global_step": 2, "w": torch.randn(1 << 16)}, path)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_file(tmp_path):
    """A process SIGKILLed while it writes the next checkpoint: ``last.ckpt`` is still the previous, complete one; the
    half-written bytes are in ``last.ckpt.tmp`` (not loadable: what a direct write would have left in last.ckpt)."""
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "HALF WRITTEN"
    finally:
        proc.kill()
        proc.wait()
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.arange(4.0))
    partial = path.with_name("last.ckpt.tmp")
    assert partial.stat().st_size > 0
    with pytest.raises(Exception):
        torch.load(partial, weights_only=True)


@pytest.mark.parametrize("option", ["default", "cpu", "gpu", "ddp", "slurm"])
def test_every_trainer_option_writes_checkpoints_atomically(option, monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                          f"trainer={option}"])
    targets = [p["_target_"] for p in cfg.trainer.plugins]
    assert "edgetam_train.run.checkpoint_io.AtomicCheckpointIO" in targets, targets
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"  # Lightning's own: no setting of ours in the trainer
    if option in ("default", "cpu"):
        trainer = instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------------------------------------- non-finite loss
@pytest.fixture(scope="module")
def nan_setup(project):
    """(module factory, one-batch loader): the quick-start DistillationModule (no correction clicks) and a fixed
    256-px image batch."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={project}",
                                          "model.prompts.num_correction_clicks=0",
                                          "trainer.max_steps=6"])  # the schedule fits 6 steps
    ds = SA1BDataset(project / "data" / "sample" / "sa1b", image_size=256, max_masks=2, hflip_p=0.0)
    batch = collate_sa1b([ds[0]])

    assert cfg.model.max_consecutive_nonfinite == 5  # configs/model/distill_image.yaml

    def make(max_consecutive: int | None = 5) -> DistillationModule:
        torch.manual_seed(0)
        return instantiate(cfg.model, _convert_="partial", max_consecutive_nonfinite=max_consecutive)

    return make, torch.utils.data.DataLoader(FixedBatch(batch, 6), batch_size=None)


def _fit(module, loader, tmp_path: Path, injector: NonFiniteInjector) -> pl.Trainer:
    trainer = Trainer(max_steps=6, accelerator="cpu", devices=1, precision="32-true", gradient_clip_val=0.1,
                      log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                      logger=CSVLogger(str(tmp_path), name="csv", version=0), default_root_dir=str(tmp_path),
                      callbacks=[injector, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0,
                                                           every_n_train_steps=1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_nonfinite_loss_skips_the_step_and_is_counted(nan_setup, tmp_path, caplog):
    """NaN at steps 1 and 3 (never 2 in a row, limit 2): those steps leave every parameter and the optimizer state
    untouched (with gradient clipping on), the others update; train/nonfinite_steps counts 0,1,1,2,2,2 and the count
    is saved in the checkpoint."""
    make, loader = nan_setup
    module, injector = make(max_consecutive=2), NonFiniteInjector(steps=[1, 3])
    trainer = _fit(module, loader, tmp_path, injector)
    assert trainer.global_step == 6
    digest = {r["step"]: r["params"] for r in injector.records}  # step -1: before training
    for step in range(6):
        changed = digest[step] != digest[step - 1]
        assert changed == (step not in (1, 3)), (step, changed)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/nonfinite_steps")]
    assert [float(r["train/nonfinite_steps"]) for r in rows] == [0, 1, 1, 2, 2, 2]
    assert [r["train/loss"] == "nan" for r in rows] == [False, True, False, True, False, False]
    assert load(tmp_path / "ckpt" / "last.ckpt")["nonfinite_steps"] == {"total": 2, "consecutive": 0}
    assert "non-finite loss at global step 3" in caplog.text and "step skipped" in caplog.text


def test_consecutive_nonfinite_losses_stop_the_run(nan_setup, tmp_path):
    make, loader = nan_setup
    module = make(max_consecutive=2)
    with pytest.raises(NonFiniteLossError) as err:
        _fit(module, loader, tmp_path, NonFiniteInjector(steps=[2, 3, 4]))
    msg = str(err.value)
    assert "global step 3" in msg and "model.max_consecutive_nonfinite=2" in msg, msg
    for term in ("loss=nan", "loss_task=nan", "loss_f16=nan", "loss_mask=nan", "loss_dice=nan", "loss_iou=nan"):
        assert term in msg, msg


def test_nonfinite_loss_on_one_ddp_rank_skips_the_step_on_both(project, tmp_path):
    """trainer=ddp on 2 CPU processes, NaN on rank 0 only at step 2: both ranks skip it (one all-reduced flag), so
    neither updates and the replicas stay identical; every other step updates both. No hang, exit status 0."""
    out = tmp_path / "records"
    log = tmp_path / "ddp.log"
    proc = start_train(project, log, *[a for a in SMALL if not a.startswith("trainer.max_steps")],
                       "run_name=ddp_nan", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                       "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.max_steps=4",
                       "callbacks.model_checkpoint.every_n_train_steps=100",
                       "+callbacks.nan._target_=tests.helpers.nonfinite_injector.NonFiniteInjector",
                       "+callbacks.nan.steps=[2]", "+callbacks.nan.ranks=[0]", f"+callbacks.nan.out_dir={out}")
    assert finish(proc, log) == 0, log.read_text()[-4000:]
    ranks = [{r["step"]: r["params"] for r in json.loads((out / f"rank{i}.json").read_text())} for i in (0, 1)]
    assert ranks[0] == ranks[1]  # identical replicas after every step
    assert [ranks[0][s] != ranks[0][s - 1] for s in range(4)] == [True, True, False, True]
    (steps,) = losses(project / "logs" / "train" / "runs" / "ddp_nan").values()
    assert len(steps) == 4


def test_max_consecutive_nonfinite_is_checked_naming_the_key(nan_setup):
    make, _ = nan_setup
    for bad in (0, -3):
        with pytest.raises(Exception, match=rf"model.max_consecutive_nonfinite={bad}: expected an integer >= 1"):
            make(max_consecutive=bad)
    assert make(max_consecutive=None).max_consecutive_nonfinite is None  # null: skip forever, never stop
