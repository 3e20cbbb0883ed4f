#!/usr/bin/env python
"""DDP scaling: training throughput of 1 process vs 2 CPU processes (gloo) on the same global batch.

Both sides train the quick-start stage-1 step (``DistillationModule.clip_step``: student + frozen teacher, 1 + N
decoder passes, F16 distillation) on the same fixed global batch of sample images, with AdamW and gradient clipping
0.1, in freshly started processes with the same number of torch threads each:

- **1 process**: the whole global batch per step, no process group (what ``trainer=cpu`` runs);
- **2 processes**: each rank takes half of the batch, the module is wrapped in ``DistributedDataParallel``
  (``find_unused_parameters=True`` as ``trainer=ddp``), gradients are all-reduced over gloo; the loss normaliser
  (objects per rank) is all-reduced as in training.

Throughput = global batch / median step time after ``--warmup`` steps. Prints
``ddp_scaling: 2-proc / 1-proc throughput = x.xx`` (2.0 would be perfect scaling on 2 free cores). The machine's load
average is printed: on shared cores the ratio is noisy, and below 2 when other work competes for the cores.

``--gpu`` (on a CUDA machine) instead measures 1 GPU images/s of the paper's stage-1 step: 1024², bf16 autocast,
``--gpu-batch`` images x ``--gpu-masks`` masks, SAM 2.1-B+ teacher (random weights), 1 + 7 prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.distill.module import DistillationModule
from edgetam_train.distill.optim_select import make_optimizer

REPO = Path(__file__).resolve().parents[2]


def write_sample_images(out: Path, images: int, masks: int) -> Path:
    """SA-1B-format sample images (scripts/make_sample_data.py) with at least ``masks`` masks each; returns the root."""
    make_sample_data(["--out", str(out), "--formats", "sa1b", "--num-images", str(images), "--min-masks", str(masks),
              "--max-masks", str(max(masks, 12))])
    return out / "sa1b"


def build_module(image_size: int, teacher: str, clicks: int) -> DistillationModule:
    """The quick-start DistillationModule at ``image_size`` with a randomly initialised ``teacher`` (seed 0)."""
    overrides = ["experiment=edgetam_distill", "debug=quickstart", "paths.root_dir=/tmp/unused",
                 "paths.output_dir=/tmp/unused/out", f"arch@model.teacher.net={teacher}",
                 f"model.student.image_size={image_size}", f"model.teacher.net.image_size={image_size}",
                 f"model.prompts.num_correction_clicks={clicks}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="partial")


def load_batch(root: Path, image_size: int, indices: list[int], masks: int, device: torch.device) -> dict[str, Any]:
    """The collated batch of sample images ``indices`` (``masks`` masks each, no flip), on ``device``."""
    ds = SA1BDataset(root, image_size=image_size, max_masks=masks, hflip_p=0.0, index_cache=root.parent / "idx.txt")
    batch = collate_sa1b([ds[i] for i in indices])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class LossOf(torch.nn.Module):
    """``forward(batch)`` = the distillation loss: what DDP wraps (the teacher is not a submodule: no gradients)."""

    def __init__(self, module: DistillationModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.module.clip_step(batch).losses["loss"]


def time_steps(module: DistillationModule, batch: dict[str, Any], steps: int, warmup: int, ddp: bool,
               bf16: bool) -> list[float]:
    """Seconds per optimiser step (forward, backward, clip 0.1, AdamW) for ``steps`` steps after ``warmup``."""
    device = module.device
    if module.teacher is not None:
        module.teacher.to(device)
    model: torch.nn.Module = LossOf(module)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = make_optimizer(module.optimizer_spec, module.student)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def cpu_worker(rank: int, world: int, port: int, args: argparse.Namespace, root: str, out: str) -> None:
    """One CPU process of the comparison: rank ``rank`` of ``world`` trains on its share of the global batch."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        per_rank = args.global_batch // world
        module = build_module(args.image_size, args.teacher, args.clicks)
        batch = load_batch(Path(root), args.image_size, list(range(rank * per_rank, (rank + 1) * per_rank)),
                           args.masks, torch.device("cpu"))
        times = time_steps(module, batch, args.steps, args.warmup, ddp=world > 1, bf16=False)
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        if world > 1:
            dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cpu(args: argparse.Namespace, root: Path, tmp: Path, world: int) -> list[float]:
    """Step times of rank 0 with ``world`` CPU processes (spawned fresh, also for world 1)."""
    out = tmp / f"times_{world}.json"
    mp.start_processes(cpu_worker, args=(world, free_port(), args, str(root), str(out)), nprocs=world,
                       start_method="spawn")
    return json.loads(out.read_text())


def load_note() -> str:
    load1, _, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    note = f"load average {load1:.2f} on {cores} cores"
    return note + (" (busy: other work competes for the cores, the ratio is understated)" if load1 > 0.5 else "")


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--global-batch", type=int, default=4, help="images per step, split across the processes")
    p.add_argument("--masks", type=int, default=3, help="masks per image")
    p.add_argument("--clicks", type=int, default=7, help="correction clicks (decoder passes = 1 + clicks)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--teacher", default="sam2.1_hiera_t", help="teacher config (configs/arch/<name>.yaml)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--gpu", action="store_true", help="measure 1 GPU images/s at --gpu-size, bf16, instead")
    p.add_argument("--gpu-size", type=int, default=1024)
    p.add_argument("--gpu-batch", type=int, default=8, help="images per step on the GPU")
    p.add_argument("--gpu-masks", type=int, default=64, help="masks per image on the GPU (paper: <= 64)")
    p.add_argument("--gpu-teacher", default="sam2.1_hiera_b+", help="teacher on the GPU (paper: SAM 2.1-B+)")
    p.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows: list[dict[str, Any]] = []
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as tmp:
        tmp = Path(tmp)
        if args.gpu:
            if not torch.cuda.is_available():
                p.error("--gpu needs a CUDA device")
            root = write_sample_images(tmp / "sample", args.gpu_batch, args.gpu_masks)
            device = torch.device("cuda")
            torch.backends.cuda.matmul.allow_tf32 = True
            module = build_module(args.gpu_size, args.gpu_teacher, args.clicks).to(device)
            batch = load_batch(root, args.gpu_size, list(range(args.gpu_batch)), args.gpu_masks, device)
            times = time_steps(module, batch, args.steps, args.warmup, ddp=False, bf16=True)
            ips = args.gpu_batch / statistics.median(times)
            name = torch.cuda.get_device_name(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"gpu {name}: {args.gpu_size} px bf16, {args.gpu_batch} images x {args.gpu_masks} masks, 1 + "
                  f"{args.clicks} prompts, teacher {args.gpu_teacher}: median step {statistics.median(times):.3f} s, "
                  f"peak memory {peak:.1f} GiB")
            print(f"ddp_scaling: 1 GPU = {ips:.1f} images/s")
            result = {"gpu_images_per_s": ips}
            rows.append({"name": f"1 GPU images/s, {args.gpu_size} px bf16, batch {args.gpu_batch}", "value":
                         round(ips, 2), "unit": "images/s", "goal": None, "passed": None,
                         "detail": f"{name}, peak {peak:.1f} GiB"})
        else:
            if args.global_batch % 2:
                p.error("--global-batch must be even (split over 2 processes)")
            root = write_sample_images(tmp / "sample", args.global_batch, args.masks)
            print(f"global batch {args.global_batch} images x {args.masks} masks, {args.image_size} px, 1 + "
                  f"{args.clicks} prompts, teacher {args.teacher}, {args.threads} torch thread(s) per process; "
                  f"{(before := load_note())}")
            ips = {}
            for world in (1, 2):
                times = run_cpu(args, root, tmp, world)
                ips[world] = args.global_batch / statistics.median(times)
                print(f"{world} process{'es' if world > 1 else ''}: {ips[world]:6.2f} images/s (median step "
                      f"{statistics.median(times):.2f} s, {args.global_batch // world} images per process, "
                      f"n={len(times)})")
            ratio = ips[2] / ips[1]
            after = load_note()
            print(f"after: {after}")
            print(f"ddp_scaling: 2-proc / 1-proc throughput = {ratio:.2f} (2.00 = perfect scaling on 2 free cores)")
            result = {"images_per_s_1": ips[1], "images_per_s_2": ips[2], "ratio": ratio}
            rows.append({"name": f"ddp_scaling: 2 CPU processes / 1, global batch {args.global_batch}, "
                                 f"{args.image_size} px", "value": round(ratio, 3), "unit": "x",
                         "goal": None, "passed": None,  # informational: shared cores make it vary with the load
                         "detail": f"{ips[1]:.2f} vs {ips[2]:.2f} images/s; before: {before}; after: {after}"})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return result


if __name__ == "__main__":
    main()
