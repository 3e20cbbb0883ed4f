#!/usr/bin/env python
"""The first-GPU check: training throughput of both stages at 1024² in bf16 with the experiments' per-device batch,
model FLOP utilisation (MFU) and peak memory against the memory plan, one PASS/FAIL line per row.

Rows (random weights, seed 0; synthetic batches: the work of a step does not depend on the content):

- **stage 1, live teacher** / **stage 1, cached F16**: ``experiment=edgetam_distill``'s per-device ``data.batch_size``
  images x ``--masks`` masks, 1 + ``--clicks`` prompted decoder passes per mask, task + F16 loss; the SAM 2.1 teacher
  encodes the batch (live) or its F16 comes with the batch (``data.teacher_cache``). Images/s.
- **stage 2, clip step**: ``experiment=edgetam_distill_video``'s module (built from its config by
  ``step_memory.build``: lambda_F and lambda_M, its checkpointing level) on its per-device ``data.batch_size`` clips of
  ``data.clip_len`` (8) frames x ``data.max_objects`` (3) objects, the teacher replaying each clip; every step draws
  the clip plan the memory plan assumes (``step_memory.worst_plan``: clicks on 2 conditioning frames, each corrected).
  Clips/s and frames/s.

One step = ``zero_grad``, ``DistillationModule.clip_step`` under bf16 autocast (as ``trainer=gpu``), ``backward``,
AdamW ``step``. ``--compile`` (default ``student``) compiles the student's image encoder and heads.

- FLOPs per step are counted once, eagerly, before compiling: ``FlopCounterMode`` (Lightning's ``measure_flops``)
  over the student's forward + backward and the teacher's forward (matmuls, convolutions, attention).
- Step time: median of ``--steps`` synchronised steps after ``--warmup`` (the compiled graphs are built then).
- MFU = FLOPs per step / step time / the GPU's peak dense bf16 FLOP/s: a table by device name (H100 SXM / PCIe /
  NVL, H200, GH200, B200, A100, L40S; ``--peak-tflops`` overrides or supplies it).
- Memory: the measured peak (``torch.cuda.max_memory_allocated``) against the plan of ``step_memory.py`` for the same
  step (fake-tensor traced step peak + persistent states, + 10 %): ``PASS`` when within it, else ``FAIL``.

Writes (or replaces) the "GPU profile" section of docs/benchmarks.md (``--doc``; ``--no-doc`` to skip) and, with
``--json FILE``, rows for ``run_all.py``. Exit status: 0 when every row passes, 1 on a FAIL or out of memory, 2 without
CUDA (or on bad arguments). ``--device cpu`` runs the same code as a functional check (pass small sizes; no compile):
there the measured peak is the step traced on real tensors by the plan's own tracker (``step_memory.estimate(...,
fake=False)``) + the same persistent states, and MFU needs ``--peak-tflops``.

    python scripts/bench/gpu_profile.py                          # both stages at 1024², the experiments' batches
    python scripts/bench/gpu_profile.py --stages image --batch-size 2 --compile encoder --peak-tflops 989
    python scripts/bench/gpu_profile.py --device cpu --image-size 256 --teacher sam2.1_hiera_t --masks 2 \\
        --clicks 1 --clips 1 --frames 2 --objects 1 --steps 1 --warmup 0 --no-doc       # functional check, CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from run_all import DOC, update_section
from step_memory import Job, build, compose, estimate, worst_case_plans
from teacher_cache import step_flops

from edgetam_train.distill.optim import build_optimizer

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent

PLAN_SLACK = 1.10  # PASS: measured peak <= (plan's traced step peak + persistent states) x this

# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; first match wins
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1),
)


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of ``device_name`` (``override`` wins); None when the device is not in the table."""
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


# --compile: the student submodules torch.compile builds
COMPILED: dict[str, list[str]] = {"none": [], "encoder": ["image_encoder"],
                                  "student": ["image_encoder", "sam_prompt_encoder", "sam_mask_decoder"]}


def compile_student(module, what: str) -> list[str]:
    """``torch.compile`` parts of the student in place (``nn.Module.compile``: state-dict keys unchanged); returns
    the compiled submodule names. ``encoder``: the image encoder; ``student``: also the prompt encoder and the mask
    decoder (their point count changes across correction passes: one static graph per count)."""
    parts = COMPILED[what]
    if "sam_mask_decoder" in parts:  # one graph per prompt-token count: 1 + clicks points, boxes, padding point
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for name in parts:
        # heads with static shapes: their dynamic-shape graphs failed an inductor stride check (torch 2.14.1, CPU)
        getattr(module.student, name).compile(**({} if name == "image_encoder" else {"dynamic": False}))
    return parts


def profile_mode(module, optimizer, batch: dict, teacher, steps: int, warmup: int,
                 device: torch.device) -> dict[str, float]:
    """Median step time and peak memory (CUDA; NaN elsewhere) of training steps on ``batch`` (``teacher`` None: cached
    F16 in the batch)."""
    object.__setattr__(module, "teacher", teacher)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses = module.clip_step(batch).losses
        losses["loss"].backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": statistics.median(times), "min_s": min(times), "warmup_s": warm_s, "peak_gib": peak}


def count_flops(module, batch: dict, teacher, device: torch.device) -> int:
    """FLOPs of one step (student forward + backward, teacher forward when given), counted eagerly under the same
    autocast as the timed steps."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return step_flops(module, batch, teacher)


def traced_cpu_peak_gib(job: Job, module, batch: dict, teacher) -> float:
    """CPU stand-in for ``max_memory_allocated``: one step of ``job`` traced on real tensors by the memory plan's own
    tracker + the persistent states the plan adds (student weights, gradients, AdamW; teacher weights), in GiB."""
    object.__setattr__(module, "teacher", teacher)
    n_s = sum(p.numel() for p in module.student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    r = estimate(job, fake=False, built=(module, batch, n_s, n_t))
    module.student.zero_grad(set_to_none=True)
    return (r["peak"] + r["static"]) / 2**30


def gib(x: float) -> str:
    """GiB with two decimals (CPU functional runs are small)."""
    return f"{x:.2f} GiB"


def profile_row(name: str, job: Job, module, optimizer, batch: dict, teacher, plan: dict[str, Any],
                args: argparse.Namespace, device: torch.device, peak: float | None, flops: int) -> dict[str, Any]:
    """Time one row, compare its peak memory with ``plan``, print its two lines; returns the row."""
    r = profile_mode(module, optimizer, batch, teacher, args.steps, args.warmup, device)
    if device.type != "cuda":
        r["peak_gib"] = traced_cpu_peak_gib(job, module, batch, teacher)
    achieved = flops / r["step_s"] / 1e12
    bound = (plan["peak"] + plan["static"]) * PLAN_SLACK / 2**30
    video = job.stage == "video"
    frames = job.frames if video else 1
    row = {"name": name, "stage": 2 if video else 1, **r, "flops": flops, "achieved_tflops": achieved,
           "mfu": achieved / peak if peak else None, "plan_gib": bound,
           "verdict": "PASS" if r["peak_gib"] <= bound else "FAIL",
           "rate": job.batch / r["step_s"], "unit": "clips/s" if video else "images/s",
           "frames_per_s": job.batch * frames / r["step_s"]}
    rate = f"{row['rate']:.2f} {row['unit']}" + (f" ({row['frames_per_s']:.1f} frames/s)" if video else "")
    print(f"gpu_profile {name}: {rate}, step {r['step_s'] * 1e3:.1f} ms (min {r['min_s'] * 1e3:.1f}, warm-up "
          f"{r['warmup_s']:.0f}s), {flops / 1e12:.3f} TFLOP/step, {achieved:.2f} TFLOP/s"
          + (f", MFU {row['mfu']:.1%} of {peak:g}" if peak else ", MFU: peak unknown (--peak-tflops)"), flush=True)
    print(f"gpu_profile {name}: peak {gib(r['peak_gib'])} vs plan <= {gib(bound)}: {row['verdict']}", flush=True)
    return row


def planned_build(job: Job, what: str, device: torch.device) -> tuple[dict[str, Any], Any, dict, Any]:
    """The memory plan of ``job`` (printed, with ``what`` describing the step), then its module (from the experiment's
    config, ``step_memory.build``), synthetic batch and live teacher on ``device``: (plan, module, batch, teacher)."""
    plan = estimate(job)
    print(f"gpu_profile: memory plan, {what} at {job.size}², checkpointing {job.level}: step peak "
          f"{gib(plan['peak'] / 2**30)} + persistent {gib(plan['static'] / 2**30)} (step_memory.py)", flush=True)
    module, batch, _, _ = build(job)
    teacher = module.teacher.to(device)
    return plan, module.to(device), {k: v.to(device) for k, v in batch.items()}, teacher


def stage_one(args: argparse.Namespace, device: torch.device, peak: float | None) -> list[dict[str, Any]]:
    """The stage-1 rows (``--modes``: live teacher, cached F16) on ``experiment=edgetam_distill``'s module."""
    job = Job("image", args.batch_size, "bf16-mixed", args.checkpointing, args.image_size, masks=args.masks,
              teacher=args.teacher, clicks=args.clicks)
    plan, module, batch, teacher = planned_build(job, f"stage 1: {job.batch} image(s) x {args.masks} masks x "
                                                      f"{1 + args.clicks} passes", device)
    side = args.image_size // 16
    cached = {**batch, "teacher_f16": torch.randn(job.batch, 256, side, side, device=device, dtype=torch.float16)}
    runs = {"live": ("stage 1, live teacher", batch, teacher), "cached": ("stage 1, cached F16", cached, None)}
    flops = {m: count_flops(module, *runs[m][1:], device) for m in args.modes}
    optimizer = build_optimizer(module.student, lr=4e-4, weight_decay=0.1)
    if device.type == "cuda":
        compile_student(module, args.compile)
    rows = [profile_row(runs[m][0], job, module, optimizer, runs[m][1], runs[m][2], plan, args, device, peak,
                        flops[m]) for m in args.modes]
    if args.direct_loss_row and "live" in args.modes:
        rows.append(direct_loss_row(job, module, optimizer, batch, teacher, args, device, peak))
    return rows


def direct_loss_row(job: Job, module, optimizer, batch: dict, teacher, args: argparse.Namespace, device: torch.device,
                    peak: float | None) -> dict[str, Any]:
    """The live stage-1 row again with the direct mask loss (``mask_loss=direct``: every candidate upsampled to S×S
    and kept for backward), against its own memory plan: the lean loss's gain measured on the GPU."""
    from edgetam_train.distill.efficiency import apply_activation_checkpointing

    direct = Job(**{**job.__dict__, "loss": "direct"})
    plan = estimate(direct)
    task_loss = module.loss.task_loss
    lean = task_loss.mask_loss
    task_loss.mask_loss = "direct"
    apply_activation_checkpointing(module.student, task_loss, job.level)  # direct: the loss is checkpointed too
    try:
        return profile_row("stage 1, live teacher, direct mask loss", direct, module, optimizer, batch, teacher, plan,
                           args, device, peak, count_flops(module, batch, teacher, device))
    finally:
        task_loss.mask_loss = lean
        apply_activation_checkpointing(module.student, task_loss, job.level)


def stage_two(args: argparse.Namespace, device: torch.device, peak: float | None) -> list[dict[str, Any]]:
    """The stage-2 row: ``experiment=edgetam_distill_video``'s module on its clips, with the plan's clip plan."""
    job = Job("video", args.clips, "bf16-mixed", args.video_checkpointing, args.image_size, objects=args.objects,
              frames=args.frames, teacher=args.teacher)
    plan, module, batch, teacher = planned_build(job, f"stage 2: {job.batch} clip(s) x {job.frames} frames x "
                                                      f"{job.objects} objects", device)
    with worst_case_plans():
        flops = count_flops(module, batch, teacher, device)
        optimizer = build_optimizer(module.student, lr=3e-4, weight_decay=0.1)
        if device.type == "cuda":
            compile_student(module, args.compile)
        return [profile_row("stage 2, clip step", job, module, optimizer, batch, teacher, plan, args, device, peak,
                            flops)]


def render(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The GPU-profile section of docs/benchmarks.md."""
    lines = ["## GPU profile (`gpu_profile.py`)", "",
             f"Last run: {info['date']}, `{info['command']}`.", "",
             f"- device: {info['device']} (peak dense bf16 {info['peak']}), torch {info['torch']}; bf16 autocast, "
             f"AdamW; teacher {info['teacher']} (random weights); torch.compile: {info['compiled'] or 'none'}",
             f"- stage 1: {info['images']} image(s) x {info['masks']} masks at {info['size']}², 1 + {info['clicks']} "
             f"decoder passes per mask (checkpointing {info['checkpointing']})",
             f"- stage 2: {info['clips']} clip(s) x {info['frames']} frames x {info['objects']} objects at "
             f"{info['size']}², SAM 2's worst clip plan (2 conditioning frames with corrected clicks; checkpointing "
             f"{info['video_checkpointing']})", "",
             "| row | throughput | step (median) | TFLOP per step | achieved TFLOP/s | MFU | peak memory | plan | "
             "result |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "— (peak unknown: --peak-tflops)"
        rate = f"{r['rate']:.2f} {r['unit']}" + (f" ({r['frames_per_s']:.1f} frames/s)" if r["stage"] == 2 else "")
        lines.append(f"| {r['name']} | {rate} | {r['step_s'] * 1e3:.1f} ms | {r['flops'] / 1e12:.3f} | "
                     f"{r['achieved_tflops']:.2f} | {mfu} | {gib(r['peak_gib'])} | <= {gib(r['plan_gib'])} | "
                     f"{r['verdict']} |")
    times = {r["name"]: r["step_s"] for r in results}
    if {"stage 1, live teacher", "stage 1, cached F16"} <= set(times):
        lines += ["", f"Cached F16 / live teacher step time (stage 1): "
                      f"{times['stage 1, cached F16'] / times['stage 1, live teacher']:.3f}."]
    lines += ["", "MFU counts the model FLOPs of the step (FlopCounterMode: matmuls, convolutions, attention; the "
              "teacher forward included when it runs) against the data-sheet peak. The plan is `step_memory.py`'s "
              f"traced step peak + persistent states (+ {PLAN_SLACK - 1:.0%}); PASS when the measured peak "
              "(`torch.cuda.max_memory_allocated`) is within it."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; the defaults not given come from the two experiments' configs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="image,video", help="image (stage 1) and/or video (stage 2)")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=None,
                   help="stage 1: images per step (default: experiment=edgetam_distill's data.batch_size)")
    p.add_argument("--checkpointing", default=None,
                   help="stage 1: none | heads | full (default: the experiment's model.activation_checkpointing)")
    p.add_argument("--masks", type=int, default=64, help="stage 1: masks per image (paper: 64)")
    p.add_argument("--clicks", type=int, default=7, help="stage 1: correction clicks (decoder passes = 1 + clicks)")
    p.add_argument("--modes", default="live,cached", help="stage 1: live (teacher runs), cached (teacher F16 in the "
                   "batch)")
    p.add_argument("--clips", type=int, default=None,
                   help="stage 2: clips per step (default: experiment=edgetam_distill_video's data.batch_size)")
    p.add_argument("--frames", type=int, default=None, help="stage 2: frames per clip (default: data.clip_len)")
    p.add_argument("--objects", type=int, default=None, help="stage 2: objects per clip (default: data.max_objects)")
    p.add_argument("--video-checkpointing", default=None,
                   help="stage 2: none | heads | full (default: the video experiment's model.activation_checkpointing)")
    p.add_argument("--no-direct-loss-row", dest="direct_loss_row", action="store_false",
                   help="skip the stage-1 row with the direct mask loss (the lean loss's comparison)")
    p.add_argument("--teacher", default="sam2.1_hiera_b+", help="teacher model (configs/arch/<name>.yaml)")
    p.add_argument("--compile", choices=["none", "encoder", "student"], default="student",
                   help="what of the student torch.compile builds (default: encoder, prompt encoder, mask decoder)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row (compilation happens here)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a functional check, no compile)")
    p.add_argument("--doc", type=Path, default=DOC, help="markdown file whose GPU section is written")
    p.add_argument("--no-doc", action="store_true", help="do not write the markdown section")
    p.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.stages or set(args.stages) - {"image", "video"}:
        p.error(f"--stages must list image and/or video, got {','.join(args.stages)!r}")
    if "image" in args.stages and (not args.modes or set(args.modes) - {"live", "cached"}):
        p.error(f"--modes must list live and/or cached, got {','.join(args.modes)!r}")
    image, video = compose("image"), compose("video")
    defaults = {"batch_size": image.data.batch_size, "checkpointing": image.model.activation_checkpointing,
                "clips": video.data.batch_size, "frames": video.data.clip_len, "objects": video.data.max_objects,
                "video_checkpointing": video.model.activation_checkpointing}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value if isinstance(value, str) else int(value))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the profile; 0 when every row passes, 1 on a FAIL or out of memory, 2 without CUDA or on bad arguments."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse's usage errors
        return int(e.code or 0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_profile: CUDA is not available here (torch.cuda.is_available() is False): run it on a machine with "
              "an NVIDIA GPU, or pass --device cpu for a small functional check", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_tflops(name, args.peak_tflops)
    results = []
    for stage, run in (("image", stage_one), ("video", stage_two)):
        if stage not in args.stages:
            continue
        try:
            results += run(args, device, peak)
        except torch.cuda.OutOfMemoryError:
            what = (f"{args.batch_size} image(s) x {args.masks} masks" if stage == "image" else
                    f"{args.clips} clip(s) x {args.frames} frames x {args.objects} objects")
            print(f"gpu_profile: out of memory with {what} at {args.image_size}² (stage "
                  f"{1 if stage == 'image' else 2}): lower the batch or the masks / objects", file=sys.stderr)
            return 1
    compiled = ", ".join(COMPILED[args.compile]) if device.type == "cuda" else ""
    info = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python scripts/bench/gpu_profile.py",
                                                                    *(argv if argv is not None else sys.argv[1:])]),
            "device": name, "peak": f"{peak:g} TFLOP/s" if peak else "unknown", "torch": torch.__version__,
            "images": args.batch_size, "masks": args.masks, "size": args.image_size, "clicks": args.clicks,
            "checkpointing": args.checkpointing, "clips": args.clips, "frames": args.frames,
            "objects": args.objects, "video_checkpointing": args.video_checkpointing, "teacher": args.teacher,
            "compiled": compiled}
    if not args.no_doc:
        update_section(args.doc, "gpu_profile", render(results, info))
        print(f"gpu_profile: wrote its section of {args.doc}")
    if args.json:
        rows = [{"name": f"gpu_profile {r['name']}: {r['unit']}, {args.image_size}² bf16, {name}",
                 "value": round(r["rate"], 2), "unit": "img/s" if r["stage"] == 1 else "clips/s",
                 "goal": f"peak <= {r['plan_gib']:.1f} GiB", "passed": r["verdict"] == "PASS",
                 "detail": (f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU: peak unknown")
                 + f"; peak {gib(r['peak_gib'])}"} for r in results]
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [r["name"] for r in results if r["verdict"] != "PASS"]
    print(f"gpu_profile: {len(results) - len(failed)}/{len(results)} rows PASS"
          + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
