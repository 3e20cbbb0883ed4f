"""``edgetam-cache-teacher``: run the frozen teacher once over an SA-1B-format image set and store its F16 (fp16) for
both training views of every image, so that stage 1 (``data.teacher_cache=<dir>``) runs no teacher at all.

Format, manifest and checks: :mod:`edgetam_train.data.teacher_cache`. Examples::

    edgetam-cache-teacher --root data/sa1b --out cache/f16_b+_1024 \\
        --teacher sam2.1_hiera_b+ --checkpoint weights/sam2.1_hiera_base_plus.pt --image-size 1024
    torchrun --nproc_per_node 8 --no-python edgetam-cache-teacher --root ... --out ...      # one GPU per rank
    edgetam-cache-teacher --root data/sample/sa1b --out /tmp/f16 --teacher sam2.1_hiera_t \\
        --random-init-seed 0 --image-size 256                                               # smoke test

- Resumable: shards are written atomically; a re-run with the same arguments skips the shards already there (the
  manifest, written first, must match the arguments; otherwise the run stops naming the field that differs).
- Several processes: shard s goes to rank ``s % world_size`` (``RANK`` / ``WORLD_SIZE`` as set by torchrun, else
  ``SLURM_PROCID`` / ``SLURM_NTASKS``, or ``--rank`` / ``--world-size``); each rank writes only its shards and uses
  GPU ``LOCAL_RANK``. No process group is needed: whichever rank finds every shard written when it finishes marks
  the manifest complete, so ranks may run at different times (e.g. a SLURM array) and a crashed rank is redone by
  re-running it.
- Images that cannot be read are stored as zeros and listed in their shard (the training loader skips them anyway).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from edgetam_train.data import teacher_cache as tc
from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.sa1b import load_index, read_split_file
from edgetam_train.data.skips import BadSample
from edgetam_train.data.transforms import build_augment
from edgetam_train.distributed import env_local_rank, env_rank_and_world
from edgetam_train.imaging import resize_square

log = logging.getLogger("edgetam_train.distill.cache_teacher")


class CacheViews(Dataset):
    """The teacher inputs of the images at ``rows`` of ``files``: the original and (optionally) the flipped view,
    transformed exactly as ``SA1BDataset`` transforms a training image (S×S resize, [flip,] normalise).

    Item: {"row": int, "orig": float32 (3, S, S), "flip": float32 (3, S, S) (zeros when ``flip`` is False),
    "ok": bool (False: the jpg could not be read; the images are zeros)}.
    """

    def __init__(self, root: str | Path, files: Sequence[str], rows: Sequence[int], image_size: int,
                 flip: bool) -> None:
        self.root, self.files, self.rows = Path(root), files, np.asarray(rows, dtype=np.int64)
        self.image_size, self.flip = image_size, flip
        self.plain, self.flipped = build_augment(0.0), build_augment(1.0)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        s = self.image_size
        blank = torch.zeros(3, s, s)
        try:
            image = resize_square(read_image(self.root / self.files[row]), s)
        except BadSample as bad:
            log.warning("unreadable image stored as zeros: %s", bad)
            return {"row": row, "orig": blank, "flip": blank, "ok": False}

        def view(pipeline) -> torch.Tensor:
            return torch.from_numpy(pipeline(image=image)["image"]).permute(2, 0, 1).contiguous()

        return {"row": row, "orig": view(self.plain), "flip": view(self.flipped) if self.flip else blank, "ok": True}


def pick_device(name: str) -> torch.device:
    """``auto``: GPU ``LOCAL_RANK`` (or ``SLURM_LOCALID``) when CUDA is available, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", env_local_rank())
    return torch.device("cpu")


def build_teacher(name: str, image_size: int, checkpoint: str | None, seed: int | None) -> torch.nn.Module:
    """The teacher ``SAM2Model`` in eval mode with frozen weights (random ones drawn after ``manual_seed(seed)``)."""
    from edgetam_train.models.build import build_model

    if checkpoint is None:
        torch.manual_seed(seed)
    model = build_model(name, image_size=image_size, checkpoint=checkpoint)
    return model.requires_grad_(False).eval()


def prepare_manifest(out: Path, spec: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Write the (incomplete) manifest of a new cache, or check that an existing one was made with the same spec."""
    path = out / tc.MANIFEST
    if path.is_file():
        existing = tc.read_manifest(out)
        hint = "the arguments of this run (resume with the same arguments, or write to another --out)"
        tc.raise_on_mismatch(path, existing, spec, hint)
        # not compared at training time, but one cache should not mix shards computed in two precisions
        tc.raise_on_mismatch(path, existing, {"info": {"precision": info["precision"]}}, hint)
        return existing
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**spec, "complete": False, "info": info}
    tc.atomic_write_text(path, json.dumps(manifest, indent=1))
    return manifest


def finalize(out: Path, manifest: dict[str, Any]) -> bool:
    """Mark the manifest complete when every shard is written; returns whether it is complete."""
    total = tc.num_shards(manifest["images"]["count"], manifest["shard_size"])
    if len(tc.written_shards(out)) < total:
        return False
    if not manifest.get("complete"):
        manifest = {**manifest, "complete": True, "num_shards": total}
        tc.atomic_write_text(out / tc.MANIFEST, json.dumps(manifest, indent=1))
    return True


class ShardBuffer:
    """Collects F16 rows of the shards being filled and writes each shard once all its rows arrived."""

    def __init__(self, out: Path, files: Sequence[str], shard_size: int, views: Sequence[str], side: int) -> None:
        self.out, self.files, self.k, self.views, self.side = out, files, shard_size, list(views), side
        self.pending: dict[int, dict[str, Any]] = {}
        self.written = 0

    def add(self, row: int, feats: dict[str, torch.Tensor], ok: bool) -> None:
        """Store the float16 (256, h, w) F16 of each view of image ``row``; write its shard when full."""
        shard, r = divmod(row, self.k)
        entry = self.pending.get(shard)
        if entry is None:
            first = shard * self.k
            count = min(self.k, len(self.files) - first)
            entry = {"count": count, "filled": 0, "bad": [],
                     "views": {v: torch.zeros(count, tc.F16_CHANNELS, self.side, self.side, dtype=torch.float16)
                               for v in self.views}}
            self.pending[shard] = entry
        for v in self.views:
            entry["views"][v][r] = feats[v]
        if not ok:
            entry["bad"].append(r)
        entry["filled"] += 1
        if entry["filled"] == entry["count"]:
            first = shard * self.k
            tc.write_shard(self.out, shard, entry["views"], self.files[first:first + entry["count"]],
                           sorted(entry["bad"]))
            del self.pending[shard]
            self.written += 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgetam-cache-teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="SA-1B directory tree (data.root)")
    p.add_argument("--out", required=True, type=Path, help="cache directory (then train with data.teacher_cache=OUT)")
    p.add_argument("--teacher", default="sam2.1_hiera_b+", help="teacher model (configs/arch/<name>.yaml)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="official SAM 2.1 checkpoint of the teacher (its sha256 is recorded)")
    weights.add_argument("--random-init-seed", type=int, help="random teacher weights drawn with this seed "
                         "(smoke tests only, like model.teacher.allow_random_init)")
    p.add_argument("--image-size", type=int, default=1024, help="S (data.image_size); F16 is (256, S/16, S/16)")
    p.add_argument("--split-file", help="image list (data.split_file) instead of scanning --root")
    p.add_argument("--index-cache", help="file-index cache (data.index_cache)")
    p.add_argument("--shard-size", type=int, default=64, help="images per shard file (64: 256 MiB at 1024²)")
    p.add_argument("--no-flip", action="store_true", help="cache the original view only (train with data.hflip_p=0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per teacher forward (x2 with the flip view)")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding jpgs")
    p.add_argument("--device", default="auto", help="auto (GPU LOCAL_RANK if any, else CPU), cpu, cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="teacher compute precision (auto: bf16 autocast on CUDA, like trainer=gpu; fp32 on CPU)")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: RANK or SLURM_PROCID)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: WORLD_SIZE or SLURM_NTASKS)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Cache this rank's missing shards; returns {"written": shards written now, "skipped": shards already there,
    "complete": whether the whole cache is finished, "seconds": wall time}."""
    from edgetam_train.models.build import model_config

    t_start = time.perf_counter()
    rank, world = env_rank_and_world(args.rank, args.world_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size % tc.F16_STRIDE:
        raise ValueError(f"--image-size {args.image_size} must be a multiple of {tc.F16_STRIDE}")
    files = read_split_file(args.split_file) if args.split_file else load_index(args.root, args.index_cache)
    views = ["orig"] if args.no_flip else list(tc.VIEWS)
    arch = tc.teacher_arch(model_config(args.teacher))
    spec = tc.build_spec(arch=arch, checkpoint_sha256=tc.checkpoint_id(args.checkpoint), image_size=args.image_size,
                         files=files, views=views, shard_size=args.shard_size)
    device = pick_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    info = {"teacher_name": args.teacher, "checkpoint": args.checkpoint, "random_init_seed": args.random_init_seed,
            "precision": precision, "root": str(Path(args.root).resolve()), "split_file": args.split_file,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
    out: Path = args.out
    manifest = prepare_manifest(out, spec, info)

    total = tc.num_shards(len(files), args.shard_size)
    done = tc.written_shards(out)
    mine = [s for s in range(rank, total, world) if s not in done]
    skipped = len(range(rank, total, world)) - len(mine)
    log.info("rank %d/%d: %d images, %d shards of %d; %d of mine already written, %d to do", rank, world, len(files),
             total, args.shard_size, skipped, len(mine))
    written = 0
    if mine:
        rows = np.concatenate([np.arange(s * args.shard_size, min((s + 1) * args.shard_size, len(files)))
                               for s in mine])
        data = CacheViews(args.root, files, rows, args.image_size, flip="flip" in views)
        loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        teacher = build_teacher(args.teacher, args.image_size, args.checkpoint, args.random_init_seed).to(device)
        buffer = ShardBuffer(out, files, args.shard_size, views, args.image_size // tc.F16_STRIDE)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())
        bar = tqdm(total=len(rows), unit="img", desc=f"teacher F16 rank {rank}", disable=rank != 0,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        with torch.inference_mode():
            for batch in loader:
                n = len(batch["row"])
                images = [batch[v] for v in views]
                with autocast:
                    f16 = teacher.encode_image(torch.cat(images).to(device, non_blocking=True)).f16.float()
                half = f16.to(torch.float16)
                if not torch.isfinite(half).all():
                    first = int(batch["row"][0])
                    raise RuntimeError(f"teacher F16 of images {files[first]} ... is not finite in float16 "
                                       f"(max |F16| = {f16.abs().max().item():.3g}): check the teacher weights")
                half = half.cpu().split(n)
                for i in range(n):
                    buffer.add(int(batch["row"][i]), {v: half[j][i] for j, v in enumerate(views)},
                               bool(batch["ok"][i]))
                bar.update(n)
                bar.set_postfix(shards=f"{buffer.written}/{len(mine)}")
        bar.close()
        if buffer.pending:
            raise RuntimeError(f"shards {sorted(buffer.pending)} were not filled (internal error)")
        written = buffer.written
    complete = finalize(out, manifest)
    seconds = time.perf_counter() - t_start
    log.info("rank %d: wrote %d shards in %.1fs; cache %s", rank, written, seconds,
             "complete" if complete else "waiting for other ranks' shards")
    return {"written": written, "skipped": skipped, "complete": complete, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 when this rank's shards are written (the cache may await other ranks), 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (tc.TeacherCacheMismatch, FileNotFoundError, ValueError) as err:
        print(f"edgetam-cache-teacher: {err}", file=sys.stderr)
        return 2
    state = "complete" if result["complete"] else "incomplete: other ranks' shards are missing"
    print(f"edgetam-cache-teacher: {args.out}: wrote {result['written']} shards, {result['skipped']} already there; "
          f"cache {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
