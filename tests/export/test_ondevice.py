"""On-device export (``edgetam-export --format onnx|executorch``) and the exported runtimes in the predictors, at 256 px
on random EdgeTAM weights.

ONNX (float) and ExecuTorch (XNNPACK, run through the ExecuTorch runtime's Python bindings) each write the four
graphs + manifest.json + README through the CLI (which runs every graph and compares it with the unfused model);
the tests then check the manifest against the files and the checkpoint, track a video through the exported memory
path and compare it with PyTorch's tracking frame by frame (mask IoU >= 0.99, logits within 1e-3), and compare the
image predictor's outputs. The slot masking of the memory-attention graph is checked in PyTorch directly.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from edgetam_train.export import cli
from edgetam_train.export.ondevice import MemoryAttentionPart
from edgetam_train.models.build import build_model
from edgetam_train.models.outputs import ImageFeatures, MemoryContext
from edgetam_train.predictor import cli as predict_cli
from edgetam_train.predictor.image import ImagePredictor
from edgetam_train.predictor.runtimes import ExportedImagePredictor, ExportedModel, ExportedVideoPredictor
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.runtime.backends import MissingToolchainError, TFLiteGraph

S = 256
PARTS = ("image_encoder", "prompt_decoder", "memory_encoder", "memory_attention")


@pytest.fixture(scope="module")
def checkpoint(edgetam_256):
    """Random EdgeTAM weights as an official ``{"model": sd}`` file -> (path, model at 256 px) (tests/conftest.py)."""
    return edgetam_256


@pytest.fixture(scope="module")
def onnx_dir(edgetam_256_onnx):
    return edgetam_256_onnx  # the session's export of `checkpoint` (tests/conftest.py), shared with the app-loop tests


@pytest.fixture(scope="module")
def executorch_dir(edgetam_256_executorch):
    return edgetam_256_executorch  # the session's export of `checkpoint` (tests/conftest.py), shared with the app loop


def _video(num_frames: int = 6) -> list[np.ndarray]:
    """A textured frame sliding right by 4 px per frame, (96, 128, 3) uint8."""
    rng = np.random.default_rng(0)
    base = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    return [np.roll(base, 4 * t, axis=1) for t in range(num_frames)]


def _track(predictor, frames, frame_idx: int, prompt: str = "clicks") -> dict[int, torch.Tensor]:
    """Box + click (``prompt`` "clicks") or a mask ("mask") on ``frame_idx``, forward then backward tracking;
    frame -> (1, H, W) logits."""
    state = predictor.init_state(frames)
    if prompt == "mask":
        mask = np.zeros(frames[0].shape[:2], dtype=bool)
        mask[25:70, 40:95] = True
        predictor.add_mask(state, frame_idx, 1, mask)
    else:
        predictor.add_clicks(state, frame_idx, 1, points=[[70, 50]], labels=[1], box=[30, 20, 100, 80])
    out = {t: logits.clone() for t, _, logits in predictor.propagate(state, start_frame_idx=frame_idx)}
    out.update({t: logits.clone() for t, _, logits in predictor.propagate(state, start_frame_idx=frame_idx,
                                                                          reverse=True)})
    return out


def _check_tracking_matches(model, model_dir: str, runtime: str, prompt: str = "clicks") -> None:
    frames = _video()
    ref = _track(VideoPredictor(model, fill_hole_area=8), frames, frame_idx=2, prompt=prompt)
    got = _track(ExportedVideoPredictor(ExportedModel(model_dir, runtime), fill_hole_area=8), frames, frame_idx=2,
                 prompt=prompt)
    assert sorted(got) == sorted(ref) == list(range(len(frames)))
    for t in ref:
        a, b = ref[t] > 0, got[t] > 0
        iou = (a & b).sum().item() / max((a | b).sum().item(), 1)
        assert iou >= 0.99, (runtime, t, iou)
        # hole filling (fill_hole_area) is discrete: a logit at ~0 may flip a pixel to the 0.1 fill value, so the
        # logits are compared on 99.9% of the pixels
        close = ((ref[t] - got[t]).abs() <= 1e-3).float().mean().item()
        assert close >= 0.999, (runtime, t, close)


def _check_image_matches(model, model_dir: str, runtime: str) -> None:
    image = (np.random.default_rng(1).random((150, 200, 3)) * 255).astype(np.uint8)
    ref, got = ImagePredictor(model), ExportedImagePredictor(ExportedModel(model_dir, runtime))
    for p in (ref, got):
        p.set_image(image)
    for prompt in ({"points": [[90, 60]], "labels": [1]},
                   {"points": [[90, 60], [30, 40]], "labels": [1, 0], "box": [10, 10, 150, 120],
                    "multimask_output": False}):
        a, b = ref.predict(**prompt), got.predict(**prompt)
        np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-3)
        np.testing.assert_allclose(b.iou, a.iou, atol=1e-3)
        assert abs(a.object_score - b.object_score) <= 1e-3
        assert (a.masks != b.masks).mean() <= 1e-3


# ----------------------------------------------------------------------------------------------- ONNX

def test_onnx_manifest_readme_and_checks(onnx_dir, checkpoint):
    manifest = json.loads((_p(onnx_dir) / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["image_size"] == S and manifest["quantize"] is None
    assert manifest["source_checkpoint"]["sha256"] == hashlib.sha256(checkpoint[0].read_bytes()).hexdigest()
    assert list(manifest["parts"]) == list(PARTS)
    for name, part in manifest["parts"].items():
        path = _p(onnx_dir) / part["file"]
        assert path.is_file() and path.stat().st_size == part["bytes"], name
    enc = manifest["parts"]["image_encoder"]
    assert enc["inputs"][0] == {"name": "pixels", "shape": [1, 3, S, S], "dtype": "float32",
                                "doc": enc["inputs"][0]["doc"]}
    assert [t["name"] for t in enc["outputs"]] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1",
                                                   "vision_features"]
    att = {t["name"]: t["shape"] for t in manifest["parts"]["memory_attention"]["inputs"]}
    assert att["memory"] == [1, 7, 512, 64] and att["obj_ptrs"] == [1, 16, 256]
    assert manifest["memory"] == {"max_memory_frames": 7, "memory_tokens": 512, "max_object_pointers": 16}
    diffs = manifest["checks"]["max_abs_diff"]
    assert {"memory_attention/partial", "memory_encoder/binarized", "decoder/obj_ptr", "decoder/5pt+mask/masks",
            "encoder/vision_features"} <= set(diffs)
    assert max(diffs.values()) <= 1e-3
    readme = (_p(onnx_dir) / "README.md").read_text()
    for name in ("pixels", "vision_features", "memory_tpos", "obj_ptr_valid", "single_obj_ptr", "pix_feat"):
        assert f"`{name}`" in readme
    assert "## App loop (streaming camera frames)" in readme and "One object prompted once: " in readme


def _p(d):
    from pathlib import Path

    return Path(d)


def test_onnx_video_tracking_matches_torch(onnx_dir, checkpoint):
    _check_tracking_matches(checkpoint[1], onnx_dir, "onnx")


def test_onnx_video_tracking_from_a_mask_matches_torch(onnx_dir, checkpoint):
    """A mask prompt (add_mask) through the exported graphs: SAM 2's mask-as-output rule with the manifest's
    mask_downsample conv and no-object pointer, then tracking from that memory."""
    _check_tracking_matches(checkpoint[1], onnx_dir, "onnx", prompt="mask")


def test_onnx_image_predictor_matches_torch(onnx_dir, checkpoint):
    _check_image_matches(checkpoint[1], onnx_dir, "onnx")


def test_predict_cli_runtime_onnx_writes_torch_outputs(onnx_dir, checkpoint, tmp_path):
    from PIL import Image

    image = (np.random.default_rng(2).random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    common = ["image", "--image", str(tmp_path / "im.png"), "--points", "80,60", "--labels", "1",
              "--image-size", str(S)]
    assert predict_cli.main(common + ["--ckpt", str(checkpoint[0]), "--device", "cpu", "--out",
                                      str(tmp_path / "torch")]) == 0
    assert predict_cli.main(common + ["--runtime", "onnx", "--model-dir", onnx_dir, "--out",
                                      str(tmp_path / "onnx")]) == 0
    a, b = np.load(tmp_path / "torch.npz"), np.load(tmp_path / "onnx.npz")
    assert set(a.files) == set(b.files) == {"masks", "iou", "low_res_logits", "object_score"}
    np.testing.assert_allclose(b["low_res_logits"], a["low_res_logits"], atol=1e-3)
    np.testing.assert_allclose(b["iou"], a["iou"], atol=1e-3)


def test_runtime_argument_errors(onnx_dir, checkpoint, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    args = ["image", "--image", str(tmp_path / "im.png"), "--points", "1,1", "--labels", "1", "--out",
            str(tmp_path / "x")]
    assert predict_cli.main(args + ["--runtime", "onnx"]) == 2
    assert "--runtime onnx needs --model-dir" in capsys.readouterr().err
    assert predict_cli.main(args + ["--runtime", "executorch", "--model-dir", onnx_dir]) == 2
    assert "holds a onnx export" in capsys.readouterr().err
    assert predict_cli.main(args) == 2
    assert "--ckpt is required" in capsys.readouterr().err


def test_damaged_export_folder_exits_2_naming_the_file(onnx_dir, tmp_path, capsys):
    """A truncated graph (was onnxruntime's InvalidProtobuf traceback), a truncated manifest.json (was "Expecting
    value: line N" without the file) and a manifest without 'tracking' (was a KeyError): exit 2, the file named."""
    import shutil

    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "im.png")

    def predict(model_dir) -> str:
        rc = predict_cli.main(["image", "--image", str(tmp_path / "im.png"), "--points", "1,1", "--labels", "1",
                               "--out", str(tmp_path / "x"), "--runtime", "onnx", "--model-dir", str(model_dir)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        return err

    def damaged(name: str):
        folder = tmp_path / name
        shutil.copytree(onnx_dir, folder)
        return folder

    folder = damaged("graph")
    graph = folder / "prompt_decoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    assert f"{graph}: not a loadable onnx graph" in predict(folder)
    (folder / "prompt_decoder.onnx").unlink()
    assert "prompt_decoder.onnx: graph file missing" in predict(folder)
    folder = damaged("manifest")
    manifest = folder / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    assert f"{manifest}: not a readable json manifest (JSONDecodeError" in predict(folder)
    data = json.loads(text)
    del data["tracking"]
    manifest.write_text(json.dumps(data))
    assert f"{manifest}: key 'tracking' missing" in predict(folder)
    data = json.loads(text)
    data["tracking"] = {}
    manifest.write_text(json.dumps(data))
    assert f"{manifest}: 'tracking' must be the exported model's tracking flags" in predict(folder)


def test_missing_toolchain_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert", None)
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingToolchainError, match=r"pip install 'edgetam-train\[litert\]'"):
        TFLiteGraph(tmp_path / "m.tflite", ["x"], ["y"])


# ----------------------------------------------------------------------------------------------- memory slots

@torch.no_grad()
def test_memory_attention_slots_equal_attending_to_valid_tokens(checkpoint):
    """Empty slots (valid 0, any contents) and slot order leave F_M unchanged: equal to condition() on the valid
    memories only."""
    model = checkpoint[1]
    gen = torch.Generator().manual_seed(0)
    h = model.feat_size
    f16 = torch.randn(1, 256, h, h, generator=gen)
    feats = ImageFeatures(f16, model.image_encoder.neck.position_encoding(f16), None)
    _, mem_pos = model.encode_memory(feats, torch.zeros(1, 1, S, S), torch.ones(1, 1), is_mask_from_pts=False)
    part = MemoryAttentionPart(model, mem_pos[0]).eval()
    memory = torch.randn(1, 7, 512, 64, generator=gen)
    ptrs = torch.randn(1, 16, 256, generator=gen)
    tpos = torch.tensor([[0, 1, 2, 3, 4, 5, 6]], dtype=torch.int32)
    valid = torch.tensor([[1, 0, 1, 0, 0, 0, 0]], dtype=torch.float32)  # conditioning frame + 2 frames back
    ptr_valid = torch.zeros(1, 16)
    ptr_valid[0, :3] = 1
    got = part(f16, memory, tpos, valid, ptrs, torch.zeros(1, 16), ptr_valid)
    tokens = torch.cat((memory[:, 0], memory[:, 2], ptrs[:, :3].reshape(1, 12, 64)), dim=1)
    pos = torch.cat([mem_pos + model.maskmem_tpos_enc[model.num_maskmem - t - 1].view(1, 1, -1) for t in (0, 2)]
                    + [torch.zeros(1, 12, 64)], dim=1)
    ref = model.condition(feats, MemoryContext(tokens, pos, 12, 2))
    assert (got - ref).abs().max().item() <= 1e-4
    order = torch.tensor([2, 0, 1, 3, 4, 5, 6])
    shuffled = part(f16, memory[:, order], tpos[:, order], valid[:, order], ptrs, torch.zeros(1, 16), ptr_valid)
    assert (shuffled - ref).abs().max().item() <= 1e-4


def test_memory_attention_graph_keeps_every_tensor_at_rank_5_or_less(checkpoint):
    """Core ML converts tensors of rank <= 5 only; the memory keys' RoPE rotation on a (B, heads, F, N, d) view made
    rank 6 and `--format coreml` stopped at the fourth graph. Checked on the exported graph (no coremltools needed)."""
    model = checkpoint[1]
    h = model.feat_size
    f16 = torch.zeros(1, 256, h, h)
    feats = ImageFeatures(f16, model.image_encoder.neck.position_encoding(f16), None)
    _, mem_pos = model.encode_memory(feats, torch.zeros(1, 1, S, S), torch.ones(1, 1), is_mask_from_pts=False)
    part = MemoryAttentionPart(model, mem_pos[0]).eval()
    args = (f16, torch.randn(1, 7, 512, 64), torch.arange(7, dtype=torch.int32)[None], torch.ones(1, 7),
            torch.randn(1, 16, 256), torch.zeros(1, 16), torch.ones(1, 16))
    graph = torch.export.export(part, args).graph
    ranks = {n.name: n.meta["val"].dim() for n in graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)}
    assert ranks and max(ranks.values()) <= 5, {k: r for k, r in ranks.items() if r > 5}


# ----------------------------------------------------------------------------------------------- ExecuTorch

@pytest.mark.slow  # the ExecuTorch export fixture takes 2-5 min on 2 cores; ONNX covers the same loop by default
def test_executorch_export_checked_and_tracks_like_torch(executorch_dir, checkpoint):
    manifest = json.loads((_p(executorch_dir) / "manifest.json").read_text())
    assert manifest["format"] == "executorch" and manifest["prompt_points"] == {"min": 1, "max": 16}
    assert "executorch runtime" in manifest["checks"]["verified"]
    assert max(manifest["checks"]["max_abs_diff"].values()) <= 1e-3
    assert all((_p(executorch_dir) / p["file"]).suffix == ".pte" for p in manifest["parts"].values())
    _check_tracking_matches(checkpoint[1], executorch_dir, "executorch")
    _check_tracking_matches(checkpoint[1], executorch_dir, "executorch", prompt="mask")
    _check_image_matches(checkpoint[1], executorch_dir, "executorch")


# ----------------------------------------------------------------------------------------------- LiteRT

@pytest.fixture(scope="module")
def tflite_dir(edgetam_256_tflite):
    return edgetam_256_tflite  # the session's export of `checkpoint` (tests/conftest.py), shared with the app loop


def test_tflite_decoder_has_a_signature_per_point_count_and_tracks_like_torch(tflite_dir, checkpoint):
    """LiteRT has no dynamic point count: one decoder signature per count (shared weights), so no padding point
    changes the output and tracking matches PyTorch (padding to a fixed count gave per-frame IoU 0.82-0.91)."""
    from edgetam_train.export.converters import TFLITE_POINTS

    manifest = json.loads((_p(tflite_dir) / "manifest.json").read_text())
    assert manifest["prompt_points"] == {"min": 1, "max": TFLITE_POINTS, "signatures": "points_<n>"}
    assert "tflite runtime" in manifest["checks"]["verified"]
    assert max(manifest["checks"]["max_abs_diff"].values()) <= 1e-3
    graph = ExportedModel(tflite_dir, "tflite").graphs["prompt_decoder"]
    assert sorted(graph.runners) == sorted(f"points_{n}" for n in range(1, TFLITE_POINTS + 1))
    weights = sum(4 * p.numel() for part in ("sam_prompt_encoder", "sam_mask_decoder", "obj_ptr_proj")
                  for p in getattr(checkpoint[1], part).parameters())
    assert manifest["parts"]["prompt_decoder"]["bytes"] < 1.5 * weights  # the weights once, not once per signature
    _check_tracking_matches(checkpoint[1], tflite_dir, "tflite")
    _check_tracking_matches(checkpoint[1], tflite_dir, "tflite", prompt="mask")
    _check_image_matches(checkpoint[1], tflite_dir, "tflite")
    model = ExportedModel(tflite_dir, "tflite")
    feats = model.encode_image(torch.zeros(1, 3, S, S))
    too_many = (torch.zeros(1, TFLITE_POINTS + 1, 2), torch.ones(1, TFLITE_POINTS + 1))
    with pytest.raises(ValueError, match=f"at most {TFLITE_POINTS}"):
        model.heads(feats.image_embeddings, feats.high_res, too_many, None, multimask_output=False)


# ----------------------------------------------------------------------------------------------- Core ML

def test_coreml_decoder_takes_1_to_16_points(checkpoint, tmp_path):
    """Core ML gets the decoder's point count as a range dimension (no padding), read back from the saved spec."""
    pytest.importorskip("coremltools")
    from edgetam_train.export.converters import MAX_POINTS, coreml_spec, write_coreml
    from edgetam_train.export.ondevice import build_parts, example_inputs, part_specs
    from edgetam_train.export.onnx import fuse_for_export

    fused = fuse_for_export(checkpoint[1])
    specs = part_specs(fused, 2, 7, 16, 512)
    names = [t.name for t in specs["prompt_decoder"].outputs]
    path = write_coreml(build_parts(fused)["prompt_decoder"], example_inputs(fused, specs)["prompt_decoder"], names,
                        tmp_path / "prompt_decoder.mlpackage")
    spec = dict(coreml_spec(path)["inputs"])
    assert spec["point_coords"] == (1, (1, MAX_POINTS), 2) and spec["point_labels"] == (1, (1, MAX_POINTS))
    assert spec["mask_input"] == (1, 1, S // 4, S // 4)
    assert [n for n, _ in coreml_spec(path)["outputs"]] == names


# ----------------------------------------------------------------------------------------------- int8

def test_onnx_int8_quantizes_every_graph(onnx_dir, checkpoint, tmp_path, capsys):
    """The encoder statically (calibrated), the other three graphs with dynamic int8 linear layers: every file
    shrinks, and the outputs stay close to float."""
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(calib / f"{i}.png")
    base = [str(checkpoint[0]), "--format", "onnx", "--image-size", str(S), "--quantize", "int8"]
    assert cli.main(base + ["--out", str(tmp_path / "bad")]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert cli.main(base + ["--calibration", str(calib), "--out", str(tmp_path / "int8")]) == 0
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    float_manifest = json.loads((_p(onnx_dir) / "manifest.json").read_text())
    assert manifest["quantize"] == "int8" and manifest["quantized"]["image_encoder"].startswith("int8 static")
    for name in ("prompt_decoder", "memory_encoder", "memory_attention"):
        assert manifest["quantized"][name].startswith("int8 dynamic"), name
    for name, part in manifest["parts"].items():
        assert part["bytes"] < 0.7 * float_manifest["parts"][name]["bytes"], name
    diffs = manifest["checks"]["max_abs_diff"]
    assert 0 < diffs["encoder/image_embeddings"] < 0.5  # quantised (not float), but close
    assert 0 < diffs["memory_attention/full"] < 0.5 and 0 < diffs["decoder/obj_ptr"] < 0.5


def _calibration(folder) -> str:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "tflite"])
def test_int8_export_runs_in_its_runtime_and_tracks(fmt, checkpoint, tmp_path):
    """ExecuTorch (~2.5 min) and LiteRT (~3 min, needs the litert extra) int8: each graph quantised where the
    toolchain can run it, the files smaller than float, checked in the runtime, and tracking still follows PyTorch's
    masks (IoU >= 0.5 on random weights, where logits sit near 0 and int8 noise flips pixels)."""
    pytest.importorskip({"executorch": "executorch.runtime", "tflite": "ai_edge_litert.interpreter"}[fmt])
    out = tmp_path / "int8"
    assert cli.main([str(checkpoint[0]), "--format", fmt, "--image-size", str(S), "--quantize", "int8",
                     "--calibration", _calibration(tmp_path / "calib"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantized"]["image_encoder"].startswith("int8 static")
    assert sum(v.startswith("int8") for v in manifest["quantized"].values()) == 3  # one stays float (STAYS_FLOAT)
    frames = _video()
    ref = _track(VideoPredictor(checkpoint[1], fill_hole_area=8), frames, frame_idx=2)
    got = _track(ExportedVideoPredictor(ExportedModel(out, fmt), fill_hole_area=8), frames, frame_idx=2)
    for t in ref:
        a, b = ref[t] > 0, got[t] > 0
        assert (a & b).sum().item() / max((a | b).sum().item(), 1) >= 0.5, t


def test_tflite_int8_tensors_are_quantised_and_dequantised_with_their_parameters():
    """A statically quantised .tflite takes int8 pixels: the backend quantises float inputs with the tensor's
    scale / zero point and dequantises integer outputs."""
    from edgetam_train.runtime.backends import _from_tensor, _to_tensor

    details = {"dtype": np.int8, "quantization": (0.5, 3)}
    q = _to_tensor(np.array([0.0, 1.0, -100.0, 100.0], dtype=np.float32), details)
    assert q.dtype == np.int8 and q.tolist() == [3, 5, -128, 127]  # rounded, clipped to int8
    np.testing.assert_allclose(_from_tensor(q, details), [0.0, 1.0, -65.5, 62.0])
    same = np.ones(2, dtype=np.float32)
    assert _to_tensor(same, {"dtype": np.float32, "quantization": (0.0, 0)}) is same
    assert _from_tensor(same, {"dtype": np.float32, "quantization": (0.0, 0)}) is same


@pytest.mark.slow
def test_onnx_export_at_1024_tracks_like_torch(tmp_path):
    """The shipped size: the four graphs at 1024 x 1024 (memory 512 tokens per frame), checked by the export, and
    video tracking through them equal to PyTorch's (~3 min on 2 cores)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(7)
    model = build_model("edgetam", image_size=1024).eval()
    path = tmp_path / "edgetam.pt"
    torch.save({"model": model.state_dict()}, path)
    assert cli.main([str(path), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["image_size"] == 1024
    assert manifest["parts"]["image_encoder"]["inputs"][0]["shape"] == [1, 3, 1024, 1024]
    assert manifest["memory"]["memory_tokens"] == 512
    _check_tracking_matches(model, str(tmp_path / "onnx"), "onnx")


@pytest.mark.slow  # the bench itself (float + int8 exports, latency, IoU): ~2-4 min; make test-all / make bench
def test_export_runtimes_bench_writes_its_table(tmp_path):
    """scripts/bench/export_runtimes.py: float and int8 rows with size, latency, Δ logits and held-out mask IoU,
    written into the doc's export_runtimes section (float ONNX IoU >= 0.99)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept\n")
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "export_runtimes.py"
    run = subprocess.run([sys.executable, str(script), "--formats", "onnx", "onnx:int8", "--image-size", str(S),
                          "--images", "1", "--calibration-images", "2", "--reps", "1", "--doc", str(doc)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = doc.read_text()
    assert "kept" in text and "<!-- export_runtimes:begin -->" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
            if line.startswith("| onnx")}
    assert set(rows) == {"onnx", "onnx:int8"}
    assert float(rows["onnx"][-1].split()[0]) >= 0.99
    float_mb, int8_mb = (float(rows[k][0].split("/")[0]) for k in ("onnx", "onnx:int8"))
    assert int8_mb < 0.6 * float_mb


def test_exported_image_encoder_holds_no_position_encoding_grids(checkpoint):
    """The encoder graph's outputs read no sine position encoding. After the model had encoded an image, its cached
    grids were captured by torch.export as constants: 85 MB of the 1024 px ExecuTorch encoder (108 MB -> 19 MB)."""
    from edgetam_train.export.ondevice import ImageEncoderPart
    from edgetam_train.export.onnx import fuse_for_export

    part = ImageEncoderPart(fuse_for_export(checkpoint[1])).eval()
    x = torch.zeros(1, 3, S, S)
    part(x)  # the grid cache is warm, as after any prediction or export check
    program = torch.export.export(part, (x,))
    consts = {k: tuple(v.shape) for k, v in program.constants.items() if isinstance(v, torch.Tensor)}
    assert not {k: v for k, v in consts.items() if len(v) >= 3 and v[-3] == 256}, consts


# ----------------------------------------------------------------------------------------------- streaming

def _check_streaming_matches_propagate(model_dir: str, runtime: str) -> None:
    """StreamingTracker over the exported graphs equals ExportedVideoPredictor.propagate on the same graphs (two
    objects, one entering mid-stream; tests/predictor/test_streaming.py's scenario, 24 frames so pruning runs)."""
    from edgetam_train.predictor.streaming import StreamingTracker
    from tests.predictor.test_streaming import check_equal, clip, offline, streamed

    frames = clip(24)  # one runtime thread: 2-3x faster than the default on 2 busy cores
    predictor = ExportedVideoPredictor(ExportedModel(model_dir, runtime, threads=1), fill_hole_area=8)
    check_equal(offline(predictor, frames), streamed(StreamingTracker(predictor), frames))


def test_onnx_streaming_equals_propagate(onnx_dir):
    _check_streaming_matches_propagate(onnx_dir, "onnx")


@pytest.mark.slow  # shares the ExecuTorch export fixture (2-5 min)
def test_executorch_streaming_equals_propagate(executorch_dir):
    _check_streaming_matches_propagate(executorch_dir, "executorch")


def test_tflite_streaming_equals_propagate(tflite_dir):
    _check_streaming_matches_propagate(tflite_dir, "tflite")
