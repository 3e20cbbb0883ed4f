"""docs/reproduce.md cannot rot: its ``bash`` blocks are read here, must be the commands this test knows, and the
training / export / mIoU commands are run at toy scale (the generated sample data, 256², 2 steps, CPU), each with the
toy overrides appended. Downloads are only checked against ``scripts/download.py``'s table (no network in tests)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from download import WEIGHTS  # scripts/ is on sys.path (conftest.py)
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reproduce.md"

# every command of the doc's bash blocks, by its first words: a new or changed command must be added here (and run)
KNOWN = {
    "python scripts/download.py weights": "weights", "python scripts/download.py sa1b": "listed",
    "python scripts/download.py archives": "listed", "python scripts/extract_sav_frames.py": "listed",
    "python train.py experiment=edgetam_distill trainer=ddp": "stage1",
    "python train.py experiment=edgetam_distill_video": "stage2",
    "python train.py experiment=edgetam_distill model/teacher=cached": "budget",
    "edgetam-export": "export", "for v in": "listed", "edgetam-eval jf": "listed", "edgetam-eval miou": "miou",
    "edgetam-cache-teacher": "cache",
}
# appended to the doc's training commands: toy scale on the sample data (later overrides win)
TOY = ["debug=quickstart", "run_name=edgetam_distill",
       "trainer=cpu", "trainer.devices=1", "trainer.max_steps=2", "data.batch_size=1",
       "trainer.accumulate_grad_batches=1", "data.max_masks=2", "model.prompts.num_correction_clicks=1",
       "data/val=none", "callbacks.mask_pictures=null", "callbacks.model_checkpoint.every_n_train_steps=2"]
TOY_VIDEO = ["debug=quickstart_video", "run_name=edgetam_distill_video",
             "trainer=cpu", "trainer.devices=1", "trainer.max_steps=2", "data.clip_len=2",
             "data.max_objects=1", "trainer.accumulate_grad_batches=1", "model.prompts.num_correction_clicks=1",
             "data/val=none", "callbacks.mask_pictures=null", "callbacks.model_checkpoint.every_n_train_steps=2"]
# the doc's trunk file (the experiment's default path) is a real timm-format file here, so the ImageNet init path runs
TRUNK_FILE = "weights/repvit_m1.dist_in1k.safetensors"


def doc_commands() -> list[str]:
    """Every command line of the doc's ```bash blocks (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def kind(command: str) -> str:
    for prefix, what in KNOWN.items():
        if command.startswith(prefix) or command + " " == prefix:
            return what
    raise AssertionError(f"docs/reproduce.md: {command!r} is not known to this test; add it to KNOWN and run it")


def test_every_doc_command_is_known_and_downloads_name_real_weights():
    commands = doc_commands()
    kinds = [kind(c) for c in commands]
    for needed in ("weights", "stage1", "stage2", "export", "miou", "cache", "budget"):
        assert needed in kinds, f"docs/reproduce.md lost its {needed} command"
    for c in commands:
        if kind(c) == "weights":
            names = [a for a in shlex.split(c)[3:] if not a.startswith("-") and a != "weights"]
            assert names and all(n in WEIGHTS for n in names), names
    assert WEIGHTS["repvit_m1"].file == Path(TRUNK_FILE).name  # the file the experiment reads


def _run(project: Path, command: str, *extra: str) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "python":
        args = [sys.executable, *args[1:]]
    elif args[0].startswith("edgetam-"):
        args = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    script = args[1] if len(args) > 1 else ""
    if script in ("train.py",) or script.startswith("scripts/"):
        args[1] = str(REPO / script)
    proc = subprocess.run([*args, *extra], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args + list(extra))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_doc_commands_run_at_toy_scale(tmp_path):
    project = tmp_path
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out",
                    str(project / "data" / "sample"), "--num-images", "4", "--formats", "sa1b,sav,davis",
                    "--video-frames", "4"], check=True, capture_output=True)
    (project / "weights").mkdir()
    save_file(timm.create_model("repvit_m1", pretrained=False).state_dict(), str(project / TRUNK_FILE))
    commands = {kind(c): c for c in doc_commands()}

    # stage 1 as documented (its trunk from the ImageNet-format file at the experiment's default path)
    proc = _run(project, commands["stage1"], *TOY, f"model.student.image_encoder.trunk.weights={TRUNK_FILE}",
                "data.root=data/sample/sa1b")
    assert "| student trunk init | repvit_m1.dist_in1k.safetensors |" in proc.stdout + proc.stderr
    stage1 = project / "logs/train/runs/edgetam_distill/checkpoints/last.ckpt"
    assert stage1.is_file()

    # stage 2 from the documented stage-1 path
    proc = _run(project, commands["stage2"], *TOY_VIDEO, f"model.init_from={stage1.relative_to(project)}")
    assert "| init_from | logs/train/runs/edgetam_distill/checkpoints/last.ckpt |" in proc.stdout + proc.stderr
    assert (project / "logs/train/runs/edgetam_distill_video/checkpoints/last.ckpt").is_file()

    _run(project, commands["export"], "--image-size", "256")
    assert (project / "weights" / "ours.pt").is_file()
    miou = commands["miou"].replace("data/sa23", "data/sample/sa1b")
    proc = _run(project, miou, "--image-size", "256")
    assert "clicks=1 mIoU=" in proc.stdout + proc.stderr
