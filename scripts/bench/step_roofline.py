#!/usr/bin/env python
"""Step efficiency on this CPU (a stand-in for MFU): achieved GFLOP/s of a stage-1 step over the core's fp32 GEMM peak.

In one run, on ``--threads`` threads: (1) the fp32 GEMM peak, the best of several ``torch.mm`` of ``--gemm`` x
``--gemm`` matrices; (2) the FLOPs of one stage-1 step (student forward + backward, live teacher forward), counted
with ``FlopCounterMode`` as ``model_speed.py`` / ``teacher_cache.py`` do; (3) the median time of that step, and of its
parts measured alone: the teacher's forward, the student's image-encoder forward, the rest (decoder passes with their
losses) = the step's forward minus those two, and the backward = the step minus its forward. Ratio = FLOPs / step time /
GEMM peak. Goal: >= 0.6.

    python scripts/bench/step_roofline.py [--size 256] [--masks 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from teacher_cache import build_module, step_flops, synthetic_batch

from edgetam_train.distill import cache_teacher
from edgetam_train.distill.teacher import FrozenTeacher

GOAL = 0.6


def gemm_peak(n: int, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of ``torch.mm`` on n x n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def median_time(fn, steps: int) -> float:
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--masks", type=int, default=16)
    p.add_argument("--clicks", type=int, default=7)
    p.add_argument("--teacher", default="sam2.1_hiera_b+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gemm", type=int, default=1024)
    p.add_argument("--json", type=Path, help="write the result row (for run_all.py) to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = gemm_peak(args.gemm)
    teacher = FrozenTeacher(cache_teacher.build_teacher(args.teacher, args.size, None, 0), allow_random_init=True)
    module = build_module(args.size, teacher, args.clicks)
    batch = synthetic_batch(args.size, args.masks)
    flops = step_flops(module, batch, teacher)

    def step() -> None:
        module.student.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        losses = module.clip_step(batch).losses
        losses["loss"].backward()

    t_step = median_time(step, args.steps)
    t_teacher = median_time(lambda: teacher.encode_image(batch["images"]), args.steps)
    t_encoder = median_time(lambda: module.student.encode_image(batch["images"]), args.steps)

    def forward() -> None:
        torch.manual_seed(0)
        module.clip_step(batch)

    t_forward = median_time(forward, args.steps)
    decoder = t_forward - t_teacher - t_encoder
    backward = t_step - t_forward
    achieved = flops / t_step / 1e9
    ratio = achieved / peak
    detail = (f"{flops / 1e9:.1f} GFLOP/step in {t_step:.2f}s = {achieved:.1f} GFLOP/s vs GEMM peak {peak:.1f}; "
              f"time: teacher fwd {t_teacher / t_step:.0%}, student encoder fwd {t_encoder / t_step:.0%}, "
              f"decoder passes + losses fwd {decoder / t_step:.0%}, backward {backward / t_step:.0%}")
    print(f"step_roofline: {detail}")
    print(f"step_roofline: achieved/peak = {ratio:.3f} (goal >= {GOAL}) {'PASS' if ratio >= GOAL else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps([{
            "name": f"step_roofline: stage-1 step GFLOP/s / fp32 GEMM peak, {args.size}², 1 x {args.masks} masks x "
                    f"{1 + args.clicks} passes, {args.threads} thread(s)", "value": round(ratio, 3), "unit": "x",
            "goal": f">= {GOAL}", "passed": ratio >= GOAL, "detail": detail}], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
