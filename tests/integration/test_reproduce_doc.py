"""docs/reproduce.md cannot rot: its ``bash`` blocks are read here and must be the commands this test knows. Every
command that can run offline is run at toy scale (the generated sample data laid out at the doc's paths, 256², 2
steps, CPU) as the doc spells it, with toy overrides appended to the single commands (later ones win); the shell lines
(``for`` loops, ``mv``) run verbatim in bash with ``edgetam-*`` on PATH. Downloads cannot run without a network: their
arguments are parsed by ``scripts/download.py``'s parser and their ``--select`` globs and output folders checked
against the archive names. The global batch of every training command (and of the batch alternative the text gives)
is the paper's, by the recipe report's own arithmetic."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import download  # scripts/ is on sys.path (pyproject pytest pythonpath)
import extract_sav_frames
import make_random_checkpoint
import pytest
import timm
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.run.recipe_report import recipe_rows

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reproduce.md"

# every command of the doc's bash blocks, by its first words: a new or changed command must be added here (and run)
KNOWN = {
    "python scripts/download.py weights": "weights", "python scripts/download.py sa1b": "download",
    "python scripts/download.py archives": "download", "python scripts/extract_sav_frames.py": "extract_sav",
    "mv data/davis/": "davis_move",
    "python train.py experiment=edgetam_distill trainer=ddp": "stage1",
    "python train.py experiment=edgetam_distill_video": "stage2",
    "python train.py experiment=edgetam_distill model/teacher=cached": "budget",
    "edgetam-export": "export", "for v in data/sav_eval/": "sav_predict",
    "edgetam-eval jf --gt data/sav_eval/": "sav_jf",
    "for n in $(cat data/davis/": "davis_predict", "edgetam-eval jf --gt data/davis/": "davis_jf",
    "edgetam-eval miou": "miou", "edgetam-cache-teacher": "cache",
}
OFFLINE = ("weights", "extract_sav", "davis_move", "stage1", "stage2", "budget", "export", "sav_predict", "sav_jf",
           "davis_predict", "davis_jf", "miou", "cache")
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
# the doc's teacher file: a random SAM 2.1-T in the official layout (the toy cache and budget run use -T at 256²)
TEACHER_FILE = "weights/sam2.1_hiera_base_plus.pt"
GLOBAL = "global batch (batch x accumulate x devices)"
# names of the archives the doc's links files list (SA-1B: sa_000000.tar ... sa_000999.tar)
ARCHIVES = {"sa1b_links.txt": [f"sa_{i:06d}.tar" for i in range(1000)],
            "sav_links.txt": [f"sav_{i:03d}.tar" for i in range(56)] + ["sav_val.tar", "sav_test.tar"],
            "davis_urls.txt": ["DAVIS-2017-trainval-480p.zip"]}


def doc_commands() -> list[str]:
    """Every command line of the doc's ```bash blocks (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def kind(command: str) -> str:
    for prefix, what in KNOWN.items():
        if command.startswith(prefix):
            return what
    raise AssertionError(f"docs/reproduce.md: {command!r} is not known to this test; add it to KNOWN and run it")


def test_every_doc_command_is_known_and_downloads_name_real_weights():
    commands = doc_commands()
    kinds = [kind(c) for c in commands]
    for needed in OFFLINE:
        assert kinds.count(needed) == 1, f"docs/reproduce.md: {kinds.count(needed)} {needed} commands, expected 1"
    for c in commands:
        if kind(c) == "weights":
            names = [a for a in shlex.split(c)[3:] if not a.startswith("-") and a != "weights"]
            assert names and all(n in download.WEIGHTS for n in names), names
    assert download.WEIGHTS["repvit_m1"].file == Path(TRUNK_FILE).name  # the file the experiment reads
    assert download.WEIGHTS["sam2.1_hiera_base_plus"].file == Path(TEACHER_FILE).name


def test_download_commands_parse_and_land_where_the_later_commands_read():
    """Each download parses; its --select globs pick the archives the doc means (the SA-1B table's globs: 1000 / 100 /
    10 tars); each archive extracts to OUT/<archive name>/, the folder the doc's later commands start from."""
    commands = doc_commands()
    later = "\n".join(c for c in commands if kind(c) not in ("download", "weights"))
    for c in commands:
        if kind(c) in ("download", "weights", "extract_sav"):
            script = download if kind(c) != "extract_sav" else extract_sav_frames
            args = script.build_parser().parse_args(shlex.split(c)[2:])
        if kind(c) != "download":
            continue
        chosen = download.select([(n, f"https://x/{n}") for n in ARCHIVES[args.links.name]], args.select, args.limit)
        names = [n for n, _ in chosen]
        if "sav_0*.tar" in args.select:
            assert names == ARCHIVES["sav_links.txt"][:56]  # the training tars, not val / test
        elif args.select and "sa_*.tar" not in args.select:
            assert names == args.select, names  # sav_val.tar, sav_test.tar: that one archive
        stem = download.archive_stem(names[0])
        if stem in ("sav_val", "DAVIS-2017-trainval-480p"):  # read by section 5 (sav_test: "the same with sav_test")
            assert f"{args.out}/{stem}/" in later, f"nothing in the doc reads {args.out}/{stem}/"
    table = DOC.read_text().split("| SA-1B | tars |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (full|10 %|1 %) \| [\d,]+ \(`'([^']+)'`\)", table, flags=re.M)
    counts = {row: len(download.select([(n, "") for n in ARCHIVES["sa1b_links.txt"]], [glob], None))
              for row, glob in rows}
    assert counts == {"full": 1000, "10 %": 100, "1 %": 10}, counts


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=["paths.root_dir=/tmp/unused", "paths.output_dir=/tmp/unused/out",
                                           *overrides])


def _global_batch(overrides: list[str]):
    row = {r.setting: r for r in recipe_rows(_compose(overrides))}[GLOBAL]
    return row.value, row.differs


def test_documented_commands_train_with_the_papers_global_batch():
    """Stage 1 on 8 GPUs and the one-GPU budget run: 128; stage 2: 256; the batch alternative the budget text offers
    (a backticked override list with accumulate_grad_batches): 128 as well. The recipe report's arithmetic."""
    commands = {kind(c): c for c in doc_commands()}
    for what, expected in (("stage1", "128 = 1 x 16 x 8 devices"), ("stage2", None), ("budget", "128 = 1 x 128 x 1")):
        value, differs = _global_batch(shlex.split(commands[what])[2:])
        assert not differs and value.startswith("256 = " if what == "stage2" else expected), (what, value)
    budget_text = re.sub(r"```.*?```", "", DOC.read_text().split("## 6.", 1)[1], flags=re.S)  # the prose
    alternatives = [a for a in re.findall(r"`([^`]+)`", budget_text) if "accumulate_grad_batches=" in a]
    assert alternatives, "section 6 lost its batch alternative"
    for alternative in alternatives:
        value, differs = _global_batch(shlex.split(commands["budget"])[2:] + alternative.split())
        assert not differs and value.startswith("128 = "), (alternative, value)


# ----------------------------------------------------------------------------------------------- toy-scale run

def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "PROJECT_ROOT": str(project), "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{project / '.bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WANDB_API_KEY", None)
    return env


def _console_scripts() -> dict[str, str]:
    """{``edgetam-*``: module} of pyproject.toml's [project.scripts] (run as ``python -m module``, this checkout)."""
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.]+):main"', section, flags=re.M))


def _install_scripts(project: Path) -> None:
    """``edgetam-*`` on the shell's PATH as wrappers running this checkout's modules."""
    (project / ".bin").mkdir()
    for name, module in _console_scripts().items():
        wrapper = project / ".bin" / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        wrapper.chmod(0o755)


def _check(proc: subprocess.CompletedProcess, shown: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{shown}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _run(project: Path, command: str, *extra: str) -> subprocess.CompletedProcess:
    """One doc command as its argument list (+ ``extra``): ``python`` is this interpreter, ``train.py`` and
    ``scripts/`` this checkout's, ``edgetam-*`` its module."""
    args = shlex.split(command)
    if args[0] == "python":
        args = [sys.executable, *args[1:]]
        if args[1] == "train.py" or args[1].startswith("scripts/"):
            args[1] = str(REPO / args[1])
    elif args[0].startswith("edgetam-"):
        args = [sys.executable, "-m", _console_scripts()[args[0]], *args[1:]]
    proc = subprocess.run([*args, *extra], cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=600)
    return _check(proc, " ".join([*args, *extra]))


def _shell(project: Path, command: str) -> subprocess.CompletedProcess:
    """A doc line run verbatim by bash in the project (``edgetam-*`` on PATH)."""
    proc = subprocess.run(["bash", "-c", command], cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=600)
    return _check(proc, command)


def _lay_out_data(project: Path) -> None:
    """The sample data where the doc's downloads put the real sets: data/sa1b (SA-1B tars), data/sav (SA-V training
    mp4 + json, frames not extracted yet), data/sav_eval/sav_val/sav_val (the extracted sav_val.tar) and
    data/davis/DAVIS-2017-trainval-480p/DAVIS (the extracted DAVIS zip, 480p folders, val.txt = video_001)."""
    data = project / "data"
    make_sample_data(["--out", str(data / "sample"), "--num-images", "4", "--formats", "sa1b,sav,davis",
                      "--video-frames", "4"])
    (data / "sa1b").symlink_to(data / "sample" / "sa1b")
    shutil.copytree(data / "sample" / "sav" / "sav_000", data / "sav" / "sav_000" / "sav_000")
    make_sample_data(["--out", str(data / "sav_eval" / "sav_val"), "--formats", "sav_val", "--num-videos", "2",
                      "--video-frames", "3", "--video-size", "160x120"])
    davis = data / "davis" / "DAVIS-2017-trainval-480p" / "DAVIS"
    for part in ("JPEGImages", "Annotations"):
        shutil.copytree(data / "sample" / "davis" / part, davis / part / "480p")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("video_000\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("video_001\n")


@pytest.mark.slow
def test_doc_commands_run_at_toy_scale(tmp_path):
    project = tmp_path
    _lay_out_data(project)
    _install_scripts(project)
    (project / "weights").mkdir()
    save_file(timm.create_model("repvit_m1", pretrained=False).state_dict(), str(project / TRUNK_FILE))
    make_random_checkpoint.main(["--model", "sam2.1_hiera_t", "--out", str(project / TEACHER_FILE)])
    commands = {kind(c): c for c in doc_commands()}

    # data preparation: frames of the SA-V training videos; DAVIS moved where validation and section 5 read it
    _run(project, commands["extract_sav"], "--workers", "1")
    assert (project / "data/sav/JPEGImages_24fps/sav_000001/00004.jpg").is_file()
    _shell(project, commands["davis_move"])
    assert (project / "data/davis/Annotations/480p/video_001/00000.png").is_file()

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

    # evaluation: export, the SA-V and DAVIS predict loops and their J&F, 1-click mIoU
    _run(project, commands["export"], "--image-size", "256")
    assert (project / "weights" / "ours.pt").is_file()
    _shell(project, commands["sav_predict"])
    for video, frames in (("sav_000001", 9), ("sav_000002", 10)):
        for obj in ("000", "001", "002", "003"):
            pngs = sorted(p.name for p in (project / "results/sav_val" / video / obj).glob("*.png"))
            assert pngs == [f"{t:05d}.png" for t in range(frames)], (video, obj)
    out = _run(project, commands["sav_jf"]).stdout.splitlines()
    assert "in 2 videos" in out[-2] and out[-1].startswith("J&F=")
    _shell(project, commands["davis_predict"])
    assert sorted(p.name for p in (project / "results/davis").iterdir()) == ["video_001"]  # the val.txt video
    out = _run(project, commands["davis_jf"]).stdout.splitlines()
    assert "3 objects in 1 videos" in out[-2] and out[-1].startswith("J&F=")
    proc = _run(project, commands["miou"].replace("data/sa23", "data/sample/sa1b"), "--image-size", "256")
    assert "clicks=1 mIoU=" in proc.stdout + proc.stderr

    # the budget run: the teacher cache of data/sa1b (the doc's teacher file, a random -T here), then stage 1 from it
    _run(project, commands["cache"], "--teacher", "sam2.1_hiera_t", "--image-size", "256", "--num-workers", "0",
         "--batch-size", "2")
    assert (project / "cache/f16_b+_1024").is_dir()
    proc = _run(project, commands["budget"], *TOY, "run_name=budget", "data.root=data/sa1b",
                f"model.teacher.checkpoint={TEACHER_FILE}")
    assert "cached F16 (f16_b+_1024) | sam2.1_hiera_base_plus.pt |" in proc.stdout + proc.stderr  # the report's row
    assert (project / "logs/train/runs/budget/checkpoints/last.ckpt").is_file()
