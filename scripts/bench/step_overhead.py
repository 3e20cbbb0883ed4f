#!/usr/bin/env python
"""Benchmark a Lightning training step against a bare PyTorch loop on the same DistillationModule.

Both sides compute the same loss (``DistillationModule.clip_step``) on the same fixed batch, with the same AdamW and
LR scheduler (the Trainer's own instances), the same gradient clipping (norm 0.1) and the same autocast context:

- **bare**: ``next(loader)``, ``zero_grad(set_to_none=True)``, ``clip_step``, ``backward``, ``clip_grad_norm_``,
  ``optimizer.step()``, ``scheduler.step()``;
- **lightning**: one iteration of ``Trainer.fit`` with the quick-start configuration (``experiment=edgetam_distill
  debug=quickstart``: its callbacks, CSV logger, progress bar, logging cadence), i.e. everything Lightning and our
  callbacks add around the same computation (``training_step``'s ``self.log`` calls, hooks, loop bookkeeping).

Interleaved in one run: after every Lightning step a callback runs one bare step and times it. A Lightning step is the
interval between two consecutive ``on_train_batch_start`` hooks minus the bare step run inside it, so both series see
the same machine load over time. The first ``--warmup`` steps of each are dropped; medians are compared (means are
printed too: they include the periodic work, e.g. checkpoints every 20 steps and mask pictures every 10).

Prints ``step_overhead: lightning/bare = x.xx (goal <= 1.05) PASS|FAIL`` last (exit status 1 on FAIL). Default settings
(256 px, SAM 2.1-T teacher with random weights, 1 image x 3 masks, 1 + 7 prompts, 20 steps of each, 1 CPU thread)
take about 1.5 minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from edgetam_train.config import CONFIG_DIR
from edgetam_train.data.datasets.fixed_batch import FixedBatch
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.distill.module import DistillationModule
from edgetam_train.run.train import _instantiate_list

REPO = Path(__file__).resolve().parents[2]

GOAL = 1.05


class Interleave(Callback):
    """Times Lightning iterations (batch start to next batch start) and runs one timed bare step after each.

    Args:
        loader: the bare loop's own DataLoader (same dataset as Lightning's).
        clip: gradient-clipping norm of the bare step (the Trainer's ``gradient_clip_val``).
    """

    def __init__(self, loader: DataLoader, clip: float) -> None:
        self.loader, self.clip = loader, clip
        self.iterator = iter(loader)
        self.lightning: list[float] = []
        self.bare: list[float] = []
        self._start: float | None = None
        self._bare_in_this_step = 0.0

    @staticmethod
    def _sync(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        if self._start is not None:
            self.lightning.append(now - self._start - self._bare_in_this_step)
        self._start, self._bare_in_this_step = now, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        t0 = time.perf_counter()
        self.bare_step(trainer, pl_module)
        self._sync(pl_module)
        dt = time.perf_counter() - t0
        self.bare.append(dt)
        self._bare_in_this_step = dt

    def bare_step(self, trainer: pl.Trainer, module: DistillationModule) -> None:
        """A plain PyTorch step with the Trainer's optimizer and scheduler on the same module."""
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        batch = {k: v.to(module.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        optimizer.zero_grad(set_to_none=True)
        with trainer.precision_plugin.forward_context():
            losses = module.clip_step(batch).losses
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def make_batch(root: Path, image_size: int, images: int, masks: int) -> dict:
    """A fixed batch of the first ``images`` sample images, ``masks`` masks each, no flip."""
    ds = SA1BDataset(root, image_size=image_size, max_masks=masks, hflip_p=0.0, index_cache=root.parent / "idx.txt")
    return collate_sa1b([ds[i] for i in range(images)])


def main(argv: list[str] | None = None) -> bool:
    """Run the benchmark; returns True when the median ratio meets the goal."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="Lightning steps (and as many bare steps), after warmup")
    p.add_argument("--warmup", type=int, default=3, help="steps of each kind dropped at the start")
    p.add_argument("--images", type=int, default=1, help="images in the fixed batch")
    p.add_argument("--masks", type=int, default=3, help="masks per image")
    p.add_argument("--clicks", type=int, default=7, help="correction clicks (decoder passes = 1 + clicks)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--teacher", default="sam2.1_hiera_t", help="teacher config (configs/arch/<name>.yaml)")
    p.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    p.add_argument("--precision", default="32-true", help="Lightning precision (e.g. bf16-mixed on a GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); 1 keeps the timings "
                   "steady on a shared machine, where 2 OpenMP threads on 2 busy cores stall at every barrier")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides (e.g. callbacks=none)")
    p.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory(prefix="step_overhead_") as tmp:
        tmp = Path(tmp)
        make_sample_data(["--out", str(tmp / "data" / "sample"), "--num-images", str(max(args.images, 1))])
        batch = make_batch(tmp / "data" / "sample" / "sa1b", args.image_size, args.images, args.masks)

        total = args.steps + args.warmup + 1
        overrides = ["experiment=edgetam_distill", "debug=quickstart", f"paths.root_dir={tmp}",
                     f"paths.output_dir={tmp / 'run'}", f"arch@model.teacher.net={args.teacher}",
                     f"model.student.image_size={args.image_size}", f"model.teacher.net.image_size={args.image_size}",
                     f"model.prompts.num_correction_clicks={args.clicks}", f"trainer.max_steps={total}",
                     f"trainer.accelerator={args.accelerator}", f"trainer.precision={args.precision}",
                     *args.override]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = compose("train", overrides=overrides)
        torch.manual_seed(0)
        module: DistillationModule = instantiate(cfg.model, _convert_="partial")

        dataset = FixedBatch(batch, total)
        probe = Interleave(DataLoader(dataset, batch_size=None), clip=float(cfg.trainer.gradient_clip_val))
        callbacks = _instantiate_list(cfg.get("callbacks"), "callback") + [probe]
        loggers = _instantiate_list(cfg.get("logger"), "logger")
        trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=DataLoader(dataset, batch_size=None))
        wall = time.perf_counter() - t0

    lightning = probe.lightning[args.warmup:]
    bare = probe.bare[args.warmup:len(probe.lightning)]  # pairs: bare step i ran inside Lightning step i
    med_l, med_b = statistics.median(lightning), statistics.median(bare)
    ratio = med_l / med_b
    device = "cpu" if args.accelerator == "cpu" else torch.cuda.get_device_name(0)
    print(f"device {device} ({torch.get_num_threads()} threads), {args.image_size} px, {args.images} image(s) x "
          f"{args.masks} masks, 1 + {args.clicks} prompts, teacher {args.teacher}, precision {args.precision}, "
          f"fit wall {wall:.1f}s")
    print(f"lightning step: median {med_l * 1e3:8.1f} ms  mean {statistics.mean(lightning) * 1e3:8.1f} ms  "
          f"(n={len(lightning)})")
    print(f"bare step     : median {med_b * 1e3:8.1f} ms  mean {statistics.mean(bare) * 1e3:8.1f} ms  (n={len(bare)})")
    print(f"overhead      : median {(med_l - med_b) * 1e3:+.1f} ms per step")
    ok = ratio <= GOAL
    print(f"step_overhead: lightning/bare = {ratio:.2f} (goal <= {GOAL:g}) {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps([{
            "name": f"step_overhead: Lightning/bare step time, {args.image_size} px, {args.images} image x "
                    f"{args.masks} masks", "value": round(ratio, 3), "unit": "x", "goal": f"<= {GOAL:g}",
            "passed": ok, "detail": f"overhead {(med_l - med_b) * 1e3:+.1f} ms per step"}], indent=1))
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
