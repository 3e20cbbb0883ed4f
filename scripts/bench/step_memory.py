#!/usr/bin/env python
"""Memory plan: peak device memory of one training step per device, estimated at full size without a GPU.

Method (``_memtrace.py``): the experiment's ``DistillationModule`` (student EdgeTAM + live SAM 2.1 teacher, built from
the Hydra configs) runs one step, forward and backward, on **fake tensors** (``FakeTensorMode``: every op computes
its output's shape and dtype, and autograd saves what it would save, but no data exists), under a tracker that adds
the bytes of every tensor storage when an op creates it and subtracts them when it is freed. The tracked peak is the
step's peak of live tensor bytes, counted as ``torch.cuda.max_memory_allocated`` counts them (512-byte blocks).

- stage 1: ``B`` images x ``data.max_masks`` masks (64) x 1 + ``model.prompts.num_correction_clicks`` (7) decoder
  passes, every pass supervised at S x S, plus the teacher's forward (F16);
- stage 2: ``B`` clips of ``data.clip_len`` (8) frames x ``data.max_objects`` (3) objects, the worst prompt plan
  SAM 2 draws (2 conditioning frames with clicks, each corrected with all clicks), the teacher replaying the clip;
- ``bf16-mixed`` = the step under ``torch.autocast(bfloat16)`` (CPU autocast lists: the matmul/conv/attention ops in
  bf16, as on CUDA); ``32-true`` = fp32.

Device memory = tracked step peak + states that live across steps (student fp32 weights, gradients, AdamW moments,
DDP gradient buckets: 24 bytes per student parameter; fp32 teacher weights: 4 bytes per parameter) + 2 GiB for the
CUDA context and cuBLAS/cuDNN/NCCL workspaces. It fits when it is at most (1 - 15 %) of 80 GB; the 15 % margin covers
the caching allocator's fragmentation. What the CPU trace cannot see: a CUDA attention kernel choice that stores more
than the CPU's (the CPU trace uses CPU SDPA kernels; on CUDA flash / memory-efficient kernels store the same or less).
Run ``scripts/bench/gpu_profile.py`` on the first GPU: it prints the measured peak next to this plan.

Cross-check (``--cross-check``): the same tracker on **real** tensors at a size that fits on this CPU (default 256²,
16 masks) must agree with the fake trace, and the process's peak RSS growth (an independent measurement, in a fresh
process) must be at least the tracked peak and not far above it.

    python scripts/bench/step_memory.py                 # the table in docs/benchmarks.md ("Memory plan")
    python scripts/bench/step_memory.py --check         # the experiments' defaults on 8 x 80 GB: exit 0 if they fit
    python scripts/bench/step_memory.py --cross-check   # fake trace vs real tracked peak vs RSS at 256²
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _memtrace import fake_module, traced_peak
from torch._subclasses.fake_tensor import FakeTensorMode

REPO = Path(__file__).resolve().parents[2]

GPU_BYTES = 80e9            # an 80 GB device (H100 / A100 80GB)
MARGIN = 0.15               # required free fraction
RUNTIME_BYTES = 2 * 2**30   # CUDA context + cuBLAS / cuDNN / NCCL workspaces, outside the allocator's count
STUDENT_STATE_BYTES = 24    # per student parameter: fp32 weight, grad, 2 AdamW moments, DDP bucket, optimizer temp
TEACHER_STATE_BYTES = 4     # per teacher parameter: fp32 weights
EXPERIMENTS = {"image": "edgetam_distill", "video": "edgetam_distill_video"}
GLOBAL_BATCH = {"image": 128, "video": 256}  # the paper's
DEVICES = 8
SECTION = "step_memory"


@dataclass
class Job:
    """One estimate: stage ('image' / 'video'), per-device batch, precision, checkpointing level, size."""

    stage: str
    batch: int
    precision: str = "bf16-mixed"
    level: str = "heads"
    size: int = 1024
    masks: int | None = None       # stage 1: masks per image (default: the experiment's data.max_masks)
    objects: int | None = None     # stage 2: objects per clip (data.max_objects)
    frames: int | None = None      # stage 2: frames per clip (data.clip_len)
    teacher: str | None = None     # teacher architecture (configs/arch/<name>.yaml; default: the experiment's)
    clicks: int | None = None      # correction clicks (model.prompts.num_correction_clicks; default: the experiment's)
    loss: str | None = None        # model.loss.task_loss.mask_loss: lean / direct (default: the experiment's)


def compose(stage: str, overrides: list[str] | None = None) -> Any:
    """The experiment's composed config (``python train.py experiment=... <overrides>``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from edgetam_train.config import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return hydra_compose("train", overrides=[f"experiment={EXPERIMENTS[stage]}", f"paths.root_dir={REPO}"]
                             + list(overrides or []))


def build(job: Job) -> tuple[Any, dict, int, int]:
    """(module, synthetic batch, student params, teacher params) for ``job``; random weights, no checkpoint read."""
    from hydra.utils import instantiate

    cfg = compose(job.stage, [f"model.student.image_size={job.size}", f"model.teacher.net.image_size={job.size}",
                              "model.teacher.checkpoint=null", "model.teacher.allow_random_init=true",
                              "model.init_from=null", "model.student.image_encoder.trunk.weights=random",
                              f"model.activation_checkpointing={job.level}",
                              "model.compile=false"]
                  + ([f"arch@model.teacher.net={job.teacher}"] if job.teacher else [])
                  + ([f"model.prompts.num_correction_clicks={job.clicks}"] if job.clicks is not None else [])
                  + ([f"model.loss.task_loss.mask_loss={job.loss}"] if job.loss else []))
    torch.manual_seed(0)
    module = instantiate(cfg.model, _convert_="partial")
    s, b = job.size, job.batch
    if job.stage == "image":
        masks = job.masks or int(cfg.data.max_masks)
        gt = torch.zeros(b * masks, s, s, dtype=torch.bool)
        gt[:, s // 4: s // 2, s // 4: s // 2] = True
        batch = {"images": torch.randn(b, 3, s, s), "masks": gt,
                 "obj_to_img": torch.arange(b).repeat_interleave(masks)}
    else:
        frames, objects = job.frames or int(cfg.data.clip_len), job.objects or int(cfg.data.max_objects)
        gt = torch.zeros(frames, b * objects, s, s, dtype=torch.bool)
        gt[:, :, s // 4: s // 2, s // 4: s // 2] = True
        batch = {"images": torch.randn(b, frames, 3, s, s), "masks": gt,
                 "obj_to_img": torch.arange(b).repeat_interleave(objects)}
    teacher = module.teacher
    n_t = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    return module, batch, sum(p.numel() for p in module.student.parameters()), n_t


def worst_plan(num_frames: int, cfg: Any):
    """SAM 2's most expensive clip plan: clicks (not masks) on 2 conditioning frames, each corrected."""
    from edgetam_train.distill.prompting import ClipPlan, plan_clip

    if num_frames == 1:
        return plan_clip(1, cfg)
    init = [0, num_frames // 2][: max(1, min(cfg.max_init_cond_frames, num_frames))]
    return ClipPlan(num_frames, init, list(init) if cfg.num_correction_clicks > 0 else [], "point")


@contextmanager
def worst_case_plans() -> Iterator[None]:
    """Within the block, every training step draws :func:`worst_plan` (the clip plan the memory plan assumes)."""
    import edgetam_train.distill.module as module_mod

    original = module_mod.plan_clip
    module_mod.plan_clip = worst_plan
    try:
        yield
    finally:
        module_mod.plan_clip = original


def estimate(job: Job, fake: bool = True, built: tuple | None = None) -> dict[str, Any]:
    """Tracked peak of one step of ``job`` (fake tensors by default) and the device memory it implies; ``built``:
    the result of :func:`build` when the caller already has it."""
    module, batch, n_s, n_t = built if built is not None else build(job)
    module.train()
    mode = None
    if fake:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_module(module.student, mode)
        if module.teacher is not None:
            fake_module(module.teacher, mode)
        batch = {k: mode.from_tensor(v) for k, v in batch.items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=job.precision.startswith("bf16"))

    def step() -> None:
        torch.manual_seed(1)
        with autocast:
            losses = module.clip_step(batch).losses
        losses["loss"].backward()

    t0 = time.perf_counter()
    with worst_case_plans():
        tracker = traced_peak(step, mode)
    static = STUDENT_STATE_BYTES * n_s + TEACHER_STATE_BYTES * n_t
    device = tracker.peak + static + RUNTIME_BYTES
    top = sorted(tracker.at_peak.items(), key=lambda kv: -kv[1])[:4]
    return {"job": job.__dict__, "peak": tracker.peak, "static": static, "device": device,
            "fits": device <= (1 - MARGIN) * GPU_BYTES, "headroom": 1 - device / GPU_BYTES,
            "seconds": time.perf_counter() - t0, "top": [(k, v) for k, v in top]}


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def row(r: dict[str, Any]) -> str:
    j = r["job"]
    what = (f"{j['batch']} image(s) x {j['masks'] or 64} masks x 8 passes" if j["stage"] == "image"
            else f"{j['batch']} clip(s) x {j['frames'] or 8} frames x {j['objects'] or 3} objects")
    top = ", ".join(f"{k} {gib(v)}" for k, v in r["top"][:3])
    return (f"| {j['stage']} | {what} | {j['precision']} | {j['level']} | {gib(r['peak'])} | {gib(r['device'])} | "
            f"{r['headroom']:.0%} | {'yes' if r['fits'] else '**no**'} | {top} |")


HEADER = ("| stage | per-device batch | precision | checkpointing | step peak (traced) | device total | free of 80 GB "
          "| fits (>= 15 % free) | largest at the peak (by op) |\n|---|---|---|---|---|---|---|---|---|")


def check(devices: int, json_path: Path | None = None) -> int:
    """The experiments' defaults on ``devices`` x 80 GB: fit with >= 15 % margin and the paper's global batch;
    ``json_path``: also write one row per experiment for ``run_all.py``."""
    ok = True
    summary, rows = [], []
    for stage in ("image", "video"):
        cfg = compose(stage, ["trainer=ddp"])  # the cluster trainers (ddp, slurm) run bf16-mixed
        b, acc = int(cfg.data.batch_size), int(cfg.trainer.accumulate_grad_batches)
        level, precision = str(cfg.model.activation_checkpointing), str(cfg.trainer.precision)
        r = estimate(Job(stage, b, precision, level))
        global_batch = devices * b * acc
        good = r["fits"] and global_batch == GLOBAL_BATCH[stage]
        ok &= good
        print(f"step_memory --check {EXPERIMENTS[stage]}: {devices} devices x batch {b} x accumulate {acc} = "
              f"{global_batch} (paper {GLOBAL_BATCH[stage]}), {precision}, checkpointing {level}: "
              f"{gib(r['device'])} of 80 GB, {r['headroom']:.0%} free -> {'PASS' if good else 'FAIL'}")
        summary.append(f"{stage} {gib(r['device'])} ({r['headroom']:.0%} free)")
        rows.append({"name": f"step_memory: {EXPERIMENTS[stage]} defaults per 80 GB device ({b} x {acc} x {devices} = "
                             f"{global_batch}, {precision}, checkpointing {level}; fake-tensor trace at 1024²)",
                     "value": round(r["device"] / 2**30, 1), "unit": "GiB",
                     "goal": f"<= {(1 - MARGIN) * GPU_BYTES / 2**30:.1f}", "passed": bool(good),
                     "detail": f"{r['headroom']:.0%} of 80 GB free; global batch {global_batch}"})
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=1))
    print(f"step_memory --check: {'PASS' if ok else 'FAIL'}: " + "; ".join(summary)
          + f" on {devices} x 80 GB, margin >= {MARGIN:.0%}")
    return 0 if ok else 1


def rss_child(job: Job) -> None:
    """In a fresh process: real step, tracked peak and RSS growth (bytes), printed as JSON."""
    torch.set_num_threads(1)
    built = build(job)
    base = reset_peak_rss()
    real = estimate(job, fake=False, built=built)
    rss = peak_rss() - base
    print(json.dumps({"real": real["peak"], "rss": rss}))


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Reset the process's peak RSS to its current RSS (Linux: ``5`` to /proc/self/clear_refs) and return it, so the
    step's peak is measured from here and not hidden by a higher peak while building the models; elsewhere the peak
    so far (``ru_maxrss``), which can only under-report the growth."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    """Peak RSS in bytes since :func:`reset_peak_rss` (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        return _proc_status_bytes("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cross_check(size: int, masks: int) -> list[str]:
    """Fake trace vs real tracked peak vs RSS growth at ``size`` (stage 1, 1 image: fp32, bf16, fp32 with the heads
    checkpointed; stage 2: 1 clip of 3 frames x 2 objects, fp32).

    RSS counts only touched pages, so it can stay below the tracked peak (an allocation not yet written), and it adds
    what the tracker cannot see (allocator caching, kernel workspaces such as oneDNN's bf16 reorders)."""
    lines = []
    for job in (Job("image", 1, "32-true", "none", size, masks=masks),
                Job("image", 1, "bf16-mixed", "none", size, masks=masks),
                Job("image", 1, "32-true", "heads", size, masks=masks),
                Job("video", 1, "32-true", "none", size, objects=2, frames=3)):
        fake = estimate(job)["peak"]
        out = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(job.__dict__)],
                             capture_output=True, text=True, check=True)
        real = json.loads(out.stdout.strip().splitlines()[-1])
        line = (f"cross-check {job.stage} {size}² {job.precision} {job.level}: fake trace {gib(fake)}, real tracked "
                f"{gib(real['real'])} (fake/real {fake / real['real']:.3f}), peak RSS growth {gib(real['rss'])} "
                f"(RSS/tracked {real['rss'] / real['real']:.2f})")
        print(line, flush=True)
        lines.append(line)
    return lines


def time_cost(size: int, masks: int, steps: int) -> list[str]:
    """Step time (forward + backward, real, this CPU) of stage 1 at ``size`` with each checkpointing level, interleaved
    in one run; the ratios are the time cost of checkpointing."""
    from edgetam_train.distill.efficiency import apply_activation_checkpointing

    job = Job("image", 1, "32-true", "none", size, masks=masks)
    module, batch, _, _ = build(job)
    times: dict[str, list[float]] = {lv: [] for lv in ("none", "heads", "full")}
    for i in range(steps + 1):
        for lv in times:
            apply_activation_checkpointing(module.student, module.loss.task_loss, lv)
            module.student.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            t0 = time.perf_counter()
            losses = module.clip_step(batch).losses
            losses["loss"].backward()
            if i:  # the first round is a warm-up
                times[lv].append(time.perf_counter() - t0)
    med = {lv: sorted(v)[len(v) // 2] for lv, v in times.items()}
    line = (f"checkpointing time cost, stage 1 at {size}², 1 image x {masks} masks x 8 passes, fp32, this CPU, "
            f"median of {steps}: none {med['none']:.2f}s, heads {med['heads']:.2f}s "
            f"({med['heads'] / med['none']:.2f}x), full {med['full']:.2f}s ({med['full'] / med['none']:.2f}x)")
    print(line, flush=True)
    return [line]


def render(rows: list[dict[str, Any]], notes: list[str], command: str) -> str:
    lines = ["## Memory plan (`step_memory.py`)", "",
             f"Last run: {time.strftime('%Y-%m-%d')}, `{command}`. Per device, one training step at 1024² with the "
             "live SAM 2.1-B+ teacher and the lean mask loss (the default; the old loss's rows are under "
             "\"Lean mask loss\"), estimated without a GPU: the step traced on fake tensors (shapes, dtypes and "
             "autograd's saved tensors as in a real run, no data) under a live-bytes tracker (method: the script's "
             "docstring). Device total = traced step peak + weights, gradients, AdamW and DDP buffers + 2 GiB CUDA "
             "runtime; it fits when at least 15 % of 80 GB stay free.", "", HEADER]
    lines += [row(r) for r in rows]
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def table_jobs() -> list[Job]:
    """The rows of the table (lean mask loss, the experiments' default): every level at batch 1 in bf16; batch
    {1, 2, 4, 8} in bf16 with no recompute (the default) and with ``heads`` (the fewer-accumulation alternative); fp32
    at batch {1, 2} with no recompute."""
    jobs = [Job(stage, 1, "bf16-mixed", "full") for stage in ("image", "video")]
    for stage in ("image", "video"):
        for level in ("none", "heads"):
            jobs += [Job(stage, b, "bf16-mixed", level) for b in (1, 2, 4, 8)]
        jobs += [Job(stage, b, "32-true", "none") for b in (1, 2)]
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="check the experiments' defaults; exit 0 only if they fit")
    p.add_argument("--devices", type=int, default=DEVICES, help="devices for the global batch (--check)")
    p.add_argument("--cross-check", action="store_true", help="fake trace vs real peak vs RSS at --cross-size")
    p.add_argument("--cross-size", type=int, default=256)
    p.add_argument("--cross-masks", type=int, default=16)
    p.add_argument("--time-steps", type=int, default=2, help="timed steps per checkpointing level (0: skip)")
    p.add_argument("--job", action="append", default=[], help="STAGE:BATCH:PRECISION:LEVEL rows instead of the table")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--json", type=Path, help="with --check: write its rows (for run_all.py) to this file")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(Job(**json.loads(args.rss_child)))
        return 0
    if args.check:
        return check(args.devices, args.json)
    if args.cross_check:
        cross_check(args.cross_size, args.cross_masks)
        return 0
    jobs = table_jobs()
    if args.job:
        jobs = [Job(st, int(b), pr, lv) for st, b, pr, lv in (j.split(":") for j in args.job)]
    rows = []
    for job in jobs:
        r = estimate(job)
        rows.append(r)
        print(row(r) + f"  [{r['seconds']:.0f}s]", flush=True)
    notes = []
    if not args.job:
        notes += cross_check(args.cross_size, args.cross_masks)
        if args.time_steps:
            notes += time_cost(args.cross_size, args.cross_masks, args.time_steps)
    if not args.no_doc and not args.job:
        from run_all import DOC, update_section

        command = "python scripts/bench/step_memory.py" + (" " + " ".join(argv) if argv else "")
        update_section(DOC, SECTION, render(rows, notes, command))
        print(f"step_memory: wrote its section of {DOC}")
    fits = sum(r["fits"] for r in rows)
    print(f"step_memory: {fits}/{len(rows)} rows fit an 80 GB device with >= {MARGIN:.0%} free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
