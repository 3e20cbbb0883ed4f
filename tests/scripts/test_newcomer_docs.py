"""What a newcomer reads and runs first (issue 31): how to reach the tools after ``make train``, LiteRT in its own
venv, times that say what they assume, fine-tuning's weights and their source."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_n(target: str, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Under ``make test`` this runs inside another make: MAKELEVEL > 0 makes make print "Leaving directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    cmd = ["make", "--no-print-directory", "-n", target, *args]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_readme_first_screen_and_make_train_say_to_activate_the_venv():
    """``python train.py`` outside the venv fails with "No module named 'hydra'" and ``edgetam-predict`` is not on
    PATH: the README's first screen (its first 40 lines) and the end of ``make train`` / ``make finetune-demo`` say
    how to reach them."""
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    assert "source .venv/bin/activate" in first_screen and ".venv/bin/edgetam-predict" in first_screen
    for target in ("train", "finetune-demo"):
        last = make_n(target, "VENV=/x/.venv").strip().splitlines()[-1]
        assert "source /x/.venv/bin/activate" in last and "/x/.venv/bin/edgetam-predict" in last, last


def test_litert_has_its_own_venv_and_the_docs_point_to_it():
    """``pip install -e '.[litert]'`` into the dev venv downgrades typing-extensions, wandb and pydantic: a separate
    ``.venv-litert`` (``make venv-litert``), which docs/ondevice.md names for ``--format tflite``."""
    plan = make_n("venv-litert", "-B")  # -B: the plan even where .venv-litert is already made (it printed nothing)
    assert "python3 -m venv .venv-litert" in plan and '.venv-litert/bin/python -m pip install -q -e ".[litert]"' in plan
    assert ".venv/bin" not in plan.replace(".venv-litert/bin", "")  # never the training venv
    ondevice = (REPO / "docs" / "ondevice.md").read_text()
    tflite = next(ln for ln in ondevice.splitlines() if "--format tflite" in ln)
    assert "make venv-litert" in tflite and ".venv-litert/bin/edgetam-export" in tflite
    assert "pip install '.[litert]'" not in ondevice
    assert ".venv-litert/" in (REPO / ".gitignore").read_text().split()


def test_finetune_doc_says_where_the_weights_come_from_and_shows_todays_console(tmp_path):
    """docs/finetune.md: the download command for ``weights/edgetam.pt`` and the teacher, no ``--image-size 256``
    advice (checkpoints record their size), the step progress bar (not Lightning's ``Epoch 4:`` bar), the validation
    line as printed now; a missing ``model.init_from`` points to the download; ``edgetam-predict video --help`` does
    not say "one object"."""
    from omegaconf import OmegaConf

    from edgetam_train.predictor.cli import build_parser
    from edgetam_train.run.preflight import check_initialisation

    doc = (REPO / "docs" / "finetune.md").read_text()
    assert "python scripts/download.py weights edgetam sam2.1_hiera_base_plus --out weights" in doc
    assert "data_and_weights.md" in doc and "(`--image-size 256`" not in doc
    assert "Epoch 4:" not in doc and "train  50%|" in doc and "(0 objects" not in doc
    cfg = OmegaConf.create({"model": {"init_from": str(tmp_path / "weights" / "edgetam.pt")}})
    with pytest.raises(ValueError, match=rf"python scripts/download.py weights edgetam --out {tmp_path}/weights"):
        check_initialisation(cfg)
    help_text = build_parser().format_help()
    assert "one object" not in help_text and "track objects through a video" in help_text


def test_times_are_given_per_step_with_what_they_assume():
    """"a few minutes", "~35 s", "about 3 minutes" were 2-9x off on a busy 2-core machine: seconds per step, the
    cores and idleness they assume, and where the ETA is shown."""
    readme = (REPO / "README.md").read_text()
    finetune = (REPO / "docs" / "finetune.md").read_text()
    for text in (readme, finetune, (REPO / "Makefile").read_text()):
        assert "a few minutes" not in text and "about 3 minutes" not in text and "~35 s on" not in text
    assert "s/step" in readme and "idle" in readme and "[elapsed<remaining]" in readme
    assert "s/step" in finetune and "time left" in finetune
