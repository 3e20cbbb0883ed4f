#!/usr/bin/env python
"""The lean full-resolution mask loss (``model.loss.task_loss.mask_loss=lean``) against the direct one, in one run.

1. **Equality**: focal, dice, IoU and the gradients into the low-res logits of :func:`lean_mask_terms` vs the direct
   path (upsample every candidate, then torchvision's focal / dice / IoU), on random, all-empty, all-full and tiny
   targets (fp32: goal <= 1e-5 relative), and with bf16 logits (the documented tolerance: values 1e-5 relative,
   gradients 1e-2 relative, bf16's own resolution being ~4e-3); then the whole :class:`TaskLoss` of 8 passes.
2. **Memory** (``step_memory.py``'s fake-tensor trace, 1024², bf16, 64 masks x 8 passes, 1 image): the step's traced
   peak with ``heads`` and ``none`` checkpointing, direct vs lean, and the loss's own share of the peak (bytes live
   at the peak that were allocated inside ``distill/losses.py`` / ``distill/mask_loss.py``); then the largest
   per-device batch that fits 80 GB with >= 15 % free, per setting.
3. **Time** (real tensors, ``--size`` 512², ``--masks`` 16 masks x 8 passes, ``--threads`` 1, interleaved repetitions):
   forward + backward of the stage-1 step, today's default (``heads`` + direct) vs the new defaults, and a stage-2
   8-frame clip step (3 objects) the same way.

    python scripts/bench/lean_loss.py [--doc]     # --doc: write the "Lean mask loss" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _memtrace
import torch
from _timing import interleaved
from run_all import update_section
from step_memory import GPU_BYTES, MARGIN, RUNTIME_BYTES, Job, build, estimate, gib, worst_case_plans

from edgetam_train.distill.losses import TaskLoss, direct_mask_terms
from edgetam_train.distill.mask_loss import lean_mask_terms
from edgetam_train.distill.prompting import PromptStep

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "lean_loss"
LOSS_FILES = ("distill/losses.py", "distill/mask_loss.py")
TIME_GOAL = 0.75      # new default step time / today's default (heads + direct)
MEMORY_GOAL_GIB = 5.0  # heads + lean, per image at 1024²
SHARE_GOAL = 0.10     # the loss's share of that peak


# ------------------------------------------------------------------------------------------------------ 1. equality
TARGET_KINDS = ("random", "empty", "full", "tiny")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (in fp32; 1e-12 floor on the denominator)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def target_masks(kind: str, n: int, s: int, generator: torch.Generator,
                 tiny: tuple[int, int] = (100, 50)) -> torch.Tensor:
    """(n, 1, s, s) bool targets of one of :data:`TARGET_KINDS`: random (40 % on), all empty, all full, or one pixel
    (``tiny``: its (y, x)); the random draw is made for every kind, so the generator advances the same way."""
    t = torch.rand(n, 1, s, s, generator=generator) > 0.6
    if kind == "empty":
        t[:] = False
    elif kind == "full":
        t[:] = True
    elif kind == "tiny":
        t[:] = False
        t[:, :, tiny[0], tiny[1]] = True
    return t


def equality() -> list[dict[str, Any]]:
    """Max relative differences (values, gradients) lean vs direct per target kind and dtype."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for kind in TARGET_KINDS:
            g = torch.Generator().manual_seed(0)
            n, m, h, s = 8, 3, 64, 256
            low = (torch.randn(n, m, h, h, generator=g) * 4).to(dtype).requires_grad_(True)
            t = target_masks(kind, n, s, g)
            w_f, w_d = torch.randn(n, m, generator=g), torch.randn(n, m, generator=g)
            f, d, i = direct_mask_terms(low, t)
            (f * w_f + d * w_d).sum().backward()
            g_direct, low.grad = low.grad.clone(), None
            lf, ld, li = lean_mask_terms(low, t, chunk_elements=3 * m * s * s)
            (lf * w_f + ld * w_d).sum().backward()
            rows.append({"dtype": str(dtype).removeprefix("torch."), "targets": kind,
                         "focal": relative_difference(lf, f), "dice": relative_difference(ld, d),
                         "iou": relative_difference(li, i),
                         "grad": relative_difference(low.grad, g_direct)})
    # the whole TaskLoss over 8 passes (best of 3, IoU head, object score), as the step calls it
    g = torch.Generator().manual_seed(1)
    n, m, h, s = 16, 3, 64, 256
    targets = torch.rand(n, 1, s, s, generator=g) > 0.5
    targets[3] = False
    leaves = [(torch.randn(n, m, h, h, generator=g) * 3, torch.rand(n, m, generator=g), torch.randn(n, 1, generator=g))
              for _ in range(8)]
    out = {}
    for kind in ("direct", "lean"):
        params = [tuple(x.clone().requires_grad_(True) for x in leaf) for leaf in leaves]
        terms = TaskLoss(supervise_all_iou=True, mask_loss=kind)(
            [PromptStep(a, b, c, None, None) for a, b, c in params], targets, num_objects=n)
        terms["loss_task"].backward()
        out[kind] = (terms, torch.cat([x.grad.flatten() for p in params for x in p]))
    rows.append({"dtype": "float32", "targets": "TaskLoss, 8 passes",
                 "focal": relative_difference(out["lean"][0]["loss_mask"], out["direct"][0]["loss_mask"]),
                 "dice": relative_difference(out["lean"][0]["loss_dice"], out["direct"][0]["loss_dice"]),
                 "iou": relative_difference(out["lean"][0]["loss_iou"], out["direct"][0]["loss_iou"]),
                 "grad": relative_difference(out["lean"][1], out["direct"][1])})
    return rows


# ------------------------------------------------------------------------------------------------------ 2. memory
class LossShare(_memtrace.LiveBytes):
    """:class:`LiveBytes` that also counts, at the peak, the bytes of storages created by an op called from the
    loss's Python code (``LOSS_FILES``: the forward of both paths and the lean path's backward)."""

    last: LossShare | None = None  # the tracker of the latest trace (estimate() builds it inside traced_peak)

    def __init__(self) -> None:
        super().__init__()
        self.loss_live = 0
        self.loss_at_peak = 0
        LossShare.last = self

    def created(self, storage, n: int) -> None:  # noqa: ANN001
        if any(f.filename.replace("\\", "/").endswith(LOSS_FILES) for f in traceback.extract_stack(limit=16)):
            self.loss_live += n
            weakref.finalize(storage, self._loss_free, n)

    def new_peak(self) -> None:
        self.loss_at_peak = self.loss_live

    def _loss_free(self, n: int) -> None:
        self.loss_live -= n


def memory(batches: bool) -> list[dict[str, Any]]:
    rows = []
    original = _memtrace.LiveBytes
    for level in ("heads", "none"):
        for loss in ("direct", "lean"):
            _memtrace.LiveBytes = LossShare
            try:
                r = estimate(Job("image", 1, level=level, loss=loss))
            finally:
                _memtrace.LiveBytes = original
            share = LossShare.last.loss_at_peak / max(LossShare.last.peak, 1)
            rows.append({"level": level, "loss": loss, "peak": r["peak"], "device": r["device"],
                         "top": r["top"][:3], "loss_share": share})
            print(f"memory {level:5s} {loss:6s}: step peak {gib(r['peak'])}, device {gib(r['device'])}, "
                  f"loss share {rows[-1]['loss_share']:.1%}", flush=True)
    if batches:
        for r in rows:
            r["max_batch"] = max_batch(r["level"], r["loss"], r)
            print(f"  largest batch on 80 GB with 15 % free ({r['level']}, {r['loss']}): {r['max_batch']}", flush=True)
    return rows


def max_batch(level: str, loss: str, one: dict[str, Any]) -> int:
    """Largest per-device batch whose traced device total stays <= 85 % of 80 GB (checked by tracing it)."""
    budget = (1 - MARGIN) * GPU_BYTES
    per_image = one["peak"]
    static = one["device"] - one["peak"]
    b = max(1, int((budget - static) // per_image))
    while b > 1 and estimate(Job("image", b, level=level, loss=loss))["device"] > budget:
        b -= 1
    return b if one["device"] <= budget else 0


# ------------------------------------------------------------------------------------------------------ 3. time
def step_time(stage: str, settings: dict[str, tuple[str, str]], size: int, masks: int, reps: int,
              warmup: int) -> dict[str, float]:
    """Median seconds of forward + backward of one step per named (checkpointing level, mask loss): one module
    (student, live teacher), the setting switched in place before each call, so only one model is in memory."""
    from edgetam_train.distill.efficiency import apply_activation_checkpointing

    job = Job(stage, 1, precision="32-true", level="none", size=size, masks=masks if stage == "image" else None,
              frames=8 if stage == "video" else None, objects=3 if stage == "video" else None)
    module, batch, _, _ = build(job)
    module.train()
    task_loss = module.loss.task_loss

    def runner(level: str, loss: str) -> Callable[[], None]:
        def run() -> None:
            task_loss.mask_loss = loss
            apply_activation_checkpointing(module.student, task_loss, level)
            torch.manual_seed(1)
            module.student.zero_grad(set_to_none=True)
            with worst_case_plans():
                module.clip_step(batch).losses["loss"].backward()

        return run

    times = interleaved({name: runner(*setting) for name, setting in settings.items()}, reps=reps, warmup=warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--masks", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="stage-1 repetitions (0: skip stage 1's timing)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--video-reps", type=int, default=2, help="stage-2 clip repetitions (0: skip stage 2)")
    p.add_argument("--no-batches", action="store_true", help="skip the largest-batch search (several traces)")
    p.add_argument("--doc", action="store_true", help="write the section of docs/benchmarks.md")
    p.add_argument("--json", type=Path, default=None, help="rows for run_all.py")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    eq = equality()
    worst = max(max(r["focal"], r["dice"], r["iou"], r["grad"]) for r in eq if r["dtype"] == "float32")
    for r in eq:
        print(f"equality {r['dtype']:8s} {r['targets']:18s} focal {r['focal']:.1e} dice {r['dice']:.1e} "
              f"iou {r['iou']:.1e} grad {r['grad']:.1e}")
    print(f"lean_loss equality fp32: max rel diff {worst:.1e} (goal <= 1e-5) {'PASS' if worst <= 1e-5 else 'FAIL'}")

    mem = memory(not args.no_batches)
    lean_heads = next(r for r in mem if r["level"] == "heads" and r["loss"] == "lean")
    mem_ok = lean_heads["peak"] <= MEMORY_GOAL_GIB * 2**30 and (lean_heads["loss_share"] or 0) <= SHARE_GOAL
    print(f"lean_loss memory heads+lean: {gib(lean_heads['peak'])} per image (goal <= {MEMORY_GOAL_GIB} GiB), loss "
          f"share {lean_heads['loss_share']:.1%} (goal <= {SHARE_GOAL:.0%}) {'PASS' if mem_ok else 'FAIL'}")

    settings = {"heads+direct (old default)": ("heads", "direct"), "heads+lean": ("heads", "lean"),
                "none+lean": ("none", "lean"), "none+direct": ("none", "direct")}
    image = step_time("image", settings, args.size, args.masks, args.reps, args.warmup) if args.reps > 0 else {}
    base = image.get("heads+direct (old default)")
    for name, sec in image.items():
        print(f"time stage 1 {name:28s} {sec:7.2f} s  {sec / base:.2f}x", flush=True)
    video = {}
    if args.video_reps > 0:
        video = step_time("video", settings, args.size, args.masks, args.video_reps, args.warmup)
        for name, sec in video.items():
            print(f"time stage 2 {name:28s} {sec:7.2f} s  {sec / video['heads+direct (old default)']:.2f}x",
                  flush=True)
    best_new = min(image["heads+lean"], image["none+lean"]) / base if image else float("nan")
    if image:
        print(f"lean_loss time: new default / old default = {best_new:.2f} (goal <= {TIME_GOAL}) "
              f"{'PASS' if best_new <= TIME_GOAL else 'FAIL'}")
    elapsed = time.perf_counter() - t0

    if args.doc and image:
        update_section(DOC, SECTION, doc_section(eq, mem, image, video, args, elapsed))
        print(f"wrote the {SECTION} section of {DOC}")
    if args.json:
        args.json.write_text(json.dumps([
            {"bench": "lean_loss", "metric": "equality_max_rel_fp32", "value": worst},
            {"bench": "lean_loss", "metric": "heads_lean_peak_gib", "value": lean_heads["peak"] / 2**30},
            {"bench": "lean_loss", "metric": "heads_lean_loss_share", "value": lean_heads["loss_share"]},
            {"bench": "lean_loss", "metric": "new_over_old_step_time", "value": best_new}]))
    return 0


def doc_section(eq, mem, image, video, args, elapsed) -> str:  # noqa: ANN001
    lines = ["## Lean mask loss", "",
             f"`python scripts/bench/lean_loss.py --doc` ({elapsed / 60:.0f} min on this machine, "
             f"{args.threads} thread(s) for the timings; the memory rows are traces, independent of the machine).", "",
             "Equality, lean vs direct (max relative difference; IoU exact when 0):", "",
             "| dtype | targets | focal | dice | IoU | gradient |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['targets']} | {r['focal']:.1e} | {r['dice']:.1e} | {r['iou']:.1e} | "
              f"{r['grad']:.1e} |" for r in eq]
    lines += ["", "Memory of one stage-1 step per image (1024², bf16, 64 masks x 8 passes; `step_memory.py`'s fake "
              "trace), the loss's share of the peak, and the largest per-device batch with >= 15 % of 80 GB free "
              f"(device total = batch x step peak + weights/optimiser states + {gib(RUNTIME_BYTES)} runtime):", "",
              "| checkpointing | mask loss | step peak / image | loss share of the peak | largest at the peak | "
              "largest batch on 80 GB |", "|---|---|---|---|---|---|"]
    for r in mem:
        top = ", ".join(f"{k} {gib(v)}" for k, v in r["top"])
        lines.append(f"| {r['level']} | {r['loss']} | {gib(r['peak'])} | {r['loss_share']:.0%} | {top} | "
                     f"{r.get('max_batch', '-')} |")
    base_i, base_v = image["heads+direct (old default)"], video.get("heads+direct (old default)")
    lines += ["", f"Step time, forward + backward, fp32, {args.threads} thread(s), median of interleaved "
              f"repetitions; stage 1: {args.size}², {args.masks} masks x 8 passes; stage 2: an 8-frame clip, "
              "3 objects, the worst prompt plan:", "",
              "| setting | stage 1 s/step | vs old default | stage 2 s/step | vs old default |",
              "|---|---|---|---|---|"]
    for name in image:
        stage2 = f"{video[name]:.2f} | {video[name] / base_v:.2f}x" if video else "- | -"
        lines.append(f"| {name} | {image[name]:.2f} | {image[name] / base_i:.2f}x | {stage2} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
