#!/usr/bin/env python
"""Distillation evidence: does a student distilled from a better teacher learn faster or better than the same student
without it? The paper's ablation in miniature, on the learning-curve data (README "Distillation evidence").

1. Data: ``scripts/learning_curve.py``'s generated SA-1B-style sets (256x192 base size, training images of seed 0,
   held-out images of seed 1), under ``--data`` (skipped when present).
2. Teacher: ``--teacher-arch`` (``edgetam``, the default, or ``sam2.1_hiera_t``: a SAM 2.1-T), random init, seed
   ``TEACHER_SEED`` (no student's init or data order), trained on ground truth alone for ``--teacher-steps``
   (``experiment=distill_evidence_teacher``), or ``--teacher CKPT`` (a run's checkpoint or an official ``.pt``) reused;
   exported in the official SAM 2.1 layout (``{"model": state_dict}``, reloaded and compared by
   :func:`edgetam_train.export.official.export_official`), as a downloaded teacher would be.
3. Students (``experiment=distill_evidence_student``): the EdgeTAM student from the same random init (``seed=S``)
   and the same data order, for ``--steps`` each and every seed of ``--seeds``:
   (a) the task loss alone (``model.teacher=null``); (b) task + λ_F·MSE(F16) from the frozen teacher
   (``model.loss.lambda_f16=--lambda-f16``). Child processes at ``--threads`` CPU threads, ``--jobs`` at a time.
4. Held-out 1-click mIoU (``val/mIoU_1click``) at 25 / 50 / 100 % of the steps per arm (mean ± sample standard
   deviation over seeds), the paired effect (b) − (a) (same seed: same init and data order) into ``--json``, every
   curve into ``--png``.

Prints last ``distill_evidence: (b) - (a) = X ± Y at step N (...) DISTILLATION HELPS|NO EFFECT|HURTS``: HELPS / HURTS
when the mean paired difference at the last step exceeds both its spread over seeds and ``NOISE_FLOOR`` (exit 0 in
every case: a null result is a finding, not a failure).

    python scripts/distill_evidence.py --jobs 2              # the committed run: see README "Distillation evidence"
    python scripts/distill_evidence.py --teacher-steps 4000 --lambda-f16 0.3 --jobs 2  # a stronger teacher, level terms
    python scripts/distill_evidence.py --teacher logs/.../last.ckpt --steps 200      # reuse a trained teacher
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from learning_curve import curve, latest_metrics, make_data, train_command

REPO = Path(__file__).resolve().parents[1]

ARMS = {"a": "task loss only", "b": "task + λ_F·MSE(F16) from the teacher"}
FRACTIONS = (0.25, 0.5, 1.0)  # where the table reads each arm's curve
NOISE_FLOOR = 0.01  # mIoU: a paired difference under this is no effect whatever the seeds' spread
TEACHER_RUN = "distill_evidence_teacher_{arch}"  # one run (and exported .pt) per teacher architecture
TEACHER_SEED = 1000  # not one of the students' seeds: the teacher shares neither their init nor their data order
TEACHER_ARCHS = {"edgetam": "EdgeTAM", "sam2.1_hiera_t": "SAM 2.1-T"}


@dataclass
class Run:
    """One training run: its name, the Hydra overrides after the data / paths ones, and what it measured."""

    name: str
    experiment: str
    overrides: list[str]
    seconds: float = 0.0
    points: list[tuple[int, float]] = field(default_factory=list)


def run_all(runs: list[Run], args: argparse.Namespace, log_dir: Path) -> None:
    """Train ``runs`` as child processes, ``args.jobs`` at a time, each on ``args.threads`` CPU threads; the console
    output of each goes to ``log_dir/<name>.log``. Fills ``seconds`` and ``points``; raises on a failed run."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < args.jobs:
            run = pending.pop(0)
            cmd, env = train_command(args.data.resolve(), args.log_dir.resolve(), run.name, args.threads,
                                     [*run.overrides, *args.overrides], experiment=run.experiment)
            log = (log_dir / f"{run.name}.log").open("w")
            print(f"distill_evidence: start {run.name}: {' '.join(cmd[1:])} (log: {log.name})", flush=True)
            active.append((run, subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT),
                           log, time.perf_counter()))
        time.sleep(0.5)
        for item in list(active):
            run, proc, log, t0 = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log.close()
            if proc.returncode != 0:
                for _, other, _, _ in active:  # do not leave siblings running after a failure
                    other.terminate()
                raise RuntimeError(f"{run.name} failed (exit {proc.returncode}): see {log.name}")
            run.seconds = time.perf_counter() - t0
            run.points = curve(latest_metrics(args.log_dir.resolve() / "train" / "runs" / run.name))
            print(f"distill_evidence: done {run.name} in {run.seconds / 60:.1f} min: held-out mIoU "
                  f"{run.points[-1][1]:.3f} at step {run.points[-1][0]}", flush=True)


def teacher_checkpoint(args: argparse.Namespace) -> tuple[Path, dict]:
    """The teacher in the official layout, and what is known about it (steps, held-out mIoU, training time).

    ``--teacher`` given: an official ``.pt`` is used as it is; a training checkpoint is exported. Otherwise the
    teacher is trained here (``--teacher-steps``) and its ``last.ckpt`` exported."""
    from edgetam_train.export.official import export_official, load_model

    info: dict = {"arch": args.teacher_arch}
    name = TEACHER_RUN.format(arch=args.teacher_arch)
    if args.teacher is not None and args.teacher.suffix == ".pt":
        return args.teacher.resolve(), {**info, "checkpoint": str(args.teacher)}
    if args.teacher is not None:
        ckpt = args.teacher.resolve()
    else:
        run = Run(name, "distill_evidence_teacher",
                  [f"arch@model.student={args.teacher_arch}", f"seed={TEACHER_SEED}",
                   f"trainer.max_steps={args.teacher_steps}", f"trainer.val_check_interval={val_every(args, True)}"])
        run_all([run], args, args.log_dir.resolve() / "distill_evidence_logs")
        info.update(steps=run.points[-1][0], seconds=round(run.seconds, 1), curve=run.points)
        ckpt = args.log_dir.resolve() / "train" / "runs" / name / "checkpoints" / "last.ckpt"
    metrics = sorted((ckpt.parents[1] / "csv").glob("version_*/metrics.csv"))
    if "curve" not in info and metrics:  # a reused run's own held-out scores
        points = curve(latest_metrics(ckpt.parents[1]))
        info.update(steps=points[-1][0], curve=points)
    if "curve" in info:
        info["miou"] = info["curve"][-1][1]
    out = args.log_dir.resolve() / f"{name}.pt"
    report = export_official(load_model(ckpt), out)
    if not report.ok:
        raise RuntimeError(f"teacher export failed its check: {report.summary()}")
    print(f"distill_evidence: teacher {ckpt} -> {out} (official layout, reloaded: max abs diff {report.max_diff:g})",
          flush=True)
    return out, {**info, "checkpoint": str(out), "source": str(ckpt)}


def val_every(args: argparse.Namespace, teacher: bool = False) -> int:
    """Validation interval: ``--val-every``, else a quarter of the run (so 25 / 50 / 100 % are validated)."""
    steps = args.teacher_steps if teacher else args.steps
    return args.val_every or max(1, steps // 4)


def at_step(points: list[tuple[int, float]], step: int) -> float:
    """The held-out mIoU validated at ``step`` (an error naming the validated steps when it was not)."""
    values = dict(points)
    if step not in values:
        raise ValueError(f"no validation at step {step} (validated: {sorted(values)}): --val-every must divide it")
    return values[step]


def spread(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed: no spread measured)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(arms: dict[str, list[Run]], steps: int) -> dict:
    """Per arm: mean ± spread at each fraction of ``steps``; with (a) and (b): the paired effect per seed."""
    table: dict = {}
    for arm, runs in arms.items():
        rows = {}
        for frac in FRACTIONS:
            step = round(steps * frac)
            values = [at_step(r.points, step) for r in runs]
            rows[f"{round(frac * 100)}%"] = {"step": step, "mean": statistics.fmean(values), "spread": spread(values),
                                             "values": values}
        table[arm] = {"label": ARMS[arm], "at": rows, "seconds": [round(r.seconds, 1) for r in runs],
                      "runs": {r.name: r.points for r in runs}}
    if "a" in arms and "b" in arms:
        diffs = [at_step(b.points, steps) - at_step(a.points, steps) for a, b in zip(arms["a"], arms["b"])]
        table["effect_b_minus_a"] = {"step": steps, "mean": statistics.fmean(diffs), "spread": spread(diffs),
                                     "values": diffs}
    return table


def verdict(effect: dict) -> str:
    """HELPS / HURTS when the mean paired difference is beyond both its spread and the noise floor."""
    margin = max(effect["spread"], NOISE_FLOOR)
    if effect["mean"] > margin:
        return "DISTILLATION HELPS"
    if effect["mean"] < -margin:
        return "DISTILLATION HURTS"
    return "NO EFFECT"


def plot(arms: dict[str, list[Run]], teacher: dict, out: Path, title: str) -> Path:
    """Every run's held-out mIoU against the step (thin: a seed, thick: the arm's mean), the teacher's last score as a
    dashed line."""
    from matplotlib.figure import Figure

    colours = {"a": "tab:blue", "b": "tab:orange"}
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for arm, runs in arms.items():
        for r in runs:
            ax.plot(*zip(*r.points), color=colours[arm], linewidth=0.6, alpha=0.5)
        steps = [s for s, _ in runs[0].points]
        means = [statistics.fmean(at_step(r.points, s) for r in runs) for s in steps]
        ax.plot(steps, means, color=colours[arm], linewidth=2, marker=".",
                label=f"({arm}) {ARMS[arm]}, mean of {len(runs)} seeds")
    if teacher.get("miou") is not None:
        ax.axhline(teacher["miou"], color="gray", linestyle="--", linewidth=0.9,
                   label=f"teacher {TEACHER_ARCHS[teacher['arch']]} after {teacher.get('steps', '?')} steps")
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("1-click mIoU (held out)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out


def main(argv: list[str] | None = None) -> int:
    """Data, teacher, students, table, plot, verdict; 0 unless a run failed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "distill_evidence", help="data root (train/, val/)")
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--log-dir", type=Path, default=REPO / "logs" / "distill_evidence", help="paths.log_dir of runs")
    p.add_argument("--teacher", type=Path, default=None,
                   help="reuse this teacher (a training checkpoint, exported here, or an official .pt) instead of "
                        "training one")
    p.add_argument("--teacher-arch", choices=sorted(TEACHER_ARCHS), default="edgetam",
                   help="the teacher's architecture (trained here, or that of --teacher)")
    p.add_argument("--teacher-steps", type=int, default=2000, help="teacher training steps (without --teacher)")
    p.add_argument("--steps", type=int, default=1000, help="student training steps per run (a multiple of 4)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds; every arm runs each")
    p.add_argument("--arms", default="a,b", help=f"comma-separated arms of {sorted(ARMS)}")
    p.add_argument("--lambda-f16", type=float, default=0.01,
                   help="λ_F of arm (b) (0.01 was set for a from-scratch SAM 2.1-T, whose F16 MSE was ~100x the "
                        "task loss; the EdgeTAM teacher's is ~5, and ~0.3 levels it: README)")
    p.add_argument("--val-every", type=int, default=None, help="validation interval (default: a quarter of the run)")
    p.add_argument("--jobs", type=int, default=1, help="student runs at a time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    p.add_argument("--json", type=Path, default=REPO / "docs" / "distill_evidence.json")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "distill_evidence.png")
    args, args.overrides = p.parse_known_args(argv)
    if bad := [o for o in args.overrides if "=" not in o]:
        p.error(f"unknown arguments {bad}: options come from --help, Hydra overrides (all runs) look like key=value")
    arm_names = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := sorted(set(arm_names) - set(ARMS)):
        p.error(f"unknown arms {unknown}: choose from {sorted(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.steps % 4 or args.steps % val_every(args):
        p.error(f"--steps {args.steps} must be a multiple of 4 and of --val-every (25/50/100 % are read off)")

    t0 = time.perf_counter()
    make_data(args.data, args.train_images, args.val_images)
    need_teacher = "b" in arm_names
    teacher_pt, teacher = teacher_checkpoint(args) if need_teacher else (None, {})
    common = [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={val_every(args)}"]
    arm_overrides = {"a": ["model.teacher=null"],
                     "b": [f"arch@model.teacher.net={args.teacher_arch}", f"model.teacher.checkpoint={teacher_pt}",
                           f"model.loss.lambda_f16={args.lambda_f16}"]}
    arms = {arm: [Run(f"distill_evidence_{arm}_seed{seed}", "distill_evidence_student",
                      [f"seed={seed}", *common, *arm_overrides[arm]]) for seed in seeds] for arm in arm_names}
    run_all([r for runs in arms.values() for r in runs], args, args.log_dir.resolve() / "distill_evidence_logs")
    table = summarise(arms, args.steps)
    minutes = (time.perf_counter() - t0) / 60
    effect = table.get("effect_b_minus_a")
    line = "distill_evidence: " + (
        f"(b) - (a) = {effect['mean']:+.3f} ± {effect['spread']:.3f} at step {args.steps} over {len(seeds)} seed(s) "
        f"((a) {table['a']['at']['100%']['mean']:.3f}, (b) {table['b']['at']['100%']['mean']:.3f}, teacher "
        f"{teacher.get('miou', float('nan')):.3f} held-out 1-click mIoU; {minutes:.1f} min) {verdict(effect)}"
        if effect else f"arms {arm_names} ran ({minutes:.1f} min); the verdict needs arms a and b")
    result = {"command": "python scripts/distill_evidence.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "threads_per_run": args.threads, "jobs": args.jobs, "steps": args.steps, "seeds": seeds,
              "lambda_f16": args.lambda_f16, "minutes": round(minutes, 1), "teacher": teacher, "arms": table,
              "verdict": verdict(effect) if effect else None, "line": line}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    title = (f"EdgeTAM students from scratch, sample-style data: {args.steps} steps x {len(seeds)} seed(s)\n"
             f"teacher {TEACHER_ARCHS[args.teacher_arch]} from scratch ({teacher.get('steps', '?')} steps), "
             f"λ_F = {args.lambda_f16:g}")
    plot(arms, teacher, args.png, title)
    print(f"{line}; table: {args.json}; curves: {args.png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
