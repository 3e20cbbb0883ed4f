#!/usr/bin/env python
"""Student trunks compared in one run: which timm trunk to distil for a device (issue 16).

Per trunk (``configs/arch/edgetam*.yaml``, random weights, ``pretrained=False``):

- **params**: the whole student (EdgeTAM with that trunk) and the trunk alone;
- **GFLOPs**: the image encoder (trunk + FPN neck) on one 1024 x 1024 image, counted by ``torch.utils.flop_counter``
  (a multiply-add = 2 FLOPs), unfused;
- **CPU encoder time**: ``encode_image`` of one ``--size`` image (default 1024) with the trunk fused for inference
  (``reparameterize``, as the predictors and the ONNX export run it), 1 thread; median of ``--reps`` repetitions
  interleaved across trunks, so every trunk sees the same machine load;
- **stage-1 step**: one training step of the student on the quick-start setting (256 px, 1 image x 3 masks, 1 + 7
  prompted decoder passes, task loss, AdamW), median of interleaved repetitions, **relative to RepViT-M1**. The
  teacher is left out: its cost is the same whatever the student's trunk (live: add the teacher's forward; cached:
  nothing), so the ratio shows what the trunk changes.

Prints a markdown table; ``--doc docs/benchmarks.md`` writes it into the ``trunks`` section there, ``--json FILE``
the rows for ``run_all.py``. ``--quick``: 512 px encoder timing, 2 reps, 2 steps. About 4 minutes on 2 busy cores.

    python scripts/bench/trunks.py --doc docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from _timing import interleaved
from run_all import update_section
from torch.utils.flop_counter import FlopCounterMode

from edgetam_train.models.build import build_model
from edgetam_train.models.trunk import reparameterize

REPO = Path(__file__).resolve().parents[2]

ARCHS = ("edgetam", "edgetam_repvit_m0_9", "edgetam_repvit_m2_3", "edgetam_mobilenetv4", "edgetam_efficientvit",
         "edgetam_fastvit")
REFERENCE = "edgetam"  # RepViT-M1, the paper's student


def encoder_gflops(arch: str, size: int = 1024) -> float:
    """Image-encoder GFLOPs of ``arch`` on one ``size``² image (unfused, eval)."""
    model = build_model(arch, image_size=size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.image_encoder(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def step_modules(archs: list[str], root: Path, image_size: int = 256):
    """Per arch: (DistillationModule without teacher on the quick-start recipe, AdamW) and one fixed batch."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from edgetam_train.config import CONFIG_DIR
    from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
    from edgetam_train.data.synthetic import make_sample_data

    make_sample_data(["--out", str(root / "sample"), "--num-images", "1", "--formats", "sa1b"])
    dataset = SA1BDataset(root / "sample" / "sa1b", image_size=image_size, max_masks=3, hflip_p=0.0,
                          index_cache=root / "idx.txt")
    batch = collate_sa1b([dataset[0]])
    modules = {}
    for arch in archs:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = compose("train", overrides=["experiment=edgetam_distill", "debug=quickstart",
                                              f"paths.root_dir={root}", f"arch@model.student={arch}",
                                              "model.teacher=null", "model.prompts.num_correction_clicks=7"])
        torch.manual_seed(0)
        module = instantiate(cfg.model, _convert_="partial").train()
        modules[arch] = (module, torch.optim.AdamW(module.student.parameters(), lr=1e-4))
    return modules, batch


def train_step(module, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    losses = module.clip_step(batch).losses
    losses["loss"].backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="*", default=list(ARCHS), help="configs/arch names (the first is not special; "
                   f"ratios are to {REFERENCE}, which is always measured)")
    p.add_argument("--size", type=int, default=1024, help="image side of the CPU encoder timing")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per trunk (interleaved)")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per trunk (interleaved)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="512 px encoder timing, 2 reps, 2 steps")
    p.add_argument("--doc", type=Path, help="write the table into this file's trunks section")
    p.add_argument("--json", type=Path, help="write rows for run_all.py")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.reps, args.steps = 512, 2, 2
    archs = list(dict.fromkeys([REFERENCE, *args.archs]))
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    rows: dict[str, dict] = {}
    encoders, image = {}, torch.randn(1, 3, args.size, args.size)
    for arch in archs:
        model = build_model(arch, image_size=args.size).eval()
        trunk = model.image_encoder.trunk
        rows[arch] = {"trunk": trunk.name, "params": sum(p.numel() for p in model.parameters()),
                      "trunk_params": sum(p.numel() for p in trunk.parameters()),
                      "channels": trunk.channel_list, "gflops": encoder_gflops(arch)}
        reparameterize(trunk)
        encoders[arch] = model
        print(f"{arch}: {rows[arch]['gflops']:.1f} GFLOPs", flush=True)

    @torch.no_grad()
    def encode(model):
        return lambda: model.encode_image(image)

    times = interleaved({a: encode(m) for a, m in encoders.items()}, reps=args.reps, warmup=1)
    for arch in archs:
        rows[arch]["encoder_ms"] = statistics.median(times[arch]) * 1e3
    del encoders

    with tempfile.TemporaryDirectory(prefix="bench_trunks_") as tmp:
        modules, batch = step_modules(archs, Path(tmp))
        steps = interleaved({a: (lambda m=m, o=o: train_step(m, o, batch)) for a, (m, o) in modules.items()},
                            reps=args.steps, warmup=1)
    ref_step = statistics.median(steps[REFERENCE])
    for arch in archs:
        rows[arch]["step_s"] = statistics.median(steps[arch])
        rows[arch]["step_ratio"] = rows[arch]["step_s"] / ref_step
        rows[arch]["encoder_ratio"] = rows[arch]["encoder_ms"] / rows[REFERENCE]["encoder_ms"]

    table = render(rows, args)
    print(table)
    if args.doc:
        update_section(args.doc, "trunks", table)
        print(f"wrote the trunks section of {args.doc}")
    if args.json:
        args.json.write_text(json.dumps([{
            "name": f"trunks: stage-1 step time {r['trunk']} / repvit_m1, 256 px", "value": round(r["step_ratio"], 3),
            "unit": "x", "goal": None, "passed": None,
            "detail": f"{r['gflops']:.1f} GFLOPs at 1024², encoder {r['encoder_ms']:.0f} ms at {args.size} px"}
            for a, r in rows.items() if a != REFERENCE], indent=1))
    return 0


def render(rows: dict[str, dict], args: argparse.Namespace) -> str:
    """The markdown section: one row per trunk."""
    lines = [
        "## Student trunks (`trunks.py`)", "",
        f"Last run: `python scripts/bench/trunks.py{' --quick' if args.quick else ''}`, "
        f"{datetime.date.today().isoformat()}, CPU, {args.threads} thread(s); random weights. Encoder time: "
        f"fused trunk + neck, one {args.size}² image, median of {args.reps} interleaved repetitions. Step: one "
        f"stage-1 student step (256², 1 image x 3 masks, 1 + 7 decoder passes, task loss, AdamW; the teacher's "
        f"cost is the same for every trunk and left out), median of {args.steps}, relative to RepViT-M1 in the same "
        f"run.", "",
        "| arch (`arch@model.student=`) | timm trunk | channels (low-res first) | student params | trunk params "
        f"| encoder GFLOPs at 1024² | CPU encoder ms at {args.size}² (vs M1) | stage-1 step vs RepViT-M1 |",
        "|---|---|---|---|---|---|---|---|"]
    for arch, r in rows.items():
        lines.append(f"| {arch} | {r['trunk']} | {r['channels']} | {r['params'] / 1e6:.2f} M | "
                     f"{r['trunk_params'] / 1e6:.2f} M | {r['gflops']:.1f} | {r['encoder_ms']:.0f} "
                     f"({r['encoder_ratio']:.2f}x) | {r['step_ratio']:.2f}x ({r['step_s']:.2f} s) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
