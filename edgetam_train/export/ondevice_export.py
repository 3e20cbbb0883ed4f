"""``edgetam-export --format onnx|executorch|tflite|coreml``: write the on-device split, run it, compare with PyTorch.

:func:`export_ondevice` fuses a copy of the model, wraps its four graphs (:mod:`~edgetam_train.export.ondevice`),
writes each in the format (:mod:`~edgetam_train.export.converters`, int8 through
:mod:`~edgetam_train.export.quantize`), then loads every file in that format's own Python runtime
(:mod:`~edgetam_train.runtime.backends`) and compares it with the *unfused* PyTorch model's own methods:

* image encoder and prompt decoder: :func:`~edgetam_train.export.onnx.check_image_graphs` (1, 3, 5 clicks, with and
  without a mask input) plus the extra outputs (``vision_features`` = ``encode_image().f16``; the object pointers =
  ``obj_ptr_proj`` of the chosen token, gated, as :meth:`SAM2Model.decode`);
* memory encoder: :meth:`SAM2Model.encode_memory` (sigmoid and binarised masks);
* memory attention: :meth:`SAM2Model.condition` on the *valid* memories and pointers only, with a full and a
  partly filled bank (so the slot masking is checked to equal attending to fewer tokens).

Core ML cannot run on Linux: its files are converted and their specs (input / output names and shapes) checked
against the manifest; the report says so. Float formats must agree within 1e-3 (``official.ONNX_TOLERANCE``);
int8 files are reported, not failed (their accuracy is the mask IoU in the benchmark,
``scripts/bench/export_runtimes.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgetam_train.export.converters import POINT_INPUTS, WRITERS, coreml_spec, onnx_input_names, point_range
from edgetam_train.export.manifest import write_manifest
from edgetam_train.export.official import ONNX_TOLERANCE, ExportReport, max_abs_diff
from edgetam_train.export.ondevice import PARTS, build_parts, example_inputs, part_specs
from edgetam_train.export.onnx import check_image_graphs, fuse_for_export
from edgetam_train.models.outputs import ImageFeatures, MemoryContext
from edgetam_train.models.position_encoding import sine_pe_1d
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.runtime.backends import SUFFIX, load_graph

FORMATS = tuple(SUFFIX)
INT8_TOLERANCE = float("inf")  # int8 differences are reported; accuracy is judged by mask IoU (benchmark)


def export_ondevice(model: SAM2Model, out_dir: str | Path, fmt: str, model_name: str = "edgetam",
                    checkpoint: str | Path | None = None, quantize: str | None = None,
                    calibration: str | Path | None = None, num_points: int = 2) -> ExportReport:
    """Write ``out_dir/{image_encoder,prompt_decoder,memory_encoder,memory_attention}.<ext>``, ``manifest.json`` and
    ``README.md``, and check them (see the module docstring). ``quantize``: None or "int8" (calibrated on the images
    in ``calibration``); ``num_points``: the point count of the example prompt the graphs are traced with (every
    format takes 1 .. :func:`~edgetam_train.export.converters.point_range` points)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown on-device format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize {quantize!r}: expected int8")
    if quantize and calibration is None:
        raise ValueError("--quantize int8 needs --calibration DIR (a folder of a few JPEG/PNG images)")
    if quantize:  # read the calibration images first: a bad one stops the export before any graph is written
        from edgetam_train.export.quantize import calibration_pixels

        calibration_pixels(calibration, model.image_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    fused = fuse_for_export(model)
    parts = build_parts(fused)
    with torch.no_grad():
        s = model.image_size
        tokens = parts["memory_encoder"](torch.zeros(1, 256, model.feat_size, model.feat_size),
                                         torch.zeros(1, 1, s, s), torch.ones(1, 1), torch.zeros(1)).shape[1]
    specs = part_specs(fused, num_points, model.num_maskmem, model.max_obj_ptrs_in_encoder, tokens)
    examples = example_inputs(fused, specs)
    files = {}
    quantized: dict[str, str] = {}
    for name in PARTS:
        path = out_dir / f"{name}{SUFFIX[fmt]}"
        outputs = [t.name for t in specs[name].outputs]
        if quantize:
            from edgetam_train.export.quantize import write_int8

            quantized[name] = write_int8(fmt, name, parts[name], examples[name], outputs, path, fused, calibration)
        else:
            WRITERS[fmt](parts[name], examples[name], outputs, path)
        files[name] = path

    io = dict(specs)  # what the files take: the ONNX exporter drops inputs a graph does not read
    if fmt == "onnx":
        for name, path in files.items():
            kept = set(onnx_input_names(path))
            io[name] = replace(specs[name], inputs=tuple(t for t in specs[name].inputs if t.name in kept))
    report = ExportReport(out_dir, tolerance=ONNX_TOLERANCE)
    if fmt == "coreml":
        _check_coreml_specs(files, specs, report)
        note = "Core ML runs only on macOS / iOS: the files were converted and their specs checked, not run"
    else:
        graphs = {n: load_graph(fmt, files[n], [t.name for t in io[n].inputs], [t.name for t in io[n].outputs])
                  for n in PARTS}
        check_parts(model, graphs, specs, report, fmt)
        note = f"every graph was run with the {fmt} runtime and compared with PyTorch"
    if quantize:
        report.tolerances.update({k: INT8_TOLERANCE for k in report.diffs})
    write_manifest(out_dir, fmt, fused, model_name, checkpoint, io, files, report, note, quantize, quantized,
                   point_range(fmt))
    report.note = note
    return report


def _check_coreml_specs(files, specs, report: ExportReport) -> None:
    """0 when a ``.mlpackage``'s input / output names and shapes equal the manifest's, inf otherwise."""
    points = point_range("coreml")
    for name, path in files.items():
        spec = coreml_spec(path)
        for side in ("inputs", "outputs"):
            want = [(t.name, (t.shape[0], points, *t.shape[2:]) if t.name in POINT_INPUTS else t.shape)
                    for t in getattr(specs[name], side)]
            got = spec[side]
            report.diffs[f"{name}/coreml_spec/{side}"] = 0.0 if got == want else float("inf")


def _ref_decoder(model: SAM2Model, emb, hr, coords, labels, mask):
    """The decoder's seven outputs from ``model.heads`` + ``decode``'s pointer rule (unfused model)."""
    prompts = (coords, labels.to(torch.int32))
    masks, ious, tokens, obj = model.heads(emb, hr, prompts, mask, multimask_output=True)
    single, single_iou, single_tokens, _ = model.heads(emb, hr, prompts, mask, multimask_output=False)
    best = ious.argmax(dim=-1)
    token = tokens[torch.arange(tokens.shape[0]), best] if tokens.shape[1] > 1 else tokens[:, 0]
    return {"masks": masks, "iou_predictions": ious, "single_mask": single, "single_iou": single_iou,
            "object_score_logits": obj, "obj_ptr": model._gate_pointer(model.obj_ptr_proj(token), obj),
            "single_obj_ptr": model._gate_pointer(model.obj_ptr_proj(single_tokens[:, 0]), obj)}


@torch.no_grad()
def check_parts(model: SAM2Model, graphs: dict, specs: dict, report: ExportReport, fmt: str) -> ExportReport:
    """Run the four graphs and compare every output with the unfused ``model`` (see the module docstring)."""
    model.eval()
    check_image_graphs(model, graphs["image_encoder"], graphs["prompt_decoder"], report, num_points=(1, 3, 5),
                       batch=fmt == "onnx")
    examples = example_inputs(model, specs, seed=1)
    pixels = examples["image_encoder"]["pixels"]
    enc = graphs["image_encoder"](pixels=pixels.numpy())
    feats = model.encode_image(pixels)
    report.diffs["encoder/vision_features"] = max_abs_diff(torch.from_numpy(enc["vision_features"]), feats.f16)
    emb = torch.from_numpy(enc["image_embeddings"])
    hr = [torch.from_numpy(enc["high_res_feats_0"]), torch.from_numpy(enc["high_res_feats_1"])]
    dec_in = {k: v.numpy() for k, v in examples["prompt_decoder"].items()}
    for with_mask in (False, True):
        dec_in["has_mask_input"] = np.array([float(with_mask)], dtype=np.float32)
        got = graphs["prompt_decoder"](**{**dec_in, **{k: enc[k] for k in enc if k in dec_in}})
        mask = torch.from_numpy(dec_in["mask_input"]) if with_mask else None
        ref = _ref_decoder(model, emb, hr, torch.from_numpy(dec_in["point_coords"]),
                           torch.from_numpy(dec_in["point_labels"]), mask)
        for key in ("obj_ptr", "single_obj_ptr"):
            name = f"decoder/{key}" + ("+mask" if with_mask else "")
            report.diffs[name] = max_abs_diff(torch.from_numpy(got[key]), ref[key])
    vf = torch.from_numpy(enc["vision_features"])
    for binarize in (0.0, 1.0):
        mem_in = {k: v.numpy() for k, v in examples["memory_encoder"].items()}
        mem_in.update(vision_features=enc["vision_features"], binarize=np.array([binarize], dtype=np.float32))
        got = graphs["memory_encoder"](**mem_in)["memory"]
        ref, _ = model.encode_memory(ImageFeatures(vf, None, None), torch.from_numpy(mem_in["mask_logits"]),
                                     torch.from_numpy(mem_in["object_score_logits"]), is_mask_from_pts=bool(binarize))
        report.diffs[f"memory_encoder/{'binarized' if binarize else 'sigmoid'}"] = max_abs_diff(
            torch.from_numpy(got), ref)
    att = {k: v.numpy() for k, v in examples["memory_attention"].items()}
    att["vision_features"] = enc["vision_features"]
    frames, ptrs = att["memory_valid"].shape[1], att["obj_ptr_valid"].shape[1]
    for label, n_mem, n_ptr in (("full", frames, ptrs), ("partial", 2, 3)):
        att["memory_valid"] = (np.arange(frames) < n_mem).astype(np.float32)[None]
        att["obj_ptr_valid"] = (np.arange(ptrs) < n_ptr).astype(np.float32)[None]
        got = graphs["memory_attention"](**att)["pix_feat"]
        ref = _ref_condition(model, feats, att, n_mem, n_ptr)
        report.diffs[f"memory_attention/{label}"] = max_abs_diff(torch.from_numpy(got), ref)
    return report


def _ref_condition(model: SAM2Model, feats: ImageFeatures, att: dict, n_mem: int, n_ptr: int):
    """``model.condition`` with the first ``n_mem`` memories and ``n_ptr`` pointers of ``att`` (no padding)."""
    tokens, pos = [], []
    zero_mask = torch.zeros(1, 1, model.image_size, model.image_size)
    _, mem_pos = model.encode_memory(feats, zero_mask, torch.ones(1, 1), is_mask_from_pts=False)
    for i in range(n_mem):
        t = int(att["memory_tpos"][0, i])
        tokens.append(torch.from_numpy(att["memory"][:, i]))
        pos.append(mem_pos + model.maskmem_tpos_enc[model.num_maskmem - t - 1].view(1, 1, -1))
    ptrs = torch.from_numpy(att["obj_ptrs"][:, :n_ptr])
    split = ptrs.shape[-1] // model.mem_dim
    if model.add_tpos_enc_to_obj_ptrs:  # as read_memory, from the normalised distances the graph is given
        proj = model.obj_ptr_tpos_proj
        ptr_pos = sine_pe_1d(torch.from_numpy(att["obj_ptr_tpos"][0, :n_ptr]),
                             model.hidden_dim if proj is not None else model.mem_dim)
        ptr_pos = (proj(ptr_pos) if proj is not None else ptr_pos)[None]
    else:
        ptr_pos = torch.zeros(1, n_ptr, model.mem_dim)
    tokens.append(ptrs.reshape(1, n_ptr * split, model.mem_dim))
    pos.append(ptr_pos.repeat_interleave(split, dim=1) if split > 1 else ptr_pos)
    ctx = MemoryContext(torch.cat(tokens, 1), torch.cat(pos, 1), n_ptr * split, n_mem)
    vf = torch.from_numpy(att["vision_features"])
    return model.condition(ImageFeatures(vf, feats.f16_pos, None), ctx)
