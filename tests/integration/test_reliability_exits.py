"""How ``python train.py`` ends on bad input or a bad disk (docs/reliability.md): one line naming the key or the file,
exit status 2, no traceback; bugs keep theirs."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgetam_train.run.exits import BAD_INPUT, RefusedRun, run_or_exit

REPO = Path(__file__).resolve().parents[2]


def train_py(project: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=edgetam_distill", "debug=quickstart",
                           *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that are not log records (``[time][logger][LEVEL] - ...``)."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("[")]


def test_enospc_during_a_save_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """A full disk during a checkpoint save (torch's zip writer fails, errno lost, then our "disk full" OSError):
    one ``Error: disk full: could not write <file>`` line, exit 2; not the chained inline_container.cc traceback."""
    import edgetam_train.models.checkpoint as ckpt_mod

    target = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(ckpt_mod, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(lambda: ckpt_mod.atomic_torch_save({"w": torch.zeros(100_000)}, target))
    assert exit_info.value.code == BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: disk full: could not write") and str(target) in err[0], err


def test_bugs_keep_their_traceback_and_refusals_are_one_line(capsys):
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_or_exit(bug)

    def refused():
        raise RefusedRun("model.optimizer.lr=nan (float): must be a finite number")

    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(refused)
    assert exit_info.value.code == BAD_INPUT
    assert capsys.readouterr().err == "Error: model.optimizer.lr=nan (float): must be a finite number\n"


def test_unwritable_run_dir_is_one_line_before_hydra_opens_its_log(tmp_path):
    """``paths.log_dir`` under a file (as a read-only mount: root ignores chmod): exit 2 with one line naming the run
    directory, before Hydra's "Unable to configure handler 'file'"."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = train_py(tmp_path, f"paths.log_dir={blocker}/logs")
    assert proc.returncode == BAD_INPUT, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "hydra.run.dir" in lines[0] and "not writable" in lines[0], proc.stderr[-3000:]
    assert str(blocker) in lines[0] and "Unable to configure handler" not in proc.stderr


def test_config_refusal_from_train_py_is_one_line_exit_2(tmp_path):
    proc = train_py(tmp_path, "model.optimizer.lr=abc")
    assert proc.returncode == BAD_INPUT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr[-3000:]
    assert error_lines(proc) == ["Error: config value out of type or range: model.optimizer.lr='abc' (str): must be a "
                                 "number; expected a number > 0"], proc.stderr[-3000:]


@pytest.mark.parametrize("override, expected", [
    ("model.optimizer.lr=nan", "model.optimizer.lr=nan (float): must be a finite number"),
    ("model.optimizer.lr=inf", "model.optimizer.lr=inf (float): must be a finite number"),
    ("callbacks.mask_pictures.every_n_steps=0", "callbacks.mask_pictures.every_n_steps=0 (int): must be >= 1"),
])
def test_nan_learning_rate_and_zero_picture_interval_are_refused_by_name(tmp_path, override, expected):
    from edgetam_train.run.preflight import check_numeric_config
    from tests.integration.test_reliability_run import _compose

    with pytest.raises(ValueError) as err:
        check_numeric_config(_compose(tmp_path, override))
    assert expected in str(err.value) and "expected" in str(err.value)


def test_missing_data_root_is_one_line_exit_2(tmp_path):
    """The data module's own "not a directory (config key data.root)" error, raised while it is built."""
    proc = train_py(tmp_path)  # no data/sample under this PROJECT_ROOT
    assert proc.returncode == BAD_INPUT, proc.stderr[-3000:]
    assert error_lines(proc) == [f"Error: SA-1B root {tmp_path}/data/sample/sa1b is not a directory (config key "
                                 f"data.root)"], proc.stderr[-3000:]
