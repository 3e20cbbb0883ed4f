#!/usr/bin/env python
"""Learning evidence: train the EdgeTAM student from scratch on generated sample-style images and plot the 1-click
mIoU on held-out images of the same generator against the step (README "Learning evidence").

1. Data (``scripts/make_sample_data.py``, SA-1B format, 256x192 base size, skipped when present): ``--train-images``
   training images of seed 0 under ``<data>/train`` and ``--val-images`` held-out images of seed 1 under
   ``<data>/val`` (other scenes of the same generator: never trained on).
2. Training: ``python train.py experiment=learning_curve`` (configs/experiment/learning_curve.yaml: RepViT-M1
   student, random init, task loss only, one click per mask, 256², CPU fp32) in a child process limited to
   ``--threads`` CPU threads; validation at step 0 and every ``trainer.val_check_interval`` steps. Extra Hydra
   overrides after the options go to train.py.
3. The curve: ``val/mIoU_1click`` (and the training loss) against the step from the run's ``metrics.csv`` into
   ``--png`` (default docs/learning_curve.png).

Prints ``learning_curve: held-out 1-click mIoU A at step 0 -> B at step N (...) PASS|FAIL`` last: PASS when the
first score is at most 0.2 and the last at least 0.5 (exit status 0; 1 on FAIL).

    python scripts/learning_curve.py                           # ~42 min on 1 CPU thread, writes docs/learning_curve.png
    python scripts/learning_curve.py --png /tmp/c.png trainer.max_steps=200   # a shorter run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from edgetam_train.callbacks.loss_curve import read_metrics

REPO = Path(__file__).resolve().parents[1]

METRIC = "val/mIoU_1click"
FIRST_MAX = 0.2   # the untrained student: about 0
LAST_MIN = 0.5    # after training: at least this on the held-out images
# the generator's flags for both sets: 256x192 base size, 3-6 annotated shapes per image, each visible on >= 1 % of
# the image (smaller slivers are drawn, not annotated: at 256² they are a few pixels of the decoder's 64² output)
GENERATOR_FLAGS = ("--formats", "sa1b", "--size", "256x192", "--min-masks", "3", "--max-masks", "6",
                   "--min-area-frac", "0.01")


def make_data(root: Path, train_images: int, val_images: int) -> None:
    """Write the training (seed 0) and held-out (seed 1) SA-1B sets under ``root/{train,val}`` unless present."""
    for split, seed, count in (("train", 0, train_images), ("val", 1, val_images)):
        out = root / split
        if (out / "sa1b").is_dir() and len(list((out / "sa1b").glob("*.json"))) >= count:
            continue
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out", str(out),
                        *GENERATOR_FLAGS, "--seed", str(seed), "--num-images", str(count)], check=True)


def train_command(data_dir: Path, log_dir: Path, run_name: str, threads: int, overrides: list[str],
                  experiment: str = "learning_curve") -> tuple[list[str], dict[str, str]]:
    """The ``train.py experiment=<experiment>`` command on this data (``data_dir/{train,val}``) and its environment
    (``threads`` CPU threads); scripts/distill_evidence.py runs its teacher and students through it too."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(REPO / "train.py"), f"experiment={experiment}", f"run_name={run_name}",
           f"paths.root_dir={REPO}", f"paths.log_dir={log_dir}", f"data.root={data_dir}/train/sa1b",
           f"data.val.miou.root={data_dir}/val/sa1b", *overrides]
    return cmd, env


def train(data_dir: Path, log_dir: Path, run_name: str, threads: int, overrides: list[str]) -> float:
    """Run ``train.py experiment=learning_curve`` on ``threads`` CPU threads; returns its wall time in seconds."""
    cmd, env = train_command(data_dir, log_dir, run_name, threads, overrides)
    print("learning_curve:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return time.perf_counter() - t0


def latest_metrics(run_dir: Path) -> Path:
    """The newest ``csv/version_N/metrics.csv`` of a run directory (each fresh run adds a version)."""
    found = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not found:
        raise FileNotFoundError(f"no csv/version_*/metrics.csv under {run_dir}: did the run use logger=csv?")
    return found[-1]


def curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """(optimiser step, held-out 1-click mIoU) of every validation in ``metrics_csv``, in step order.

    Lightning writes a validation that runs after optimiser step k on the row of ``step`` k - 1 (its logger step counts
    the batches stepped before that validation); the first row is the untrained weights' validation (step 0,
    ``edgetam_train/callbacks/initial_validation.py``), the others are shifted by one to the step whose weights they
    score.
    """
    points = sorted(read_metrics(metrics_csv).get(METRIC, []))
    if not points:
        raise ValueError(f"{metrics_csv} has no {METRIC} values: no validation ran (data.val.miou.root unset?)")
    return points[:1] + [(step + 1, value) for step, value in points[1:]]


def plot(metrics_csv: Path, out: Path, title: str) -> Path:
    """Held-out mIoU (top) and training loss (bottom) against the step into a small PNG."""
    from matplotlib.figure import Figure

    series = read_metrics(metrics_csv)
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps, values = zip(*curve(metrics_csv))
    top.plot(steps, values, marker=".", color="tab:purple")
    top.axhline(LAST_MIN, color="gray", linestyle="--", linewidth=0.8)
    top.set_ylim(0, 1)
    top.set_ylabel("1-click mIoU (held out)")
    top.set_title(title, fontsize=9)
    top.grid(True, alpha=0.3)
    if "train/loss" in series:
        loss_steps, loss = zip(*sorted(series["train/loss"]))
        bottom.plot(loss_steps, loss, linewidth=0.8, color="tab:blue")
        bottom.set_ylim(bottom=0)
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("optimiser step")
    bottom.grid(True, alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out


def main(argv: list[str] | None = None) -> int:
    """Data, training, plot; 0 when the curve rises from <= 0.2 to >= 0.5, 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "learning_curve", help="data root (train/, val/)")
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--log-dir", type=Path, default=REPO / "logs", help="paths.log_dir of the run")
    p.add_argument("--run-name", default="learning_curve")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for training (default 1)")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "learning_curve.png")
    args, overrides = p.parse_known_args(argv)
    if bad := [o for o in overrides if "=" not in o]:
        p.error(f"unknown arguments {bad}: options come from --help, Hydra overrides look like key=value")
    make_data(args.data, args.train_images, args.val_images)
    seconds = train(args.data.resolve(), args.log_dir.resolve(), args.run_name, args.threads, overrides)
    metrics_csv = latest_metrics(args.log_dir.resolve() / "train" / "runs" / args.run_name)
    points = curve(metrics_csv)
    (s0, first), (s1, last) = points[0], points[-1]
    title = (f"EdgeTAM student from scratch, sample-style data: {s1} steps, {seconds / 60:.0f} min on "
             f"{args.threads} CPU thread(s)")
    png = plot(metrics_csv, args.png, title)
    ok = s0 == 0 and first <= FIRST_MAX and last >= LAST_MIN
    print(f"learning_curve: held-out 1-click mIoU {first:.3f} at step {s0} -> {last:.3f} at step {s1} "
          f"({len(points)} validations, {seconds / 60:.1f} min on {args.threads} thread(s); goal: step 0 <= "
          f"{FIRST_MAX}, last >= {LAST_MIN}) {'PASS' if ok else 'FAIL'}; curve: {png}; metrics: {metrics_csv}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
