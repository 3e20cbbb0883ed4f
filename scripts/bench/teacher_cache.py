#!/usr/bin/env python
"""Stage-1 training step with the teacher F16 cache vs with the live teacher, on the same batch, in one run (CPU).

Setup: SA-1B-format images are generated (``make_sample_data``, ``--masks`` annotations each), a cache is built for
them with ``edgetam-cache-teacher`` (SAM 2.1-B+ by default, random weights of seed 0, both views), and one batch of
``--images`` images (the first one flipped) is loaded through ``SA1BDataset`` with that cache. Both sides then run the
same ``DistillationModule`` step on it: ``zero_grad``, ``clip_step`` (student encoder, 1 + ``--clicks`` prompted
decoder passes per mask, loss), ``backward``, AdamW ``step``, with the same prompts (seeded):

- **live**: the frozen teacher encodes the batch (stage 1 without a cache);
- **cached**: no teacher; the batch's F16 is read from the cache (the read, from the memory-mapped shards, is timed as
  part of the step; in training it happens in the DataLoader workers).

Before timing, the cached F16 is compared with the live teacher's (max relative difference, float16 rounding) and the
two losses are compared. Steps alternate (live, cached, cached, live, ...) after ``--warmup`` untimed ones; medians are
compared. The FLOPs of both steps are counted too (``FlopCounterMode`` through Lightning's ``measure_flops``), which
shows the ceiling of the saving: the teacher's share of a step's FLOPs.

``--masks`` takes several values (each one a configuration; the first is the reported ratio): the default ``64 4``
measures the paper's recipe (64 masks x 8 decoder passes, where the per-mask decoder work dominates) and a light
step where the teacher weighs most. Prints ``teacher_cache: cached/live = x.xx (goal <= 0.35) PASS|FAIL`` last;
``--json FILE`` writes the rows for ``run_all.py``. Defaults (256 px, B+, 1 image): about 3 minutes on 1 CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import interleaved
from lightning.fabric.utilities.throughput import measure_flops

from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.teacher_cache import TeacherCache
from edgetam_train.distill import cache_teacher
from edgetam_train.distill.losses import DistillationLoss, TaskLoss
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.optim import build_optimizer
from edgetam_train.distill.prompting import PromptConfig
from edgetam_train.distill.teacher import FrozenTeacher
from edgetam_train.models.build import build_model

REPO = Path(__file__).resolve().parents[2]

GOAL = 0.35


def make_sample_data(out: Path, images: int, masks: int, size: str) -> Path:
    """Generate ``images`` SA-1B-format images with about ``masks`` annotations each; returns the sa1b directory."""
    from edgetam_train.data.synthetic import make_sample_data as generate
    generate(["--out", str(out), "--num-images", str(images), "--formats", "sa1b", "--size", size,
              "--min-masks", str(masks), "--max-masks", str(masks + 2)])
    return out / "sa1b"


def build_module(image_size: int, teacher: FrozenTeacher, clicks: int, seed: int = 1) -> DistillationModule:
    """The stage-1 module: EdgeTAM student (seeded), the given frozen teacher, L_task + 1.0·MSE(F16)."""
    torch.manual_seed(seed)
    student = build_model("edgetam", image_size=image_size)
    return DistillationModule(student, teacher, DistillationLoss(lambda_f16=1.0, task_loss=TaskLoss()),
                              PromptConfig(num_correction_clicks=clicks))


def step_fn(module: DistillationModule, optimizer: torch.optim.Optimizer, batch: dict, teacher: FrozenTeacher | None,
            before: Callable[[dict], dict] | None = None) -> Callable[[], dict]:
    """One training step on ``batch`` with ``teacher`` (None: the batch's ``teacher_f16`` is used); ``before`` maps
    the batch first (the cache read). Returns a function giving the detached loss terms."""

    def run() -> dict:
        b = before(batch) if before is not None else batch
        object.__setattr__(module, "teacher", teacher)
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same prompts on both sides
        losses = module.clip_step(b).losses
        losses["loss"].backward()
        optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    return run


def step_flops(module: DistillationModule, batch: dict, teacher: FrozenTeacher | None) -> int:
    """FLOPs of one step's forward + backward (teacher forward included when ``teacher`` is given)."""
    object.__setattr__(module, "teacher", teacher)
    torch.manual_seed(0)
    flops = measure_flops(module, lambda: module.clip_step(batch).losses, lambda losses: losses["loss"])
    module.student.zero_grad(set_to_none=True)
    return flops


def synthetic_batch(size: int, masks: int, images: int = 1) -> dict:
    """``images`` random images with ``masks`` rectangular objects each, as ``collate_sa1b`` batches them (the work
    of a step does not depend on the content)."""
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(images * masks, size, size, dtype=torch.bool)
    for i in range(images * masks):
        y, x = (i * 37) % (size // 2), (i * 53) % (size // 2)
        gt[i, y:y + size // 4, x:x + size // 3] = True
    return {"images": torch.randn(images, 3, size, size, generator=g), "masks": gt,
            "obj_to_img": torch.arange(images).repeat_interleave(masks),
            "num_objects": torch.full((images,), masks, dtype=torch.int64)}


def projected_flops(size: int, masks: int, teacher_name: str, clicks: int) -> dict[str, float]:
    """FLOPs of one live and one cached step at ``size`` with ``masks`` masks per image, from counts at 1 and 2 masks
    (the decoder passes and the loss work per object, so a step's FLOPs are linear in the number of objects)."""
    teacher = FrozenTeacher(cache_teacher.build_teacher(teacher_name, size, None, 0), allow_random_init=True)
    module = build_module(size, teacher, clicks)
    one, two = (step_flops(module, synthetic_batch(size, m), None) for m in (1, 2))
    images = synthetic_batch(size, 1)["images"]
    with torch.no_grad():
        t = measure_flops(teacher.net, lambda: teacher.encode_image(images))
    cached = one + (masks - 1) * (two - one)
    return {"cached": cached, "live": cached + t, "teacher": t}


def run_config(sa1b: Path, cache: TeacherCache, teacher: FrozenTeacher, args: argparse.Namespace,
               masks: int) -> dict[str, Any]:
    """Measure one (image size, masks) configuration; returns the numbers printed and reported."""
    ds = SA1BDataset(sa1b, image_size=args.image_size, max_masks=masks, hflip_p=0.5, teacher_cache=cache,
                     index_cache=sa1b.parent / "index.txt")
    items = [ds[i] for i in range(len(ds))]
    items.sort(key=lambda it: not it["flipped"])  # a flipped image first: both views are exercised
    batch = collate_sa1b(items[:args.images])
    rows = [ds.files.index(Path(p).relative_to(sa1b).as_posix()) for p in batch["paths"]]
    live_batch = {k: v for k, v in batch.items() if k != "teacher_f16"}

    def read_cache(b: dict) -> dict:
        f16 = [cache.read(r, bool(f)) for r, f in zip(rows, b["flipped"])]
        return {**b, "teacher_f16": torch.stack(f16)}

    module = build_module(args.image_size, teacher, args.clicks)
    optimizer = build_optimizer(module.student, lr=1e-5, weight_decay=0.1)
    with torch.no_grad():
        live_f16 = teacher.encode_image(batch["images"]).f16
        f16_rel = ((batch["teacher_f16"].float() - live_f16).abs().max() / live_f16.abs().max()).item()
        check = {}
        for name, (b, t) in {"live": (live_batch, teacher), "cached": (batch, None)}.items():
            object.__setattr__(module, "teacher", t)
            torch.manual_seed(0)
            check[name] = module.clip_step(b).losses["loss"]
    loss_rel = abs(check["cached"] - check["live"]).item() / abs(check["live"]).item()
    flops_live = step_flops(module, live_batch, teacher)
    flops_cached = step_flops(module, batch, None)
    with torch.no_grad():
        flops_teacher = measure_flops(teacher.net, lambda: teacher.encode_image(batch["images"]))
    fns = {"live": step_fn(module, optimizer, live_batch, teacher),
           "cached": step_fn(module, optimizer, live_batch, None, before=read_cache)}
    times = interleaved(fns, args.reps, args.warmup)
    t_read = statistics.median(interleaved({"read": lambda: read_cache(batch)}, 20, 1)["read"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"masks": masks, "objects": int(batch["num_objects"].sum()), "f16_rel": f16_rel, "loss_rel": loss_rel,
            "live_s": med["live"], "cached_s": med["cached"], "read_s": t_read, "ratio": med["cached"] / med["live"],
            "flops_live": flops_live, "flops_cached": flops_cached, "flops_teacher": flops_teacher,
            "flop_ratio": flops_cached / flops_live, "reps": len(times["live"])}


def main(argv: list[str] | None = None) -> bool:
    """Run the benchmark; returns True when the first configuration's ratio meets the goal."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--teacher", default="sam2.1_hiera_b+", help="teacher model (configs/arch/<name>.yaml)")
    p.add_argument("--images", type=int, default=1, help="images per batch")
    p.add_argument("--masks", type=int, nargs="+", default=[64, 4],
                   help="masks per image, one configuration each (the first is the reported ratio)")
    p.add_argument("--clicks", type=int, default=7, help="correction clicks (decoder passes = 1 + clicks)")
    p.add_argument("--reps", type=int, default=5, help="timed steps of each side per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings steady on a shared machine)")
    p.add_argument("--project-size", type=int, default=1024,
                   help="also count FLOPs at this size and project them to the first --masks value (0: skip)")
    p.add_argument("--quick", action="store_true", help="3 reps, masks 16 and 4")
    p.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.masks = 3, [16, 4]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    with tempfile.TemporaryDirectory(prefix="teacher_cache_bench_") as tmp:
        tmp = Path(tmp)
        sa1b = make_sample_data(tmp / "sample", max(args.images, 2), max(args.masks), "640x480")
        t0 = time.perf_counter()
        result = cache_teacher.run(cache_teacher.build_parser().parse_args(
            ["--root", str(sa1b), "--out", str(tmp / "cache"), "--teacher", args.teacher, "--random-init-seed", "0",
             "--image-size", str(args.image_size), "--num-workers", "0", "--batch-size", "1",
             "--index-cache", str(sa1b.parent / "index.txt")]))
        build_s = time.perf_counter() - t0
        assert result["complete"]
        cache = TeacherCache(tmp / "cache")
        # the cache's teacher: same architecture, same random weights
        teacher = FrozenTeacher(cache_teacher.build_teacher(args.teacher, args.image_size, None, 0),
                                allow_random_init=True)
        n_images = len(cache)
        results = [run_config(sa1b, cache, teacher, args, m) for m in args.masks]
    projection = projected_flops(args.project_size, max(args.masks), args.teacher, args.clicks) \
        if args.project_size else None

    print(f"teacher_cache: {args.image_size} px, teacher {args.teacher} (random weights), {args.images} image(s), "
          f"1 + {args.clicks} decoder passes, {torch.get_num_threads()} thread(s), load average {load:.1f} on "
          f"{os.cpu_count()} cores; cache of {n_images} images (2 views) built in {build_s:.1f}s")
    for r in results:
        print(f"  {r['masks']:3d} masks/image ({r['objects']} objects): live {r['live_s'] * 1e3:8.1f} ms   cached "
              f"{r['cached_s'] * 1e3:8.1f} ms (of which cache read {r['read_s'] * 1e3:.2f} ms)   cached/live = "
              f"{r['ratio']:.3f}   (median of {r['reps']})")
        print(f"      FLOPs per step: live {r['flops_live'] / 1e9:7.1f} G, cached {r['flops_cached'] / 1e9:7.1f} G "
              f"(teacher forward {r['flops_teacher'] / 1e9:.1f} G = {r['flops_teacher'] / r['flops_live']:.1%} of the "
              f"live step); FLOP ratio {r['flop_ratio']:.3f}")
        print(f"      checks: max |F16 cached - live| / max |F16| = {r['f16_rel']:.1e} (float16), "
              f"|loss cached - live| / loss = {r['loss_rel']:.1e}")
    if projection:
        print(f"  FLOPs at {args.project_size} px, {max(args.masks)} masks/image (counted at 1 and 2 masks, linear in "
              f"masks): live {projection['live'] / 1e12:.2f} T, cached {projection['cached'] / 1e12:.2f} T, teacher "
              f"forward {projection['teacher'] / 1e9:.0f} G = {projection['teacher'] / projection['live']:.1%}; FLOP "
              f"ratio {projection['cached'] / projection['live']:.3f}")
    head = results[0]
    ok = head["ratio"] <= GOAL
    rows = [{"name": f"teacher_cache: step cached/live, {args.image_size} px, {r['masks']} masks x "
                     f"{1 + args.clicks} passes, {args.teacher}",
             "value": round(r["ratio"], 3), "unit": "x", "goal": f"<= {GOAL}" if i == 0 else None,
             "passed": (r["ratio"] <= GOAL) if i == 0 else None,
             "detail": f"live {r['live_s']:.2f}s, cached {r['cached_s']:.2f}s; FLOP ratio {r['flop_ratio']:.3f} "
                       f"(teacher {r['flops_teacher'] / r['flops_live']:.1%} of the step's FLOPs)"}
            for i, r in enumerate(results)]
    if projection:
        rows.append({"name": f"teacher_cache: FLOPs cached/live, {args.project_size} px, {max(args.masks)} masks x "
                             f"{1 + args.clicks} passes, {args.teacher} (counted, projected in masks)",
                     "value": round(projection["cached"] / projection["live"], 3), "unit": "x", "goal": None,
                     "passed": None,
                     "detail": f"teacher forward {projection['teacher'] / 1e9:.0f} GFLOPs of "
                               f"{projection['live'] / 1e12:.2f} TFLOPs per image-step"})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"teacher_cache: cached/live = {head['ratio']:.2f} (goal <= {GOAL:g}) {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
