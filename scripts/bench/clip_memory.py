"""Peak memory of one stage-2 training step (8-frame clip, 3 objects, student EdgeTAM + frozen SAM 2.1 teacher) at
reduced sizes on CPU, extrapolated to 1024² bf16 on an 80 GB GPU.

Each size runs in a fresh subprocess: peak RSS after one forward+backward minus the RSS after building the models
(weights, optimizer state excluded) is the step's activation memory. Activations scale with the number of pixels, so
two sizes fit ``mem(S) = a + b·S²``; bf16 autocast roughly halves activations. Memory attention's self-attention is
quadratic in tokens on CPU (the math kernel materialises the attention matrix) but not on GPU (flash / memory-efficient
kernels), so the CPU fit over-estimates — the printed batch size is a conservative lower bound. Measure on a GPU when
one is available (``--device cuda`` reports ``torch.cuda.max_memory_allocated`` directly).

    python scripts/bench/clip_memory.py [--sizes 256 512] [--frames 8] [--objects 3] [--teacher sam2.1_hiera_b+]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

GPU_BYTES = 80e9
GOAL_CLIPS = 2  # README: data.batch_size=2 fits an 80 GB GPU in stage 2


def one_step(size: int, frames: int, objects: int, teacher_name: str, device: str) -> dict:
    """Build student + teacher, run one clip step with backward; report memory in bytes."""
    import torch

    from edgetam_train.distill.losses import DistillationLoss
    from edgetam_train.distill.module import DistillationModule
    from edgetam_train.distill.prompting import PromptConfig
    from edgetam_train.distill.teacher import FrozenTeacher
    from edgetam_train.models.build import build_model

    torch.manual_seed(0)
    student = build_model("edgetam", image_size=size).to(device)
    teacher = FrozenTeacher(build_model(teacher_name, image_size=size), allow_random_init=True).to(device)
    module = DistillationModule(student, teacher, DistillationLoss(lambda_f16=1.0, lambda_fm=1.0),
                                PromptConfig(video_prob_points=1.0))
    module.to(device)
    images = torch.randn(1, frames, 3, size, size, device=device)
    masks = torch.zeros(frames, objects, size, size, dtype=torch.bool, device=device)
    for i in range(objects):
        masks[:, i, size // 8 * (i + 1):size // 8 * (i + 3), size // 4:size // 2] = True
    batch = {"images": images, "masks": masks, "obj_to_img": torch.zeros(objects, dtype=torch.long, device=device)}
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        losses = module.clip_step(batch).losses
    losses["loss"].backward()
    if device == "cuda":
        return {"size": size, "step_bytes": torch.cuda.max_memory_allocated() - base}
    return {"size": size, "step_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--teacher", default="sam2.1_hiera_b+")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the result rows (for run_all.py) to this file")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_step(args.child, args.frames, args.objects, args.teacher, args.device)))
        return
    results = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--frames", str(args.frames),
                              "--objects", str(args.objects), "--teacher", args.teacher, "--device", args.device],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"clip step {args.frames} frames x {args.objects} objects at {size}²: "
              f"{results[-1]['step_bytes'] / 2**30:.2f} GiB ({args.device}, fp32)")
    if args.device == "cuda" or len(results) < 2:
        return
    (s0, m0), (s1, m1) = [(r["size"], r["step_bytes"]) for r in results[:2]]
    b = (m1 - m0) / (s1 ** 2 - s0 ** 2)
    a = m0 - b * s0 ** 2
    fp32_1024 = a + b * 1024 ** 2
    bf16_1024 = fp32_1024 / 2
    weights = (13.9e6 * 16) + (80.9e6 * 2)  # student fp32 params+grads+AdamW states; bf16-cast teacher weights
    per_gpu = int((GPU_BYTES * 0.9 - weights) // bf16_1024)
    print(f"extrapolated to 1024²: {fp32_1024 / 2**30:.1f} GiB fp32, ~{bf16_1024 / 2**30:.1f} GiB bf16 per clip")
    print(f"clip_memory: ~{per_gpu} clips of {args.frames} frames per 80 GB GPU at 1024² bf16 "
          f"(CPU extrapolation, conservative)")
    if args.json:
        sizes = ", ".join(f"{r['step_bytes'] / 2**30:.2f} GiB at {r['size']}²" for r in results)
        args.json.write_text(json.dumps([{
            "name": f"clip_memory: {args.frames}-frame x {args.objects}-object clips per 80 GB GPU at 1024² bf16 "
                    f"(CPU fit of {' and '.join(str(s) for s in args.sizes)} px, teacher {args.teacher})",
            "value": per_gpu, "unit": "clips", "goal": f">= {GOAL_CLIPS}", "passed": per_gpu >= GOAL_CLIPS,
            "detail": f"step activations {sizes} (fp32); ~{bf16_1024 / 2**30:.1f} GiB bf16 per clip at 1024²"}],
            indent=1))


if __name__ == "__main__":
    main()
