"""``edgetam-export``: official / transformers / ONNX round trips at 256 px on random official-format weights.

Each export goes through the CLI entry point (which reloads and checks what it wrote); the tests then check the
written files independently: the official file strictly reloads with equal tensors; the transformers directory
loads in the image and the video class with no missing / unexpected keys, carries the RepViT backbone and video
flags, and gives our outputs on a fixed image + click; the ONNX graphs run in onnxruntime and give PyTorch's outputs
for 1, 3 and 5 points. A checkpoint of the wrong model fails with the missing keys; a corrupted export exits 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetam_train.export import cli
from edgetam_train.export.official import fixed_input, image_outputs
from edgetam_train.models.build import build_model
from edgetam_train.models.checkpoint import load_checkpoint, read_state_dict
from tests.helpers.hf_reference import random_official_state_dict

S = 256
DECODER_OUTPUTS = ["masks", "iou_predictions", "single_mask", "single_iou", "object_score_logits"]
MODELS = {"edgetam": "edgetam", "sam2.1_hiera_t": "sam2.1_hiera_tiny"}  # ours -> transformers-side name


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random official-format weights per model, saved as ``{"model": sd}`` files: name -> (path, state_dict)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, hf_name in MODELS.items():
        sd = random_official_state_dict(hf_name, seed=3)
        path = root / f"{name}.pt"
        torch.save({"model": sd}, path)
        out[name] = (path, sd)
    return out


def _model(name: str, sd) -> torch.nn.Module:
    net = build_model(name, image_size=S)
    net.load_state_dict(sd)
    return net.eval()


def _export(capsys, ckpt, fmt, out, model="edgetam") -> str:
    rc = cli.main([str(ckpt), "--format", fmt, "--out", str(out), "--model", model, "--image-size", str(S)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "max abs diff = " in printed.out and ": OK" in printed.out
    return printed.out


# ----------------------------------------------------------------------------------------------- official

def test_official_round_trip(checkpoints, tmp_path, capsys):
    path, sd = checkpoints["edgetam"]
    out = tmp_path / "export" / "edgetam.pt"
    _export(capsys, path, "official", out)
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert list(obj) == ["model", "edgetam_arch"]  # the official loaders read ["model"]; the record is for our tools
    assert (obj["edgetam_arch"]["name"], obj["edgetam_arch"]["image_size"]) == ("edgetam", S)
    assert list(obj["model"]) == list(sd)  # official key order
    for key, tensor in sd.items():
        assert torch.equal(obj["model"][key], tensor), key
    load_checkpoint(build_model("edgetam", image_size=S), out)  # strict


def test_official_from_lightning_checkpoint(checkpoints, tmp_path, capsys):
    """A training checkpoint (student weights under ``student.``, teacher weights alongside) exports the student."""
    _, sd = checkpoints["edgetam"]
    lightning = {"state_dict": {**{f"student.{k}": v for k, v in sd.items()},
                                "teacher.image_encoder.trunk.pos_embed": torch.zeros(1)},
                 "epoch": 0, "global_step": 10}
    ckpt = tmp_path / "last.ckpt"
    torch.save(lightning, ckpt)
    out = tmp_path / "student.pt"
    _export(capsys, ckpt, "official", out)
    back = read_state_dict(out)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_wrong_checkpoint_names_missing_keys(checkpoints, tmp_path, capsys):
    path, _ = checkpoints["sam2.1_hiera_t"]  # no record: --model decides (without it, the keys' guess would)
    rc = cli.main([str(path), "--format", "official", "--out", str(tmp_path / "x.pt"), "--image-size", str(S),
                   "--model", "edgetam"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing keys" in err and "image_encoder.trunk.body.stem.conv1.c.weight" in err
    assert "unexpected keys" in err and "image_encoder.trunk.patch_embed.proj.weight" in err
    assert "--model sam2.1_hiera_t" in err  # the hint
    assert not (tmp_path / "x.pt").exists()


def test_corrupted_export_exits_1(checkpoints, tmp_path, capsys, monkeypatch):
    """The check really compares the reloaded file: perturb one tensor on the way to disk -> status 1."""
    from edgetam_train.export import official

    real_save = official.save_checkpoint

    def corrupting_save(model, path):
        model = build_model("edgetam", image_size=S)
        model.load_state_dict(read_state_dict(checkpoints["edgetam"][0]))
        with torch.no_grad():
            model.sam_mask_decoder.iou_token.weight.add_(0.05)
        return real_save(model, path)

    monkeypatch.setattr(official, "save_checkpoint", corrupting_save)
    rc = cli.main([str(checkpoints["edgetam"][0]), "--format", "official", "--out", str(tmp_path / "bad.pt"),
                   "--image-size", str(S)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED" in out and "state_dict: 0.05" in out


# ----------------------------------------------------------------------------------------------- transformers

@torch.no_grad()
def _hf_outputs(net, pixels, points, labels, multimask):
    out = net(pixel_values=pixels, input_points=points[:, None].float(), input_labels=labels[:, None].long(),
              multimask_output=multimask)
    return out.pred_masks[:, 0], out.iou_scores[:, 0], out.object_score_logits[:, 0]


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_directory_loads_in_image_and_video_classes(name, checkpoints, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    path, sd = checkpoints[name]
    out_dir = tmp_path / f"{name}-hf"
    printed = _export(capsys, path, "hf", out_dir, model=name)
    assert "video/frame1/low_res_logits" in printed  # the export checked tracking from memory too
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {p.name for p in out_dir.iterdir()}
    family = "EdgeTam" if name == "edgetam" else "Sam2"
    image_cls, video_cls = getattr(transformers, f"{family}Model"), getattr(transformers, f"{family}VideoModel")

    video, info = video_cls.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = video.config
    assert cfg.image_size == S and cfg.num_maskmem == 7
    if name == "edgetam":
        assert cfg.vision_config.backbone_config.architecture == "repvit_m1"
        assert cfg.perceiver_resampler_num_latents == 256 and cfg.perceiver_resampler_num_latents_2d == 256
        assert not cfg.enable_temporal_pos_encoding_for_object_pointers and not cfg.enable_occlusion_spatial_embedding
    else:
        assert cfg.enable_temporal_pos_encoding_for_object_pointers and cfg.enable_occlusion_spatial_embedding
        assert cfg.memory_attention_num_layers == 4
    assert cfg.multimask_output_for_tracking and cfg.mask_decoder_config.dynamic_multimask_via_stability

    image, info = image_cls.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(image.config).__name__ == f"{family}Config"
    image = image.float().eval()

    ours = _model(name, sd)
    pixels, points, labels = fixed_input(S, num_points=1, seed=5)
    ref = image_outputs(ours, pixels, points, labels)
    for multimask, key in ((True, "multimask"), (False, "single")):
        masks, iou, obj = _hf_outputs(image, pixels, points, labels, multimask)
        assert (masks - ref[f"{key}_logits"]).abs().max() <= 1e-4
        assert (iou - ref[f"{key}_iou"]).abs().max() <= 1e-4
        assert (obj - ref["object_score"]).abs().max() <= 1e-4
    assert ref["multimask_logits"].std() > 0.1  # a non-degenerate comparison


# ----------------------------------------------------------------------------------------------- ONNX

def test_onnx_graphs_match_torch(checkpoints, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, sd = checkpoints["edgetam"]
    out_dir = tmp_path / "onnx"
    printed = _export(capsys, path, "onnx", out_dir)
    assert "decoder/5pt+mask/masks" in printed

    encoder_graph = onnx.load(str(out_dir / "image_encoder.onnx"))
    decoder_graph = onnx.load(str(out_dir / "prompt_decoder.onnx"))
    assert max(o.version for o in encoder_graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert "BatchNormalization" not in {n.op_type for n in encoder_graph.graph.node}  # RepViT fused
    assert [i.name for i in decoder_graph.graph.input] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1",
                                                           "point_coords", "point_labels", "mask_input",
                                                           "has_mask_input"]

    encoder = ort.InferenceSession(str(out_dir / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out_dir / "prompt_decoder.onnx"), providers=["CPUExecutionProvider"])
    model = _model("edgetam", sd)
    pixels = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(11))
    # by name: the on-device split adds vision_features (encoder) and the object pointers (decoder)
    embeddings, hr0, hr1 = encoder.run(["image_embeddings", "high_res_feats_0", "high_res_feats_1"],
                                       {"pixels": pixels.numpy()})
    assert embeddings.shape == (1, 256, S // 16, S // 16) and hr0.shape == (1, 32, S // 4, S // 4)
    assert hr1.shape == (1, 64, S // 8, S // 8)
    gen = torch.Generator().manual_seed(12)
    for n in (1, 3, 5):
        points = torch.rand(1, n, 2, generator=gen) * S
        labels = torch.randint(0, 2, (1, n), generator=gen).to(torch.int32)
        mask = torch.randn(1, 1, S // 4, S // 4, generator=gen) * 3
        for use_mask in (False, True):
            ref = image_outputs(model, pixels, points, labels, mask if use_mask else None)
            masks, ious, single, single_iou, obj = decoder.run(DECODER_OUTPUTS, {
                "image_embeddings": embeddings, "high_res_feats_0": hr0, "high_res_feats_1": hr1,
                "point_coords": points.numpy(), "point_labels": labels.float().numpy(), "mask_input": mask.numpy(),
                "has_mask_input": np.array([float(use_mask)], dtype=np.float32)})
            assert masks.shape == (1, 3, S // 4, S // 4) and single.shape == (1, 1, S // 4, S // 4)
            for got, key in ((masks, "multimask_logits"), (ious, "multimask_iou"), (single, "single_logits"),
                             (single_iou, "single_iou"), (obj, "object_score")):
                diff = (torch.from_numpy(got) - ref[key]).abs().max().item()
                assert diff <= 1e-3, (n, use_mask, key, diff)
