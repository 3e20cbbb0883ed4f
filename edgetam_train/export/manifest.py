"""``manifest.json`` and ``README.md`` of an on-device export directory.

The manifest is what a runtime needs besides the graph files: per graph its file, size, inputs and outputs (name,
shape, dtype, meaning) in call order; the preprocessing; the tracking rules' settings (memory slots, pointer
count, multimask rule, ...); the source checkpoint's sha256; how the files were checked and the measured
differences. ``edgetam-predict --runtime ... --model-dir DIR`` reads it
(:mod:`~edgetam_train.runtime.backends`); the README explains the same for app developers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgetam_train.export.official import ExportReport
from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD
from edgetam_train.models.checkpoint import file_sha256
from edgetam_train.models.sam2_model import NO_OBJ_SCORE, SAM2Model
from edgetam_train.runtime.backends import MANIFEST, TFLITE_SIGNATURE

TRACKING_KEYS = ("num_maskmem", "max_obj_ptrs_in_encoder", "max_cond_frames_in_attn", "memory_temporal_stride_for_eval",
                 "only_obj_ptrs_in_the_past_for_eval", "use_signed_tpos_enc_to_obj_ptrs", "add_tpos_enc_to_obj_ptrs",
                 "multimask_output_in_sam", "multimask_output_for_tracking", "multimask_min_pt_num",
                 "multimask_max_pt_num", "binarize_mask_from_pts_for_mem_enc", "use_mask_input_as_output_without_sam",
                 "directly_add_no_mem_embed")
RUNTIMES = {"onnx": "onnxruntime (CPUExecutionProvider)", "executorch": "ExecuTorch runtime, XNNPACK delegate",
            "tflite": "LiteRT interpreter (ai_edge_litert)", "coreml": "Core ML (macOS / iOS only)"}


def mask_prompt_constants(model: SAM2Model) -> dict:
    """What an app needs, besides the graphs, to start an object from a mask (SAM 2's mask-as-output rule): the
    ``mask_downsample`` conv (1 -> 1 channel, 4x4 kernel, stride 4: S x S mask -> the decoder's ``mask_input``)
    and the no-object pointer."""
    conv = model.mask_downsample
    return {"mask_downsample_weight": conv.weight.detach().reshape(4, 4).tolist(),
            "mask_downsample_bias": float(conv.bias.detach()[0]),
            "no_obj_ptr": model.no_obj_ptr.detach().reshape(-1).tolist(), "fixed_no_obj_ptr": model.fixed_no_obj_ptr,
            "logit_scale": 20.0, "logit_bias": -10.0}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_manifest(out_dir: Path, fmt: str, model: SAM2Model, model_name: str, checkpoint, specs: dict,
                   files: dict[str, Path], report: ExportReport, note: str, quantize: str | None,
                   quantized: dict[str, str], points: tuple[int, int | None]) -> Path:
    """Write ``manifest.json`` and ``README.md`` into ``out_dir``; returns the manifest path. ``points``: the
    (min, max) prompt points the decoder takes (max None: any)."""
    manifest = {
        "format": fmt, "runtime": RUNTIMES[fmt], "model": model_name, "image_size": model.image_size,
        "quantize": quantize, "quantized": quantized,
        "source_checkpoint": None if checkpoint is None else {"file": Path(checkpoint).name,
                                                             "sha256": file_sha256(checkpoint)},
        "preprocessing": {
            "image": "RGB uint8 -> float /255 -> bilinear antialiased resize to SxS -> (x - mean) / std",
            "video": "RGB uint8 resized to SxS with PIL (bicubic, PIL's default filter) -> /255 -> (x - mean) / std",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "layout": "NCHW float32",
            "points": "pixel x, y of the original image scaled by S / W, S / H; a box is two points (labels 2, 3) "
                      "before the clicks",
            "output": "low-res logits (S/4 x S/4) -> bilinear to the original size -> > 0 is the mask"},
        "prompt_points": {"min": points[0], "max": points[1]}
        | ({"signatures": TFLITE_SIGNATURE.format("<n>")} if fmt == "tflite" else {}),
        "mask_prompt": mask_prompt_constants(model),
        "memory": {"max_memory_frames": specs["memory_attention"].inputs[1].shape[1],
                   "memory_tokens": specs["memory_attention"].inputs[1].shape[2],
                   "max_object_pointers": specs["memory_attention"].inputs[4].shape[1]},
        "tracking": {k: getattr(model, k) for k in TRACKING_KEYS} | {"no_object_score": NO_OBJ_SCORE},
        "parts": {name: {"file": files[name].name, "bytes": _size(files[name]), "doc": spec.doc,
                         "inputs": [vars(t) | {"shape": list(t.shape)} for t in spec.inputs],
                         "outputs": [vars(t) | {"shape": list(t.shape)} for t in spec.outputs]}
                  for name, spec in specs.items()},
        "checks": {"verified": note, "tolerance": report.tolerance,
                   "max_abs_diff": {k: _finite(v) for k, v in report.diffs.items()}},
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme(manifest))
    return path


def readme(manifest: dict) -> str:
    """The app developers' README of an export directory, from its manifest."""
    s, mem = manifest["image_size"], manifest["memory"]
    lines = [f"# EdgeTAM on-device export ({manifest['format']}, {manifest['runtime']})", "",
             f"Model `{manifest['model']}` at {s}x{s}"
             + (f", int8 ({', '.join(f'{k}: {v}' for k, v in manifest['quantized'].items())})"
                if manifest["quantize"] else ", float32")
             + (f", from `{manifest['source_checkpoint']['file']}` (sha256 {manifest['source_checkpoint']['sha256']})"
                if manifest["source_checkpoint"] else "") + ".", "",
             f"Check: {manifest['checks']['verified']}. Largest difference: "
             f"{max((v for v in manifest['checks']['max_abs_diff'].values() if v is not None), default=0):.3g}.", "",
             "## Per frame", "",
             "1. `image_encoder(pixels)` (preprocessing below) -> `image_embeddings`, `high_res_feats_0/1`, "
             "`vision_features`.",
             "2. Prompted frame (first frame of an object): `prompt_decoder(image_embeddings, high_res_feats_0, "
             "high_res_feats_1, clicks)`. Tracked frame: `memory_attention(vision_features, memory bank, pointers)` "
             "-> `pix_feat`, then `prompt_decoder(pix_feat, ...)` with one padding point (label -1).",
             "3. Pick the mask: `masks` / `obj_ptr` (best `iou_predictions`) for multimask output (1 click, "
             "tracked frames), else `single_mask` / `single_obj_ptr`. Where `object_score_logits` <= 0 set the "
             f"logits to {manifest['tracking']['no_object_score']:g}.",
             "4. `memory_encoder(vision_features, mask logits bilinearly upsampled to SxS, object score, binarize)` "
             "(`binarize` = 1 on prompted frames) -> `memory`; store it with the pointer.",
             "", "## Memory bank", "",
             f"`memory_attention` holds {mem['max_memory_frames']} memory slots of {mem['memory_tokens']} tokens and "
             f"{mem['max_object_pointers']} pointer slots; set `*_valid` to 0 for empty slots. Slot contents follow "
             "SAM 2: the conditioning (prompted) frames with `memory_tpos` 0, then the frame k = 1 .. "
             f"{manifest['tracking']['num_maskmem'] - 1} back with `memory_tpos` = "
             f"{manifest['tracking']['num_maskmem']} - k (the previous frame has the largest); pointers of the "
             "conditioning frames, then of up to "
             f"{manifest['tracking']['max_obj_ptrs_in_encoder'] - 1} previous frames. Slot order does not matter.",
             "", "## Preprocessing", ""]
    lines += [f"* {k}: {v}" for k, v in manifest["preprocessing"].items()]
    lines += ["", "## Tensors", ""]
    for name, part in manifest["parts"].items():
        lines += [f"### {name} (`{part['file']}`, {part['bytes'] / 1e6:.1f} MB): {part['doc']}", "",
                  "| | name | shape | dtype | meaning |", "|---|---|---|---|---|"]
        for side in ("inputs", "outputs"):
            lines += [f"| {side[:-1]} | `{t['name']}` | {tuple(t['shape'])} | {t['dtype']} | {t['doc']} |"
                      for t in part[side]]
        lines.append("")
    pts = manifest["prompt_points"]
    lines.append(f"Prompt points: {pts['min']} .. {pts['max'] or 'any'} per call, no padding needed"
                 + (f" (one signature per count: `{pts['signatures']}`)" if "signatures" in pts else " (dynamic)")
                 + ". A box is two points (labels 2, 3) before the clicks; a tracked frame without clicks is one "
                 "point (0, 0) with label -1.")
    lines += ["", "## Starting an object from a mask", "",
              "As SAM 2, a mask prompt (S x S, 1 inside) is taken as the frame's output: logits = mask * "
              "`mask_prompt.logit_scale` + `logit_bias`, low-res logits = antialiased bilinear downsampling by 4, "
              "IoU 1, object score = scale + bias if any pixel is set, else bias. The pointer comes from "
              "`prompt_decoder(vision_features, ..., point (0, 0) label -1, mask_input = conv4x4/4(mask) with "
              "`mask_downsample_weight` / `_bias`, has_mask_input 1)` -> `single_obj_ptr`; for an empty mask it "
              "becomes `no_obj_ptr` (times 0 first when `fixed_no_obj_ptr`). Then `memory_encoder` as on any prompted "
              "frame (step 4, `binarize` 1)."]
    lines += app_loop(manifest)
    lines += ["", "Run it on Linux: `edgetam-predict image|video --runtime "
              f"{manifest['format']} --model-dir DIR ...` (same outputs as `--runtime torch`).", ""]
    return "\n".join(lines)


def app_loop(manifest: dict) -> list[str]:
    """README lines: the streaming loop an app runs around the graphs and the state it keeps per object, in bytes
    (the reference implementation to port is :mod:`edgetam_train.runtime.app_loop`, numpy only)."""
    t, s = manifest["tracking"], manifest["image_size"]
    memory = next(x for x in manifest["parts"]["memory_attention"]["inputs"] if x["name"] == "memory")["shape"]
    mem_bytes = int(memory[-2]) * int(memory[-1]) * 4  # one frame's memory tokens, float32
    ptr_bytes, logit_bytes = 256 * 4, (s // 4) ** 2 * 4
    keep_mem, keep_ptr = t["num_maskmem"] - 1, t["max_obj_ptrs_in_encoder"] - 1
    per_obj = (1 + keep_mem) * mem_bytes + (1 + keep_ptr) * ptr_bytes + logit_bytes
    return ["", "## App loop (streaming camera frames)", "",
            "Per camera frame: run `image_encoder` once; for every object, prompted on this frame -> step 2's prompted "
            "path, else the tracked path with its memory slots filled as above; then `memory_encoder`. Keep per "
            "object only what a later frame can read, so memory stays flat however long the stream runs:", "",
            f"* every conditioning (prompted) frame: `memory` ({memory[-2]} x {memory[-1]} float32 = {mem_bytes:,} B) "
            f"and `obj_ptr` (256 float32 = {ptr_bytes:,} B); these grow with prompts, not frames;",
            f"* the `memory` of the last {keep_mem} tracked frames ({keep_mem * mem_bytes:,} B) with their distance "
            "back (`memory_tpos`);",
            f"* the `obj_ptr` of the last {keep_ptr} tracked frames ({keep_ptr * ptr_bytes:,} B) with their distance "
            f"(`obj_ptr_tpos` = distance / {keep_ptr} for a stream of 16+ frames);",
            f"* the current frame's low-res mask logits ({s // 4} x {s // 4} float32 = {logit_bytes:,} B) and, only "
            "while the frame is processed, the encoder outputs (shared by all objects).", "",
            f"One object prompted once: {per_obj:,} B at {s} px (memory tokens do not depend on the input size; the "
            "logits scale with it). Drop the rest after each frame.", "",
            "The reference loop to port: `edgetam_train/runtime/app_loop.py` (`AppTracker`): numpy, PIL and the "
            "graph runtime, no PyTorch; the same masks as the PyTorch predictors' streaming loop on these graphs "
            "(`tests/runtime/test_app_loop.py`). Run it: `tracker = AppTracker(DIR)`; on a tap `tracker.add_object("
            "frame, 1, points=[[x, y]], labels=[1])`; on every frame `tracker.track(frame)`. Or from the command "
            f"line: `edgetam-predict stream --runtime {manifest['format']} --model-dir DIR --source camera:0`."]
