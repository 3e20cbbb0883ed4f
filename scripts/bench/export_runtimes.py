"""On-device formats side by side: size, CPU latency per frame, max |Δ logits| and mask IoU vs float PyTorch.

Exports one checkpoint (or random EdgeTAM weights) in each requested format whose toolchain is installed, float
and ``FORMAT:int8`` (``--quantize int8``, calibrated on ``--calibration`` generated images), then, in one run with
interleaved repetitions (scripts/bench/_timing.py), times per frame the image encoder, the prompt decoder and memory
attention (a full memory bank) of PyTorch (fused, the predictor's ``--fuse``) and of every export. Accuracy is
measured on *held-out* images (scenes of scripts/make_sample_data.py with another seed than the calibration
images), one click inside the largest shape: max |Δ| of the three decoder logit maps, and the IoU of each of the
three masks with PyTorch's (mean and min over images and masks). Prints a markdown table (docs/benchmarks.md).

    python scripts/bench/export_runtimes.py --formats onnx executorch onnx:int8 executorch:int8 [--ckpt edgetam.pt] \\
        [--doc docs/benchmarks.md]

LiteRT needs the ``litert`` extra; run it in an environment that has it (docs/ondevice.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import mean, median

import numpy as np
import torch
from _timing import interleaved
from PIL import Image
from run_all import update_section

from edgetam_train.data.synthetic.scenes import render_scene
from edgetam_train.export.ondevice import build_parts, example_inputs, part_specs
from edgetam_train.export.ondevice_export import export_ondevice
from edgetam_train.export.onnx import fuse_for_export
from edgetam_train.models.build import build_model
from edgetam_train.predictor.preprocess import image_to_input
from edgetam_train.predictor.runtimes import ExportedModel
from edgetam_train.runtime.backends import read_manifest


def scenes(seed: int, count: int, hw: tuple[int, int] = (480, 640)) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """``count`` generated images (uint8 RGB) with a click (x, y) inside the largest visible shape of each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scene = render_scene(rng, *hw, num_shapes=6)
        mask = max((s.full_mask(*hw) for s in scene.shapes), key=lambda m: int(m.sum())).astype(bool)
        ys, xs = np.nonzero(mask)
        i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # the mask pixel nearest its centroid
        out.append((scene.image, (float(xs[i]), float(ys[i]))))
    return out


def decoder_logits(model, feats_emb, high_res, click):
    """The three multimask logit maps (1, 3, S/4, S/4) for one click."""
    return model.heads(feats_emb, high_res, click, None, True)[0]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["onnx", "executorch", "tflite", "onnx:int8",
                                                         "executorch:int8", "tflite:int8"],
                        help="FORMAT or FORMAT:int8")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--ckpt", type=Path, default=None, help="official .pt (default: random EdgeTAM weights)")
    parser.add_argument("--images", type=int, default=4, help="held-out images for the accuracy columns")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows for run_all's table here")
    parser.add_argument("--doc", type=Path, default=None, help="write the table into this file's export_runtimes "
                        "section (docs/benchmarks.md)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_model("edgetam", image_size=args.image_size, checkpoint=args.ckpt).eval()
    fused = fuse_for_export(model)
    s = args.image_size
    held_out = scenes(seed=1, count=args.images)
    inputs = [(image_to_input(img, s), (torch.tensor([[[x * s / img.shape[1], y * s / img.shape[0]]]]),
                                        torch.ones(1, 1, dtype=torch.int32))) for img, (x, y) in held_out]
    with torch.no_grad():
        ref = []
        for x, click in inputs:
            f = model.encode_image(x)
            ref.append(decoder_logits(model, f.f16 + model.no_mem_embed.view(1, -1, 1, 1), f.high_res, click))
    rows, fns = {}, {}
    x0, click0 = inputs[0]
    feats0 = fused.encode_image(x0)
    emb0 = feats0.f16 + fused.no_mem_embed.view(1, -1, 1, 1)
    fns["torch/encoder"] = lambda: fused.encode_image(x0)
    fns["torch/decoder"] = lambda: decoder_logits(fused, emb0, feats0.high_res, click0)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        for i, (img, _) in enumerate(scenes(seed=0, count=args.calibration_images)):
            Image.fromarray(img).save(calib / f"{i:03d}.png")
        memory_inputs = None
        for name in args.formats:
            fmt, _, quantize = name.partition(":")
            out = Path(tmp) / name.replace(":", "_")
            try:
                export_ondevice(model, out, fmt, quantize=quantize or None, calibration=calib if quantize else None)
            except ImportError as err:
                print(f"skipping {name}: {err}", file=sys.stderr)
                continue
            manifest = read_manifest(out)
            exported = ExportedModel(out, threads=torch.get_num_threads())  # the thread count the table states
            diffs, ious = [], []
            for (x, click), r in zip(inputs, ref):
                f = exported.encode_image(x)
                got = decoder_logits(exported, f.image_embeddings, f.high_res, click)
                diffs.append(float((got - r).abs().max()))
                ious += [iou(a, b) for a, b in zip(r[0] > 0, got[0] > 0)]  # each of the 3 candidate masks
            sizes = {n: p["bytes"] / 1e6 for n, p in manifest["parts"].items()}
            rows[name] = {"MB": sum(sizes.values()), "enc MB": sizes["image_encoder"], "dlogit": max(diffs),
                          "iou": mean(ious), "min_iou": min(ious)}
            if memory_inputs is None:  # the export's example memory bank (half full)
                parts = build_parts(fused)
                specs = part_specs(fused, 1, model.num_maskmem, model.max_obj_ptrs_in_encoder,
                                   manifest["memory"]["memory_tokens"])
                memory_inputs = example_inputs(fused, specs)
                mem = {k: v.numpy() for k, v in memory_inputs["memory_attention"].items()}
                fns["torch/memory_attention"] = (lambda m=parts["memory_attention"]: m(
                    *memory_inputs["memory_attention"].values()))
            f0 = exported.encode_image(x0)
            fns[f"{name}/encoder"] = (lambda e=exported: e.encode_image(x0))
            fns[f"{name}/decoder"] = (lambda e=exported, f=f0: decoder_logits(e, f.image_embeddings, f.high_res,
                                                                               click0))
            graph = exported.graphs["memory_attention"]
            fns[f"{name}/memory_attention"] = (lambda g=graph: g(**{k: mem[k] for k in g.inputs}))
        with torch.no_grad():
            times = interleaved(fns, reps=args.reps, warmup=1)

    def ms(key: str) -> float:
        return 1e3 * median(times[key]) if key in times else float("nan")

    lines = ["| format | size MB (all / encoder) | encoder ms | decoder ms | memory attention ms | max abs Δ logits | "
             "mask IoU mean (min) |", "|---|---|---|---|---|---|---|",
             f"| torch (fused) | - | {ms('torch/encoder'):.0f} | {ms('torch/decoder'):.1f} | "
             f"{ms('torch/memory_attention'):.0f} | 0 | 1 |"]
    lines += [f"| {name} | {r['MB']:.1f} / {r['enc MB']:.1f} | {ms(f'{name}/encoder'):.0f} | "
              f"{ms(f'{name}/decoder'):.1f} | {ms(f'{name}/memory_attention'):.0f} | {r['dlogit']:.2g} | "
              f"{r['iou']:.4f} ({r['min_iou']:.4f}) |" for name, r in rows.items()]
    lines += ["", f"{s}x{s}, {torch.get_num_threads()} CPU threads, {args.images} held-out generated images with one "
              f"click (int8 calibrated on {args.calibration_images} others), medians of {args.reps} interleaved "
              "repetitions"]
    table = "\n".join(lines)
    print(table, flush=True)
    if args.doc:
        update_section(args.doc, "export_runtimes", "## On-device export (`export_runtimes.py`)\n\n"
                       f"`python scripts/bench/export_runtimes.py {' '.join(sys.argv[1:])}`\n\n{table}\n")
    if args.json:
        out = [{"name": f"{name} encoder ms/frame ({s}px)", "value": round(ms(f"{name}/encoder"), 1), "unit": "ms",
                "goal": None, "passed": r["min_iou"] >= (0.99 if ":" not in name else 0.0),
                "detail": f"torch {ms('torch/encoder'):.0f} ms; decoder {ms(f'{name}/decoder'):.1f} ms; "
                          f"{r['MB']:.1f} MB; max |Δ logits| {r['dlogit']:.2g}; mask IoU {r['iou']:.4f} "
                          f"(min {r['min_iou']:.4f})"}
               for name, r in rows.items()]
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
