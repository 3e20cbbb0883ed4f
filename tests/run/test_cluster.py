"""Cluster runs: trainer=slurm (SLURMEnvironment, auto-requeue on SIGUSR1, resume from the requeue checkpoint),
hydra/launcher=slurm (submitit: the sbatch script it writes, and one of its jobs run here under a faked SLURM
allocation), one W&B run per training run across resumes, and no W&B key ever in the run directory.

SLURM itself is faked: tiny sbatch / srun / sacct / scontrol scripts on PATH and SLURM_* environment variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from edgetam_train.config import CONFIG_DIR
from edgetam_train.distributed import env_rank_is_zero
from edgetam_train.run.cluster import (
    WANDB_ID_FILE,
    assign_wandb_run_ids,
    check_no_secrets,
    newest_resume_checkpoint,
)
from edgetam_train.run.train import resolve_ckpt_path

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # looks like a W&B API key (40 hex)


def _compose(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        paths = ["paths.root_dir=/tmp/unused", "paths.output_dir=/tmp/unused/out"]
        return compose("train", overrides=paths + list(overrides), return_hydra_config=hydra_cfg)


def _fake_slurm_env(monkeypatch, ntasks_per_node: int = 1, nnodes: int = 1, **extra: str) -> None:
    """The variables srun sets for task 0 of a job of nnodes x ntasks_per_node tasks."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": str(ntasks_per_node * nnodes),
           "SLURM_NTASKS_PER_NODE": str(ntasks_per_node), "SLURM_NNODES": str(nnodes),
           "SLURM_JOB_NUM_NODES": str(nnodes), "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_slurm_bin(tmp_path: Path) -> Path:
    """sbatch (copies the script to $FAKE_SLURM_OUT, "submits" job 4242), srun (present: submitit checks for it),
    sacct (every job pending), scontrol (records its arguments in $FAKE_SLURM_OUT/scontrol.txt)."""
    bin_dir = tmp_path / "fake_slurm_bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": 'cp "$1" "$FAKE_SLURM_OUT/submitted.sbatch"\necho "Submitted batch job 4242"\n',
        "srun": "exit 1\n",
        "sacct": 'echo "JobID|State|NodeList"\necho "4242_[0-1]|PENDING|"\n',
        "scontrol": 'echo "$@" >> "$FAKE_SLURM_OUT/scontrol.txt"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


# ---------------------------------------------------------------------------------------------- ranks, resume
def test_env_rank_is_zero():
    assert env_rank_is_zero({})
    assert env_rank_is_zero({"SLURM_PROCID": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"})
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        assert not env_rank_is_zero({var: "3"}), var
    with pytest.raises(ValueError, match="SLURM_PROCID='x'"):
        env_rank_is_zero({"SLURM_PROCID": "x"})


def test_auto_resume_takes_the_newest_of_last_and_requeue_checkpoints(tmp_path):
    assert resolve_ckpt_path("auto", tmp_path) is None and newest_resume_checkpoint(tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    for path in (last, hpc):  # the smallest files that load as Lightning checkpoints (damaged ones are skipped)
        torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}}, path)
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    os.utime(hpc, ns=(2_000_000_000, 2_000_000_000))
    assert resolve_ckpt_path("auto", tmp_path) == str(hpc)    # requeued after the last step checkpoint
    os.utime(last, ns=(3_000_000_000, 3_000_000_000))
    assert resolve_ckpt_path("auto", tmp_path) == str(last)   # the run went on after it resumed from hpc_ckpt_1
    assert resolve_ckpt_path(None, tmp_path) is None


# ---------------------------------------------------------------------------------------------- trainer=slurm
def test_slurm_trainer_takes_the_allocation_and_requeues_on_sigusr1(monkeypatch):
    _fake_slurm_env(monkeypatch, ntasks_per_node=4, nnodes=2)
    cfg = _compose("experiment=edgetam_distill", "trainer=slurm")
    t = cfg.trainer
    assert (t.devices, t.num_nodes, t.precision, t.sync_batchnorm) == (4, 2, "bf16-mixed", True)
    assert t.strategy._target_.endswith("DDPStrategy") and t.max_steps == 100000  # the experiment's values stay
    # built on this GPU-less machine on the CPU: Lightning checks devices x nodes against the SLURM variables
    cfg = _compose("experiment=edgetam_distill", "trainer=slurm", "trainer.accelerator=cpu",
                   "trainer.precision=32-true", "trainer.sync_batchnorm=false")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and isinstance(trainer.strategy, DDPStrategy)
    assert env.auto_requeue is True and env.requeue_signal is signal.SIGUSR1
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)

    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.delenv("SLURM_NNODES")
    assert (_compose("trainer=slurm").trainer.devices, _compose("trainer=slurm").trainer.num_nodes) == ("auto", 1)


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SendSignal(pl.Callback):
    """Sends the requeue signal to this process after ``at_step`` steps, as SLURM does before the time limit."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_requeue_signal_saves_a_checkpoint_that_auto_resume_picks(tmp_path, monkeypatch):
    """trainer=slurm under a faked 1-task allocation: SIGUSR1 -> Lightning saves <run dir>/hpc_ckpt_1.ckpt and runs
    `scontrol requeue <job>`; ckpt_path=auto then resumes from it."""
    _fake_slurm_env(monkeypatch, SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="3")
    monkeypatch.setenv("FAKE_SLURM_OUT", str(tmp_path))
    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose("trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
                   "trainer.sync_batchnorm=false", "trainer.max_steps=4", f"trainer.default_root_dir={tmp_path}",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[_SendSignal(2)])
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)
    try:
        trainer.fit(_Regression(), train_dataloaders=data)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    assert torch.load(hpc, map_location="cpu", weights_only=True)["global_step"] == 2
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242_3"]
    assert resolve_ckpt_path("auto", tmp_path) == str(hpc)


# ---------------------------------------------------------------------------------------------- submitit launcher
def test_slurm_launcher_config_runs_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [cluster] extra is not installed")
    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2",
                   hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert launcher.additional_parameters.signal == "USR1@90" and launcher.additional_parameters.requeue is True
    assert launcher.max_num_timeout == 0 and launcher.timeout_min == 1440


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """``python train.py -m hydra/launcher=slurm ...`` (a 2-point sweep) against the fake sbatch: returns (project,
    env, sbatch text) once the array job is submitted (the launcher then waits on sacct forever; it is stopped)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [cluster] extra is not installed")
    tmp_path = tmp_path_factory.mktemp("submitit")
    project = tmp_path / "project"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(project / "data" / "sample"), "--num-images", "2", "--formats", "sa1b"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    env = {**os.environ, "PROJECT_ROOT": str(project), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "FAKE_SLURM_OUT": str(tmp_path), "PATH": f"{_fake_slurm_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=2",
           "hydra.launcher.nodes=3", "hydra.launcher.partition=gpu", "trainer=slurm", "experiment=edgetam_distill",
           "debug=quickstart", "run_name=sweep", "model.optimizer.lr=1e-4,2e-4",
           # what the job run below needs on this CPU machine
           "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.sync_batchnorm=false",
           "trainer.max_steps=1", "data.max_masks=1", "model.prompts.num_correction_clicks=1",
           "data.val.vos.root=null", "data.val.miou.root=null"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pickle = project / "logs" / "train" / "multiruns" / "sweep" / ".submitit" / "4242_0" / "4242_0_submitted.pkl"
    deadline = time.monotonic() + 120
    while not pickle.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()
    output = proc.communicate()[0]
    assert pickle.is_file(), output[-4000:]
    return project, env, (tmp_path / "submitted.sbatch").read_text()


def test_multirun_submits_an_array_job_with_one_task_per_gpu_and_the_requeue_signal(submitted):
    _, _, sbatch = submitted
    lines = set(sbatch.splitlines())
    for flag in ("--array=0-1%2", "--nodes=3", "--gpus-per-node=2", "--ntasks-per-node=2", "--signal=USR1@90",
                 "--requeue", "--partition=gpu", "--time=1440", "--cpus-per-task=10"):
        assert f"#SBATCH {flag}" in lines, f"{flag} not in\n{sbatch}"
    assert "srun" in sbatch and "submitit.core._submit" in sbatch


def test_submitted_job_trains_under_slurm_in_its_sweep_directory(submitted, tmp_path):
    """Job 0 of the array, run here as srun would start its only task (a 1-task allocation: devices from
    SLURM_NTASKS_PER_NODE): it trains with trainer=slurm and writes logs/train/multiruns/sweep/0."""
    project, env, _ = submitted
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4242",
             "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    folder = project / "logs" / "train" / "multiruns" / "sweep" / ".submitit" / "%j"
    proc = subprocess.run([sys.executable, "-m", "submitit.core._submit", str(folder)], cwd=tmp_path,
                          env={**env, **slurm}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    job_dir = project / "logs" / "train" / "multiruns" / "sweep" / "0"
    resolved = OmegaConf.load(job_dir / "config_resolved.yaml")
    assert resolved.model.optimizer.lr == 1e-4 and resolved.trainer.devices == 1
    assert resolved.trainer.plugins[0]._target_.endswith("SLURMEnvironment")
    ckpt = torch.load(job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    assert "SLURM auto-requeueing enabled" in proc.stdout + proc.stderr + (job_dir / "train.log").read_text()


# ---------------------------------------------------------------------------------------------- W&B
def test_wandb_run_id_is_kept_on_resume_and_new_on_a_fresh_start(tmp_path):
    cfg = _compose("logger=wandb", "run_name=stage 1/a")
    assert cfg.logger.wandb.id is None
    first = assign_wandb_run_ids(cfg.logger, tmp_path, "stage 1/a", resuming=False, rank_zero=True)
    assert first.startswith("stage-1-a-") and cfg.logger.wandb.id == first
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    cfg = _compose("logger=wandb")
    assert assign_wandb_run_ids(cfg.logger, tmp_path, "x", resuming=True, rank_zero=True) == first
    cfg = _compose("logger=wandb")
    second = assign_wandb_run_ids(cfg.logger, tmp_path, "x", resuming=False, rank_zero=True)
    assert second != first and (tmp_path / WANDB_ID_FILE).read_text().strip() == second
    cfg = _compose("logger=wandb")
    assert assign_wandb_run_ids(cfg.logger, tmp_path / "other", "x", resuming=False, rank_zero=False) is None
    assert cfg.logger.wandb.id is None and not (tmp_path / "other").exists()  # ranks > 0 write nothing
    cfg = _compose("logger=wandb", "logger.wandb.id=mine")
    assert assign_wandb_run_ids(cfg.logger, tmp_path, "x", resuming=False, rank_zero=True) is None
    assert cfg.logger.wandb.id == "mine"


def _train(project: Path, *overrides: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    # no inherited WANDB_* variables: a wandb run made earlier in this pytest process leaves WANDB_SERVICE set, and a
    # child connecting to that service finds the previous launch's run id still "in use"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env = {**inherited, "PROJECT_ROOT": str(project), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HYDRA_FULL_ERROR": "0", **env_extra}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wandb_resume_keeps_the_run_id_and_the_key_never_reaches_the_run_dir(tmp_path):
    project = tmp_path / "project"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                          str(project / "data" / "sample"), "--num-images", "2", "--formats", "sa1b"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wandb_env = {"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                 "WANDB_DIR": str(tmp_path / "wandb_home"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb_home"),
                 "WANDB_CACHE_DIR": str(tmp_path / "wandb_home")}
    common = ["experiment=edgetam_distill", "debug=quickstart", "logger=wandb", "logger.wandb.offline=true",
              "ckpt_path=auto", "data.max_masks=1", "model.prompts.num_correction_clicks=1",
              "callbacks.model_checkpoint.every_n_train_steps=1", "data.val.vos.root=null", "data.val.miou.root=null"]
    for steps in (1, 2):  # the second launch resumes the first from checkpoints/last.ckpt
        proc = _train(project, *common, f"trainer.max_steps={steps}", env_extra=wandb_env)
        assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = project / "logs" / "train" / "runs" / "quickstart"
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert run_id.startswith("quickstart-")
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs), runs
    assert OmegaConf.load(run_dir / "config_resolved.yaml").logger.wandb.id == run_id
    assert "Restoring states from the checkpoint path" in proc.stdout + proc.stderr  # the second launch resumed

    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.parent.name == ".hydra" for p in files)
    leaked = [str(p.relative_to(run_dir)) for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert not leaked, f"the W&B key is in {leaked}"


@pytest.mark.parametrize("override,where", [
    (f"+logger.wandb.api_key={FAKE_KEY}", "logger.wandb.api_key (a credential key)"),
    ("+logger.wandb.settings.api_key=abc", "logger.wandb.settings.api_key (a credential key)"),
    (f"logger.wandb.tags=[{FAKE_KEY}]", "holds the value of $WANDB_API_KEY"),
    ("+logger.wandb.notes=${oc.env:WANDB_API_KEY}", "reads $WANDB_API_KEY into the config"),
])
def test_a_key_in_the_config_is_refused_before_anything_is_written(tmp_path, override, where):
    proc = _train(tmp_path, "logger=wandb", override, env_extra={"WANDB_API_KEY": FAKE_KEY})
    assert proc.returncode != 0
    assert where in proc.stderr and "comes only from the environment" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "logs").exists()  # refused before Hydra made the run directory


def test_check_no_secrets_resolves_interpolations(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = OmegaConf.create({"a": {"b": "${oc.env:WANDB_API_KEY}"}, "c": [1, "ok"]})
    with pytest.raises(ValueError, match=r"config key a\.b \(holds the value of \$WANDB_API_KEY\)"):
        check_no_secrets(cfg)
    with pytest.raises(ValueError, match=r"a\.b \(reads \$WANDB_API_KEY into the config\)"):
        check_no_secrets(cfg, resolve=False)
    check_no_secrets(OmegaConf.create({"max_tokens": 3, "key_points": 2}))
    # every shipped experiment composes clean
    for experiment in ("edgetam_distill", "edgetam_distill_video"):
        check_no_secrets(_compose(f"experiment={experiment}", "logger=wandb"), resolve=False)


# ---------------------------------------------------------------------------------------------- README
def _readme_block(after: str) -> str:
    """The first ```bash block of README.md after the line containing ``after``."""
    text = (REPO / "README.md").read_text()
    return text[text.index(after):].split("```bash\n", 1)[1].split("```", 1)[0]


def _command_args(block: str, program: str) -> list[str]:
    """Arguments after ``program`` in a shell block: continuation lines joined, comments dropped."""
    lines = [ln.split("  #")[0].rstrip() for ln in block.splitlines() if not ln.lstrip().startswith("#")]
    command = " ".join(ln.rstrip("\\").strip() for ln in lines if ln.strip())
    return command.split(program, 1)[1].split()


def test_readme_sbatch_script_matches_the_configs(monkeypatch):
    block = _readme_block("## Cluster (SLURM)")
    flags = dict(ln.split()[1].lstrip("-").split("=", 1) if "=" in ln.split()[1] else (ln.split()[1].lstrip("-"), "")
                 for ln in block.splitlines() if ln.startswith("#SBATCH"))
    assert flags["ntasks-per-node"] == flags["gpus-per-node"] and flags["signal"].startswith("SIGUSR1@")
    assert "requeue" in flags
    nodes, gpus = flags["nodes"], flags["gpus-per-node"]
    _fake_slurm_env(monkeypatch, ntasks_per_node=int(gpus), nnodes=int(nodes))
    args = [a.replace("$SLURM_JOB_NUM_NODES", nodes).replace("$SLURM_NTASKS_PER_NODE", gpus)
            for a in _command_args(block, "train.py")]
    cfg = _compose(*args)
    assert cfg.trainer.plugins[0]._target_.endswith("SLURMEnvironment")
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (int(nodes), int(gpus))
    global_batch = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * int(nodes) * int(gpus)
    assert global_batch == 128  # the paper's global batch, as the README says


def test_readme_submitit_sweep_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [cluster] extra is not installed")
    block = _readme_block("Sweeps through Hydra's submitit launcher")
    args = [a for a in _command_args(block, "train.py") if a != "-m"]
    args = [a.split(",")[0] if a.startswith("model.optimizer.lr=") else a for a in args]  # one sweep point
    cfg = _compose(*args, hydra_cfg=True)
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 8
    assert cfg.hydra.launcher.nodes == 2 and cfg.trainer.plugins[0]._target_.endswith("SLURMEnvironment")


@pytest.mark.parametrize("override,where", [
    (f"+logger.wandb.key={FAKE_KEY}", "logger.wandb.key (a credential key)"),  # the name wandb.login(key=...) uses
    (f"+logger.wandb.notes={FAKE_KEY}", "shaped like a W&B API key"),  # any key: the value's shape
    (f"run_name=local-{FAKE_KEY}", "shaped like a W&B API key"),
])
def test_a_wandb_key_by_name_or_shape_is_refused_and_never_written(tmp_path, override, where):
    """No $WANDB_API_KEY to compare with: the key name ``key`` or a 40-hex value is enough. One line on stderr, exit 2,
    nothing under logs/ (Hydra's .hydra/overrides.yaml, hydra.yaml, config.yaml are written after on_run_start)."""
    proc = _train(tmp_path, "experiment=edgetam_distill", "debug=quickstart", "logger=wandb", override, env_extra={})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and where in lines[0] and "comes only from the environment" in lines[0], proc.stderr
    assert FAKE_KEY not in proc.stdout + proc.stderr  # the refusal does not print the secret either
    assert not (tmp_path / "logs").exists()


def test_secret_shapes_do_not_catch_ordinary_values():
    cfg = OmegaConf.create({"model": {"init_from": f"/hf/snapshots/{FAKE_KEY}/model.pt"}, "sort_key": 1,
                            "key_points": 2, "run_name": f"x{FAKE_KEY}"})
    check_no_secrets(cfg)
