#!/usr/bin/env python
"""CPU speed of our EdgeTAM vs transformers' (same random weights, same inputs, same run, interleaved repetitions).

Run from the repository root with it on the import path (the transformers reference runner is a test helper,
``tests/helpers/hf_reference.py``): ``PYTHONPATH=. python scripts/bench/model_speed.py``; ``make bench`` does so.

Items (times are medians over ``--reps`` interleaved repetitions after ``--warmup`` untimed ones):

- **image**: one image + one click, batch 1 at S x S (default 1024): ours = ``ImagePredictor(model, fuse=True)``
  (RepViT BatchNorms / RepVGG branches fused) ``set_input`` + ``predict`` (image encoder, prompt encoder, mask
  decoder, logits upsampled to the input size); transformers = ``EdgeTamModel(pixel_values, input_points,
  input_labels, multimask_output=True)`` (image encoder, prompt encoder, mask decoder; low-res masks only).
- **video** (the per-frame tracking step): one object on an 8-frame clip; frame 0 clicked (initial conditioning
  frame), frames 1-6 tracked, so frame 7 reads a full memory bank (7 spatial memories of 512 perceiver tokens + 7
  object pointers). Timed: tracking frame 7 with its image features already computed. Ours =
  ``SAM2Model.track_step`` (memory read, memory attention, prompt encoder + mask decoder on a padding point,
  object pointer, memory encoder + spatial perceiver). transformers = ``EdgeTamVideoModel(inference_session,
  frame_idx=7)`` on a session holding the same state (built like ``tests/helpers/hf_reference.py``: our normalised
  frames,
  clicks through ``Sam2VideoProcessor``), whose vision-feature cache holds frame 7 (cache size 1, so repeated calls
  on frame 7 skip the image encoder); besides the same computation it does its per-object bookkeeping
  (``store_output``, ``frames_tracked_per_obj``), which is part of its per-frame cost.
- **video_frame** (informational): the same step including the image encoder of frame 7: ours ``encode_image`` (fused
  trunk) + ``track_step``; transformers: its vision cache cleared before each call.

Before timing, the outputs are compared (max abs diff of the low-res mask logits; frames 1-6 and 7 for video).

Prints per item the medians and ``ours/hf``, then ``model_speed <item>: ours/hf = 0.xx (goal <= 0.8) PASS|FAIL`` lines
(image, video; video_frame is reported with the same goal). ``--quick``: 512 px, 3 reps (a CI-sized run);
``--profile``: a torch.profiler table of our side of each item.

**roofline** (printed after video): the FLOPs of our tracking step (``torch.utils.flop_counter``, with the CPU SDPA
kernel counted too) divided by each side's median time, next to this core's measured fp32 throughput of a plain
GEMM and of SDPA at the memory-attention shapes (4096 queries, 256 wide). Both implementations run the same FLOPs;
when both reach the kernel ceiling, no exact (fp32) rewrite can make ours much faster than theirs.

``--strict`` exits 1 when image or video misses the goal. Needs transformers (a dev dependency). Example:
``python scripts/bench/model_speed.py --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import interleaved

from edgetam_train.export.hf_config import build_hf_model
from edgetam_train.models.build import build_model
from edgetam_train.models.memory_bank import MemoryBank
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.image import ImagePredictor, fuse_for_inference
from tests.helpers.hf_reference import Click, _add_clicks, _processor, _session, random_official_state_dict

REPO = Path(__file__).resolve().parents[2]

GOAL = 0.8
NUM_FRAMES = 8  # frame 7 reads frame 0 (conditioning) + frames 1-6: a full 7-frame memory bank


def report(item: str, times: dict[str, list[float]]) -> float:
    """Print medians (and min) of ours / hf; return the ratio of medians."""
    ours, hf = statistics.median(times["ours"]), statistics.median(times["hf"])
    print(f"  {item}: ours median {ours * 1e3:8.1f} ms (min {min(times['ours']) * 1e3:.1f})   "
          f"hf median {hf * 1e3:8.1f} ms (min {min(times['hf']) * 1e3:.1f})   ours/hf = {ours / hf:.3f}")
    return ours / hf


def profile(fn: Callable[[], object], title: str, rows: int = 25) -> None:
    """A torch.profiler CPU table of ``fn`` (3 calls), sorted by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    print(f"\n--- profile: {title} (3 calls) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _register_cpu_sdpa_flops() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernel (only the CUDA kernels are registered in torch)."""
    from torch.utils import flop_counter as fc

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op.default in fc.flop_registry:
        return

    @fc.register_flop_formula(op)
    def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def kernel_peaks(reps: int = 5) -> dict[str, float]:
    """This core's fp32 GFLOP/s for a GEMM (4096x256 @ 256x4096) and SDPA (1 head, 4096 queries/keys, 256 wide)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 256, generator=g), torch.randn(256, 4096, generator=g)
    q, k, v = (torch.randn(1, 1, 4096, 256, generator=g) for _ in range(3))
    cases = {"gemm": (lambda: a @ b, 2 * 4096 * 256 * 4096),
             "sdpa": (lambda: F.scaled_dot_product_attention(q, k, v), 4 * 4096 * 4096 * 256)}
    peaks = {}
    for name, (fn, flops) in cases.items():
        fn()
        best = min(_timed(fn) for _ in range(reps))
        peaks[name] = flops / best / 1e9
    return peaks


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def student(size: int, seed: int) -> tuple[SAM2Model, dict]:
    """Our EdgeTAM at ``size`` with random official-format weights (objects scored present), and those weights."""
    sd = random_official_state_dict("edgetam", seed)
    model = build_model("edgetam", image_size=size)
    model.load_state_dict(sd)
    return model.eval(), sd


# ----------------------------------------------------------------------------------------------- image

def bench_image(size: int, reps: int, warmup: int, do_profile: bool) -> float:
    model, sd = student(size, seed=0)
    predictor = ImagePredictor(model, fuse=True)
    hf = build_hf_model("edgetam", sd, image_size=size, target="image")
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    click = [[0.4 * size, 0.45 * size]]
    hf_points, hf_labels = torch.tensor(click)[None, None], torch.tensor([[[1]]])

    def ours():
        predictor.set_input(pixels, (size, size))
        return predictor.predict(points=click, labels=[1], multimask_output=True)

    @torch.inference_mode()
    def theirs():
        return hf(pixel_values=pixels, input_points=hf_points, input_labels=hf_labels, multimask_output=True)

    diff = (torch.from_numpy(ours().low_res_logits) - theirs().pred_masks[0, 0].clamp(-32, 32)).abs().max().item()
    print(f"image ({size}x{size}, 1 click, multimask): max |low-res logits ours - hf| = {diff:.2e}")
    ratio = report("image", interleaved({"ours": ours, "hf": theirs}, reps, warmup))
    if do_profile:
        profile(ours, "ours image")
        profile(theirs, "hf image")
    return ratio


# ----------------------------------------------------------------------------------------------- video

def bench_video(size: int, reps: int, warmup: int, do_profile: bool) -> tuple[float, float]:
    model, sd = student(size, seed=0)
    fuse_for_inference(model)
    hf = build_hf_model("edgetam", sd, image_size=size, target="video")
    frames = torch.randn(NUM_FRAMES, 3, size, size, generator=torch.Generator().manual_seed(2))
    xy = torch.tensor([[0.4 * size, 0.45 * size]])
    last = NUM_FRAMES - 1

    # ours: frame 0 clicked, frames 1..6 tracked into the bank
    bank = MemoryBank()
    ours_masks = {}
    with torch.no_grad():  # not inference_mode: count_flops below needs tensors autograd can see
        for t in range(last):
            feats = model.encode_image(frames[t:t + 1])
            click = dict(point_coords=xy[None], point_labels=torch.ones(1, 1, dtype=torch.int32)) if t == 0 else {}
            out = model.track_step(t, t == 0, feats, bank, NUM_FRAMES, **click)
            bank.add(t, out, is_cond=t == 0)
            ours_masks[t] = out.low_res_masks
        feats_last = model.encode_image(frames[last:last + 1])

    # transformers: the same clicks and frames through its inference session
    session = _session("edgetam", frames)
    _add_clicks(_processor(size), session, [Click(0, 1, xy, torch.tensor([1]))])
    diffs = []
    for t in range(last):
        diffs.append((hf(inference_session=session, frame_idx=t).pred_masks - ours_masks[t]).abs().max().item())

    @torch.inference_mode()
    def ours_step():
        return model.track_step(last, False, feats_last, bank, NUM_FRAMES)

    @torch.inference_mode()
    def ours_frame():
        return model.track_step(last, False, model.encode_image(frames[last:last + 1]), bank, NUM_FRAMES)

    def hf_step():  # frame 7's vision features stay in the session cache (size 1) after the first call
        return hf(inference_session=session, frame_idx=last)

    def hf_frame():
        session.cache.clear_all()
        return hf(inference_session=session, frame_idx=last)

    diffs.append((hf_frame().pred_masks - ours_step().low_res_masks).abs().max().item())
    print(f"video ({size}x{size}, 1 object, frame {last} reads 7 memories + 7 pointers): max |low-res logits "
          f"ours - hf| frames 1-{last - 1}: {max(diffs[1:-1]):.2e}, frame 0: {diffs[0]:.2e}, frame {last}: "
          f"{diffs[-1]:.2e}")
    assert hf_step().pred_masks.shape == ours_step().low_res_masks.shape
    step_times = interleaved({"ours": ours_step, "hf": hf_step}, reps, warmup)
    step = report("video (track step, image features cached)", step_times)
    flops = count_flops(lambda: model.track_step(last, False, feats_last, bank, NUM_FRAMES))
    peaks = kernel_peaks()
    rates = {n: flops / statistics.median(ts) / 1e9 for n, ts in step_times.items()}
    print(f"  roofline: track step = {flops / 1e9:.1f} GFLOP; ours {rates['ours']:.0f} GFLOP/s, hf "
          f"{rates['hf']:.0f} GFLOP/s; this core's fp32 peaks: GEMM {peaks['gemm']:.0f}, SDPA {peaks['sdpa']:.0f} "
          f"GFLOP/s (ours at {rates['ours'] / peaks['gemm']:.0%} of the GEMM peak)")
    frame = report("video_frame (image encoder + track step)",
                   interleaved({"ours": ours_frame, "hf": hf_frame}, reps, warmup))
    if do_profile:
        profile(ours_step, "ours video track_step")
        profile(hf_step, "hf video step")
    return step, frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="input size S (default 1024; --quick: 512)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument("--quick", action="store_true", help="512 px, 3 repetitions")
    parser.add_argument("--items", default="image,video", help="comma-separated: image, video")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of both sides")
    parser.add_argument("--strict", action="store_true", help="exit 1 when image or video misses the goal")
    parser.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = parser.parse_args(argv)
    size = args.size or (512 if args.quick else 1024)
    reps = args.reps or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model_speed: S={size}, reps={reps} (+{args.warmup} warm-up), threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, load average {load:.1f} on {os.cpu_count()} cores")
    if load + args.threads > (os.cpu_count() or 1) + 0.5:
        hint = " (try --threads 1)" if args.threads > 1 else ""
        print(f"  warning: the machine is busy, timings are noisy{hint}")
    items = [s.strip() for s in args.items.split(",") if s.strip()]
    results: dict[str, float] = {}
    if "image" in items:
        results["image"] = bench_image(size, reps, args.warmup, args.profile)
    if "video" in items:
        results["video"], results["video_frame"] = bench_video(size, reps, args.warmup, args.profile)
    ok = True
    rows = []
    for item, ratio in results.items():
        passed = ratio <= GOAL
        ok &= passed or item == "video_frame"
        print(f"model_speed {item}: ours/hf = {ratio:.2f} (goal <= {GOAL}) {'PASS' if passed else 'FAIL'}")
        rows.append({"name": f"model_speed {item}: ours/transformers time, {size} px, {torch.get_num_threads()} "
                             f"thread(s)", "value": round(ratio, 3), "unit": "x", "goal": f"<= {GOAL}",
                     "passed": passed, "detail": "informational (not in --strict)" if item == "video_frame" else ""})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
