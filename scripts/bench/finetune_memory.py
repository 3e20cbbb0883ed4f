#!/usr/bin/env python
"""Fine-tuning memory plan: the largest per-GPU batch that fits 24 / 48 / 80 GB cards, for each SAM 2.1 size and
EdgeTAM, full fine-tuning vs LoRA vs a frozen trunk, with ``heads`` / ``full`` activation checkpointing, at 1024²,
bf16-mixed; and the time per 1,000 steps estimated from the step's FLOPs.

Method: ``step_memory.py``'s fake-tensor trace (``estimate``: one training step, forward + backward, of the
``experiment=finetune`` module, no teacher, 64 masks x 8 decoder passes per image) at batch 1 and 2; the step peak
grows linearly with the batch, so the largest batch B with ``peak(1) + (B - 1) * (peak(2) - peak(1)) + states +
2 GiB runtime <= 85 %`` of the card is reported (0: batch 1 does not fit). States: 24 bytes per *trainable* parameter
(fp32 weight, grad, 2 AdamW moments, DDP bucket, temp) and 4 bytes per frozen one (fp32 weight only).

Time: the step's FLOPs at batch 1 (``torch.utils.flop_counter`` on the same fake step; matmuls and convolutions,
forward + backward; ``full`` checkpointing re-runs the trunk forward, counted as the trace runs it) x 1,000 /
(989 TFLOP/s dense bf16 of an H100 SXM x MFU 0.3, an assumed utilisation for this many small decoder passes).

    python scripts/bench/finetune_memory.py                    # the markdown table of docs/finetune.md
    python scripts/bench/finetune_memory.py --models sam2.1_hiera_t --size 512 --masks 16   # a quicker subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _memtrace import fake_module, traced_peak
from step_memory import MARGIN, REPO, RUNTIME_BYTES, Job, estimate, worst_case_plans
from torch._subclasses.fake_tensor import FakeTensorMode

MODELS = {"sam2.1_hiera_t": "sam2.1_hiera_tiny", "sam2.1_hiera_s": "sam2.1_hiera_small",
          "sam2.1_hiera_b+": "sam2.1_hiera_base_plus", "sam2.1_hiera_l": "sam2.1_hiera_large", "edgetam": "edgetam"}
MODES = {"full": [], "lora": ["model.lora.rank=8"], "frozen trunk": ["model.freeze=[image_encoder.trunk]"]}
CARDS_GB = (24, 48, 80)
PEAK_FLOPS = 989e12  # H100 SXM dense bf16
MFU = 0.3


def build_finetune(model: str, mode: str, level: str, size: int, masks: int, batch: int) -> tuple[Any, dict, int, int]:
    """(module, batch, trainable params, frozen params) of ``experiment=finetune`` for one row; random weights."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from edgetam_train.config import CONFIG_DIR

    overrides = ["experiment=finetune", f"arch@model.student={model}", f"paths.root_dir={REPO}",
                 "model.init_from=null", f"model.student.image_size={size}", f"model.activation_checkpointing={level}",
                 "model.compile=false", f"data.max_masks={masks}", "data.train.annotations=x", "data.train.images=x"]
    if model == "edgetam":
        overrides.append("model.student.image_encoder.trunk.weights=random")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides + MODES[mode])
    torch.manual_seed(0)
    module = instantiate(cfg.model, _convert_="partial")
    gt = torch.zeros(batch * masks, size, size, dtype=torch.bool)
    gt[:, size // 4: size // 2, size // 4: size // 2] = True
    data = {"images": torch.randn(batch, 3, size, size), "masks": gt,
            "obj_to_img": torch.arange(batch).repeat_interleave(masks)}
    params = list(module.student.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return module, data, trainable, sum(p.numel() for p in params) - trainable


def step_flops(built: tuple[Any, dict, int, int]) -> float:
    """FLOPs of one fake training step (forward + backward, bf16 autocast)."""
    from torch.utils.flop_counter import FlopCounterMode

    module, batch = built[0], built[1]
    module.train()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_module(module.student, mode)
    batch = {k: mode.from_tensor(v) for k, v in batch.items()}
    counter = FlopCounterMode(display=False)

    def step() -> None:
        torch.manual_seed(1)
        with counter, torch.autocast("cpu", dtype=torch.bfloat16):
            module.clip_step(batch).losses["loss"].backward()

    with worst_case_plans():
        traced_peak(step, mode)  # the fake step as estimate() runs it (value-reading checks skipped)
    return float(counter.get_total_flops())


def plan_row(model: str, mode: str, level: str, size: int, masks: int) -> dict[str, Any]:
    """Memory at batch 1 and 2, the largest batch per card, trainable parameters, time per 1,000 steps."""
    t0 = time.perf_counter()
    results = []
    for batch in (1, 2):
        built = build_finetune(model, mode, level, size, masks, batch)
        # estimate() counts 24 B per "student" and 4 B per "teacher" parameter: trainable and frozen ones here
        results.append(estimate(Job("image", batch, level=level, size=size, masks=masks), built=built))
    trainable, frozen = built[2], built[3]
    flops = step_flops(build_finetune(model, mode, level, size, masks, 1))
    fixed = results[0]["static"] + RUNTIME_BYTES
    slope = max(results[1]["peak"] - results[0]["peak"], 1)
    fits = {}
    for gb in CARDS_GB:
        room = (1 - MARGIN) * gb * 1e9 - fixed - results[0]["peak"]
        fits[gb] = 0 if room < 0 else 1 + int(room // slope)
    return {"model": model, "mode": mode, "level": level, "trainable": trainable, "total": trainable + frozen,
            "device_b1": results[0]["device"], "per_image": slope, "fits": fits, "flops": flops,
            "hours_per_1000": flops * 1000 / (PEAK_FLOPS * MFU) / 3600, "seconds": time.perf_counter() - t0}


def render_row(r: dict[str, Any]) -> str:
    """One markdown row of :func:`render`."""
    cards = " / ".join(str(r["fits"][gb]) for gb in CARDS_GB)
    return (f"| {r['model']} | {r['mode']} | {r['level']} | {r['trainable'] / 1e6:.2f} M of {r['total'] / 1e6:.1f} M "
            f"| {r['device_b1'] / 2**30:.1f} GiB | {r['per_image'] / 2**30:.1f} GiB | {cards} | "
            f"{r['hours_per_1000'] * 3600:.0f} s |")


def render(rows: list[dict[str, Any]], size: int, masks: int) -> str:
    head = (f"| model | trains | checkpointing | trainable params | GPU memory at batch 1 | + per image | largest "
            f"batch on 24 / 48 / 80 GB | 1,000 steps at batch 1 (H100, MFU {MFU}) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    lines += [render_row(r) for r in rows]
    return "\n".join(lines) + f"\n\n({size}², bf16-mixed, {masks} masks x 8 decoder passes per image, no teacher.)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--levels", nargs="+", default=["heads", "full"], choices=["none", "heads", "full"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="rows for run_all.py (largest batch on 80 GB)")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        for mode in args.modes:
            for level in args.levels:
                rows.append(plan_row(model, mode, level, args.size, args.masks))
                print(f"{render_row(rows[-1])} ({rows[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print(render(rows, args.size, args.masks))
    if args.json is not None:  # one row per plan for docs/benchmarks.md's run_all table
        args.json.write_text(json.dumps([
            {"name": f"finetune_memory: {r['model']} {r['mode']} {r['level']}, largest batch on 80 GB "
                     f"({args.size}², bf16, {args.masks} masks; fake-tensor trace)",
             "value": r["fits"][80], "unit": "images", "goal": ">= 1", "passed": r["fits"][80] >= 1,
             "detail": f"24 / 48 / 80 GB: {' / '.join(str(r['fits'][gb]) for gb in CARDS_GB)}"}
            for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
