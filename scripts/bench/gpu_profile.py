#!/usr/bin/env python
"""Stage-1 training throughput on a GPU: images/s and model FLOP utilisation (MFU) at 1024² in bf16, with
``torch.compile`` on the student, with the live SAM 2.1 teacher and with cached teacher F16 (``data.teacher_cache``).

One step = ``zero_grad``, ``DistillationModule.clip_step`` under bf16 autocast (as ``trainer=gpu``: student image
encoder, 1 + ``--clicks`` prompted decoder passes for each of ``--masks`` masks per image, task + F16 loss; the
teacher encodes the batch in the live mode), ``backward``, AdamW ``step``, on a synthetic batch of ``--batch-size``
images (random pixels, rectangular masks: the work does not depend on the content). Random weights (seed 0).

- FLOPs per step are counted once, eagerly, before compiling: ``FlopCounterMode`` (Lightning's ``measure_flops``)
  over the student's forward + backward and the teacher's forward (matmuls, convolutions, attention).
- Step time: median of ``--steps`` synchronised steps after ``--warmup`` (the compiled graphs are built then).
- MFU = FLOPs per step / step time / the GPU's peak dense bf16 FLOP/s: a table by device name (H100 SXM / PCIe /
  NVL, H200, GH200, B200, A100, L40S; ``--peak-tflops`` overrides or supplies it).

Defaults come from ``experiment=edgetam_distill``: the per-device ``data.batch_size`` and
``model.activation_checkpointing``. Each mode's measured peak (``torch.cuda.max_memory_allocated``) is compared with
the memory plan of ``step_memory.py`` for the same step (traced step peak + persistent states, + 10 %): a PASS/FAIL
line per mode (stage 1 only; the stage-2 clip step is not profiled here yet).

Writes (or replaces) the "GPU profile" section of docs/benchmarks.md (``--doc``; ``--no-doc`` to skip) and, with
``--json FILE``, rows for ``run_all.py``. Without CUDA it exits with status 2 and says so; ``--device cpu`` runs the
same code (small sizes, no compile) as a functional check. Stage-1 activations are large: see docs/benchmarks.md
"Memory plan" (~10.4 GiB per image at 1024² bf16 with the decoder passes checkpointed, ~55 GiB without).

    python scripts/bench/gpu_profile.py                          # 1024², the experiment's batch x 64 masks, B+, compiled
    python scripts/bench/gpu_profile.py --batch-size 2 --compile encoder --peak-tflops 989
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

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from run_all import DOC, update_section  # noqa: E402
from teacher_cache import build_module, step_flops, synthetic_batch  # noqa: E402

from edgetam_train.distill import cache_teacher  # noqa: E402
from edgetam_train.distill.efficiency import apply_activation_checkpointing
from edgetam_train.distill.optim import build_optimizer
from edgetam_train.distill.teacher import FrozenTeacher

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


def compile_student(module, what: str) -> list[str]:
    """``torch.compile`` parts of the student in place (``nn.Module.compile``: state-dict keys unchanged); returns
    the compiled submodule names. ``encoder``: the image encoder; ``student``: also the prompt encoder and the mask
    decoder (their point count changes across correction passes: one static graph per count)."""
    parts = {"none": [], "encoder": ["image_encoder"],
             "student": ["image_encoder", "sam_prompt_encoder", "sam_mask_decoder"]}[what]
    if "sam_mask_decoder" in parts:  # one graph per prompt-token count: 1 + clicks points, boxes, padding point
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for name in parts:
        # heads with static shapes: their dynamic-shape graphs failed an inductor stride check (torch 2.14.1, CPU)
        getattr(module.student, name).compile(**({} if name == "image_encoder" else {"dynamic": False}))
    return parts


def profile_mode(module, optimizer, batch: dict, teacher: FrozenTeacher | None, steps: int, warmup: int,
                 device: torch.device) -> dict[str, float]:
    """Median step time and peak memory of training steps on ``batch`` (``teacher`` None: cached F16 in the batch)."""
    object.__setattr__(module, "teacher", teacher)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses, _ = module.clip_step(batch)
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


def count_flops(module, batch: dict, teacher: FrozenTeacher | None, device: torch.device) -> int:
    """FLOPs of one step (student forward + backward, teacher forward when given), counted eagerly under the same
    autocast as the timed steps."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return step_flops(module, batch, teacher)


def render(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The GPU-profile section of docs/benchmarks.md."""
    lines = ["## GPU profile (`gpu_profile.py`)", "",
             f"Last run: {info['date']}, `{info['command']}`.", "",
             f"- device: {info['device']} (peak dense bf16 {info['peak']}), torch {info['torch']}",
             f"- step: {info['images']} image(s) x {info['masks']} masks at {info['size']}², 1 + {info['clicks']} "
             f"decoder passes per mask, bf16 autocast, AdamW; teacher {info['teacher']}; torch.compile: "
             f"{info['compiled'] or 'none'}", "",
             "| mode | images/s | step (median) | TFLOP per step | achieved TFLOP/s | MFU | peak memory | plan | "
             "result |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "— (peak unknown: --peak-tflops)"
        lines.append(f"| {r['mode']} | {r['images_per_s']:.2f} | {r['step_s'] * 1e3:.1f} ms | "
                     f"{r['flops'] / 1e12:.2f} | {r['achieved_tflops']:.1f} | {mfu} | {r['peak_gib']:.1f} GiB | "
                     f"<= {r['plan_gib']:.1f} GiB | {r['verdict']} |")
    if len(results) == 2:
        lines += ["", f"Cached F16 / live teacher step time: {results[1]['step_s'] / results[0]['step_s']:.3f}."]
    lines += ["", "MFU counts the model FLOPs of the step (FlopCounterMode: matmuls, convolutions, attention; the "
              "teacher forward included in the live mode) against the data-sheet peak."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the profile; 0 on success, 2 without CUDA (or on bad arguments)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: experiment=edgetam_distill's data.batch_size)")
    p.add_argument("--checkpointing", default=None,
                   help="none | heads | full (default: the experiment's model.activation_checkpointing)")
    p.add_argument("--masks", type=int, default=64, help="masks per image (paper: 64)")
    p.add_argument("--clicks", type=int, default=7, help="correction clicks (decoder passes = 1 + clicks)")
    p.add_argument("--teacher", default="sam2.1_hiera_b+", help="teacher model (configs/arch/<name>.yaml)")
    p.add_argument("--modes", default="live,cached", help="live (teacher runs), cached (teacher F16 in the batch)")
    p.add_argument("--compile", choices=["none", "encoder", "student"], default="student",
                   help="what of the student torch.compile builds (default: encoder, prompt encoder, mask decoder)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode (compilation happens here)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a functional check, no compile)")
    p.add_argument("--doc", type=Path, default=DOC, help="markdown file whose GPU section is written")
    p.add_argument("--no-doc", action="store_true", help="do not write the markdown section")
    p.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = p.parse_args(argv)
    import step_memory

    defaults = step_memory.compose("image")
    if args.batch_size is None:
        args.batch_size = int(defaults.data.batch_size)
    if args.checkpointing is None:
        args.checkpointing = str(defaults.model.activation_checkpointing)
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
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"live", "cached"}:
        print(f"gpu_profile: --modes must list live and/or cached, got {args.modes!r}", file=sys.stderr)
        return 2

    teacher = FrozenTeacher(cache_teacher.build_teacher(args.teacher, args.image_size, None, 0),
                            allow_random_init=True).to(device)
    module = build_module(args.image_size, teacher, args.clicks).to(device)
    apply_activation_checkpointing(module.student, module.loss.task_loss, args.checkpointing)
    plan = step_memory.estimate(step_memory.Job("image", args.batch_size, "bf16-mixed", args.checkpointing,
                                                args.image_size, masks=args.masks))
    print(f"gpu_profile: memory plan for {args.batch_size} image(s) x {args.masks} masks at {args.image_size}², "
          f"checkpointing {args.checkpointing}: step peak {plan['peak'] / 2**30:.1f} GiB (step_memory.py)")
    optimizer = build_optimizer(module.student, lr=4e-4, weight_decay=0.1)
    batch = {k: v.to(device) for k, v in synthetic_batch(args.image_size, args.masks, args.batch_size).items()}
    side = args.image_size // 16
    batches = {"live": (batch, teacher),
               "cached": ({**batch, "teacher_f16": torch.randn(args.batch_size, 256, side, side, device=device,
                                                               dtype=torch.float16)}, None)}
    oom = (f"gpu_profile: out of memory with {args.batch_size} image(s) x {args.masks} masks at "
           f"{args.image_size}²: lower --batch-size or --masks")
    try:
        flops = {m: count_flops(module, *batches[m], device) for m in modes}
    except torch.cuda.OutOfMemoryError:
        print(oom, file=sys.stderr)
        return 1
    compiled = compile_student(module, args.compile) if device.type == "cuda" else []
    results = []
    for mode in modes:
        try:
            r = profile_mode(module, optimizer, *batches[mode], args.steps, args.warmup, device)
        except torch.cuda.OutOfMemoryError:
            print(f"{oom} (mode {mode})", file=sys.stderr)
            return 1
        achieved = flops[mode] / r["step_s"] / 1e12
        results.append({"mode": "live teacher" if mode == "live" else "cached F16 (no teacher)", **r,
                        "flops": flops[mode], "images_per_s": args.batch_size / r["step_s"],
                        "achieved_tflops": achieved, "mfu": achieved / peak if peak else None})
        # PASS: the measured peak is within the plan's traced step peak + persistent states (+ 10 %)
        bound = (plan["peak"] + plan["static"]) * 1.10 / 2**30
        verdict = "n/a (CPU)" if device.type != "cuda" else ("PASS" if r["peak_gib"] <= bound else "FAIL")
        results[-1]["plan_gib"], results[-1]["verdict"] = bound, verdict
        print(f"gpu_profile {mode}: peak {r['peak_gib']:.1f} GiB vs plan <= {bound:.1f} GiB: {verdict}")
        print(f"gpu_profile {mode}: {results[-1]['images_per_s']:.2f} images/s, step {r['step_s'] * 1e3:.1f} ms "
              f"(min {r['min_s'] * 1e3:.1f}, warm-up {r['warmup_s']:.0f}s), {flops[mode] / 1e12:.2f} TFLOP/step, "
              f"{achieved:.1f} TFLOP/s" + (f", MFU {achieved / peak:.1%} of {peak:g}" if peak else "") +
              f", peak memory {r['peak_gib']:.1f} GiB")
    info = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python scripts/bench/gpu_profile.py",
                                                                    *(argv if argv is not None else sys.argv[1:])]),
            "device": name, "peak": f"{peak:g} TFLOP/s" if peak else "unknown", "torch": torch.__version__,
            "images": args.batch_size, "masks": args.masks, "size": args.image_size, "clicks": args.clicks,
            "teacher": args.teacher, "compiled": ", ".join(compiled)}
    if not args.no_doc:
        update_section(args.doc, "gpu_profile", render(results, info))
        print(f"gpu_profile: wrote its section of {args.doc}")
    if args.json:
        rows = [{"name": f"gpu_profile {r['mode']}: images/s, {args.image_size}² bf16, {args.batch_size} x "
                         f"{args.masks} masks, {name}", "value": round(r["images_per_s"], 2), "unit": "img/s",
                 "goal": None, "passed": None,
                 "detail": f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU: peak unknown"} for r in results]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
