"""On-device formats side by side: size, CPU latency of encoder and decoder, max |Δ logits| and mask IoU vs PyTorch.

Exports one checkpoint (or random EdgeTAM weights) in each format whose toolchain is installed, then, in one run
with interleaved repetitions (scripts/bench/_timing.py), times the image encoder and the prompt decoder of PyTorch
(fused, the predictor's ``--fuse``) and of every export, and compares each export's decoder logits and masks with
PyTorch on a few images with one click (IoU of the best mask). Prints a markdown table (docs/benchmarks.md).

    python scripts/bench/export_runtimes.py --formats onnx executorch --image-size 1024 [--ckpt edgetam.pt]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved  # noqa: E402

from edgetam_train.export.ondevice_export import export_ondevice  # noqa: E402
from edgetam_train.export.onnx import fuse_for_export  # noqa: E402
from edgetam_train.models.build import build_model  # noqa: E402
from edgetam_train.predictor.runtimes import ExportedModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["onnx", "executorch", "tflite"])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--ckpt", type=Path, default=None, help="official .pt (default: random EdgeTAM weights)")
    parser.add_argument("--images", type=int, default=3, help="images for the accuracy columns")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows for run_all's table here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_model("edgetam", image_size=args.image_size, checkpoint=args.ckpt).eval()
    fused = fuse_for_export(model)
    s = args.image_size
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, s, s, generator=gen) for _ in range(args.images)]
    click = (torch.tensor([[[0.5 * s, 0.45 * s]]]), torch.ones(1, 1, dtype=torch.int32))
    with torch.no_grad():
        ref = []
        for x in images:
            f = model.encode_image(x)
            emb = f.f16 + model.no_mem_embed.view(1, -1, 1, 1)
            ref.append(model.heads(emb, f.high_res, click, None, True)[0])
    rows, fns = {}, {}
    feats0 = fused.encode_image(images[0])
    emb0 = feats0.f16 + fused.no_mem_embed.view(1, -1, 1, 1)
    fns["torch/encoder"] = lambda: fused.encode_image(images[0])
    fns["torch/decoder"] = lambda: fused.heads(emb0, feats0.high_res, click, None, True)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            out = Path(tmp) / fmt
            try:
                export_ondevice(model, out, fmt)
            except ImportError as err:
                print(f"skipping {fmt}: {err}", file=sys.stderr)
                continue
            manifest = json.loads((out / "manifest.json").read_text())
            exported = ExportedModel(out)
            diffs, ious = [], []
            for x, r in zip(images, ref):
                f = exported.encode_image(x)
                got = exported.heads(f.image_embeddings, f.high_res, click, None, True)[0]
                diffs.append(float((got - r).abs().max()))
                for a, b in zip(r[0] > 0, got[0] > 0):  # each of the 3 candidate masks
                    ious.append(float((a & b).sum()) / max(float((a | b).sum()), 1.0))
            sizes = {n: p["bytes"] / 1e6 for n, p in manifest["parts"].items()}
            rows[fmt] = {"MB": sum(sizes.values()), "enc MB": sizes["image_encoder"], "dlogit": max(diffs),
                         "iou": min(ious)}
            f0 = exported.encode_image(images[0])
            fns[f"{fmt}/encoder"] = (lambda e=exported: e.encode_image(images[0]))
            fns[f"{fmt}/decoder"] = (lambda e=exported, f=f0: e.heads(f.image_embeddings, f.high_res, click, None,
                                                                          True))
        with torch.no_grad():
            times = interleaved(fns, reps=args.reps, warmup=1)
    print("| format | size MB (all / encoder) | encoder ms | decoder ms | max abs Δ logits | min mask IoU |")
    print("|---|---|---|---|---|---|")
    print(f"| torch (fused) | - | {1e3 * median(times['torch/encoder']):.0f} | "
          f"{1e3 * median(times['torch/decoder']):.1f} | 0 | 1 |")
    for fmt, r in rows.items():
        print(f"| {fmt} | {r['MB']:.1f} / {r['enc MB']:.1f} | {1e3 * median(times[f'{fmt}/encoder']):.0f} | "
              f"{1e3 * median(times[f'{fmt}/decoder']):.1f} | {r['dlogit']:.2g} | {r['iou']:.4f} |")
    print(f"\n{s}x{s}, {torch.get_num_threads()} CPU threads, {args.images} images (normalised N(0,1) pixels) with one "
          f"click, medians of {args.reps} interleaved repetitions", flush=True)
    if args.json:
        torch_ms = 1e3 * median(times["torch/encoder"])
        out = [{"name": f"{fmt} encoder ms/frame ({s}px)", "value": round(1e3 * median(times[f"{fmt}/encoder"]), 1),
                "unit": "ms", "goal": None, "passed": r["iou"] >= 0.99,
                "detail": f"torch {torch_ms:.0f} ms; decoder {1e3 * median(times[f'{fmt}/decoder']):.1f} ms; "
                          f"{r['MB']:.1f} MB; max |Δ logits| {r['dlogit']:.2g}; min mask IoU {r['iou']:.4f}"}
               for fmt, r in rows.items()]
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
