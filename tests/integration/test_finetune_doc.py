"""docs/finetune.md cannot rot: its ```bash commands (``\\`` continuations joined, comments dropped) must be ones this
test knows. Fast: every training command (and those ``make finetune-demo`` runs) composes with Hydra at toy scale,
every ``edgetam-export`` / ``-eval`` / ``-predict`` command parses with its CLI's own parser, the downloads name real
weights. Slow: all of them run in the doc's order at toy scale, in a project directory holding the doc's paths
(generated COCO data in ``my/``, DAVIS videos in ``my/val_videos``, random official weights in ``weights/``).

Toy substitutions: the placeholders of the quick-start command (``A.json``, ``DIR`` ...) become the ``my/`` files,
``sam2.1_hiera_b+`` becomes ``sam2.1_hiera_t`` (no B+ on a CPU), the documented ``best_*.ckpt`` the run's own best
checkpoint, and every training command gets :data:`TOY` (256², no teacher, 1 step of 1 image) appended.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from download import WEIGHTS  # scripts/ is on sys.path (conftest.py)
from hydra import compose, initialize_config_dir

from edgetam_train.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "finetune.md"

# every command of the doc's bash blocks, by its first words (longest first): a new one must be added here (and run)
KNOWN = {
    "make finetune-demo": "demo", "python scripts/download.py weights": "weights", "python train.py": "train",
    "edgetam-export": "export", "edgetam-predict image": "predict", "edgetam-eval miou": "miou",
    "edgetam-eval jf": "jf",
}
# appended to the doc's training commands (later overrides win)
TOY = ["model.teacher=null", "trainer.max_steps=1", "data.batch_size=1", "data.max_masks=2",
       "model.prompts.num_correction_clicks=1", "callbacks.mask_pictures=null"]
# the doc's placeholders -> the files the slow test writes; model sizes -> toy ones
PLACEHOLDERS = {"A.json": "my/instances_train.json", "B.json": "my/instances_val.json", "DIR": "my/train",
                "DIR2": "my/val", "edgetam.pt": "weights/edgetam.pt", "sam2.1_hiera_b+": "sam2.1_hiera_t",
                "weights/sam2.1_hiera_base_plus.pt": "weights/sam2.1_hiera_tiny.pt"}


def doc_commands() -> list[list[str]]:
    """The words of every command line of the doc's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def kind(words: list[str]) -> str:
    command = " ".join(words)
    for prefix, what in sorted(KNOWN.items(), key=lambda kv: -len(kv[0])):
        if command.startswith(prefix):
            return what
    raise AssertionError(f"docs/finetune.md: {command!r} is not known to this test; add it to KNOWN and run it")


def toy(words: list[str]) -> list[str]:
    """``words`` with the placeholders replaced (as whole words or ``key=value`` values); training commands get
    :data:`TOY` (and ``debug=quickstart`` where they lack it) and a ``run_name`` when they have none."""
    out = []
    for word in words:
        key, eq, value = word.rpartition("=")
        out.append(f"{key}{eq}{PLACEHOLDERS.get(value, value)}" if eq else PLACEHOLDERS.get(word, word))
    if kind(words) == "train":
        out += [] if any(w.startswith("debug=") for w in out) else ["debug=quickstart"]
        digest = hashlib.sha256(shlex.join(words).encode()).hexdigest()[:8]
        out += TOY + ([] if any(w.startswith("run_name=") for w in out) else [f"run_name=doc_{digest}"])
    return out


def compose_training(words: list[str], root: Path):
    """The config a ``python train.py OVERRIDES`` command composes (Hydra's errors for unknown keys or groups)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=[*words[words.index("train.py") + 1:], f"paths.root_dir={root}"])


def make_demo_commands() -> list[list[str]]:
    """What ``make finetune-demo`` runs (``make -n``), with the venv's paths as in the doc."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    plan = subprocess.run(["make", "--no-print-directory", "-n", "finetune-demo", "VENV=.venv"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    commands = []
    for line in plan.stdout.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].startswith(".venv/bin/"):
            commands.append(["python" if words[0] == ".venv/bin/python" else words[0].removeprefix(".venv/bin/"),
                             *words[1:]])
    return commands


def parse_cli(words: list[str]) -> None:
    """Parse an ``edgetam-*`` command with its CLI's parser (argparse exits 2 on an unknown flag or value)."""
    from edgetam_train.eval.cli import build_parser as eval_parser
    from edgetam_train.export.cli import build_parser as export_parser
    from edgetam_train.predictor.cli import build_parser as predict_parser

    parser = {"edgetam-export": export_parser, "edgetam-eval": eval_parser, "edgetam-predict": predict_parser}[words[0]]
    parser().parse_args(words[1:])


def test_every_doc_command_is_known_composes_or_parses(tmp_path):
    commands = doc_commands()
    kinds = [kind(c) for c in commands]
    for needed in ("demo", "weights", "train", "export", "predict", "miou", "jf"):
        assert needed in kinds, f"docs/finetune.md lost its {needed} command"
    assert "model.lora.rank=8" in [w for c in commands for w in c], "docs/finetune.md lost its LoRA command"
    for words in commands:
        if kind(words) == "weights":
            args = words[3:]
            names = args[:args.index("--out")] if "--out" in args else args
            assert names and all(n in WEIGHTS for n in names), names
        elif kind(words) == "train":
            cfg = compose_training(toy(words), tmp_path)
            assert cfg.trainer.max_steps == 1 and cfg.model.teacher is None
        elif kind(words) != "demo":
            parse_cli(toy(words))
    for words in make_demo_commands():
        if words[:2] == ["python", "train.py"]:
            compose_training(words, tmp_path)
        elif words[0].startswith("edgetam-"):
            parse_cli(words)


# ----------------------------------------------------------------------------------------------- slow: run them


def _project(root: Path) -> Path:
    """The doc's paths: COCO data in ``my/``, DAVIS videos in ``my/val_videos``, random official weights, a
    1000 x 750 ``photo.jpg``."""
    from PIL import Image

    from edgetam_train.data.synthetic import make_sample_data
    from tests.helpers.hf_reference import random_official_state_dict

    make_sample_data(["--out", str(root / "gen"), "--formats", "coco,davis", "--num-images", "2",
                      "--num-val-images", "2", "--max-masks", "3", "--num-davis-videos", "1", "--video-frames", "3"])
    shutil.move(root / "gen" / "coco", root / "my")
    shutil.move(root / "gen" / "davis", root / "my" / "val_videos")
    (root / "weights").mkdir()
    for ours, theirs in (("edgetam", "edgetam"), ("sam2.1_hiera_tiny", "sam2.1_hiera_tiny")):
        torch.save({"model": random_official_state_dict(theirs, seed=0)}, root / "weights" / f"{ours}.pt")
    image = Image.open(next((root / "my" / "val").glob("*.jpg"))).convert("RGB").resize((1000, 750))
    image.save(root / "photo.jpg")
    return root


def _train(project: Path, words: list[str]) -> None:
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *words[2:]], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{shlex.join(words)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _cli(words: list[str]) -> None:
    from edgetam_train.eval.cli import main as eval_main
    from edgetam_train.export.cli import main as export_main
    from edgetam_train.predictor.cli import main as predict_main

    main = {"edgetam-export": export_main, "edgetam-eval": eval_main, "edgetam-predict": predict_main}[words[0]]
    assert main(words[1:]) == 0, shlex.join(words)


@pytest.mark.slow
def test_doc_commands_run_at_toy_scale(tmp_path, monkeypatch):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    for words in doc_commands():
        what = kind(words)
        if what in ("weights", "demo"):  # no network here; the demo is the quick-start command, run below
            continue
        words = [re.sub(r"(logs/train/runs/([^/]+)/checkpoints/)best_\d+\.ckpt",
                        lambda m: m.group(1) + next(Path(m.group(1)).glob("best_*.ckpt")).name, w) for w in toy(words)]
        _train(project, words) if what == "train" else _cli(words)
    assert (project / "edgetam_finetuned.pt").is_file() and (project / "pred.npz").is_file()
    assert (project / "edgetam-finetuned-hf" / "config.json").is_file() and (project / "miou_val.csv").is_file()
    assert list((project / "edgetam-finetuned-onnx").glob("*.onnx"))
