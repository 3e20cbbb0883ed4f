"""Any timm trunk as the student (issue 16): levels picked by stride, the neck's channels from timm's feature_info,
clear errors for models that do not fit, local timm weights files, and the edgetam_* arch configs."""

from __future__ import annotations

import pytest
import timm
import torch

from edgetam_train.models.build import available_models, build_model, model_config
from edgetam_train.models.trunk import TimmTrunk, select_levels

# timm name -> (timm out_indices at strides 4/8/16/32, configs/arch variant)
TRUNKS = {
    "repvit_m1": ([0, 1, 2, 3], "edgetam"),
    "repvit_m0_9": ([0, 1, 2, 3], "edgetam_repvit_m0_9"),
    "repvit_m2_3": ([0, 1, 2, 3], "edgetam_repvit_m2_3"),
    "mobilenetv4_conv_small": ([1, 2, 3, 4], "edgetam_mobilenetv4"),
    "efficientvit_b0": ([0, 1, 2, 3], "edgetam_efficientvit"),
    "fastvit_t8": ([0, 1, 2, 3], "edgetam_fastvit"),
}


@pytest.mark.parametrize("name", list(TRUNKS))
def test_levels_and_channels_come_from_timm(name):
    indices, _ = TRUNKS[name]
    assert select_levels(name) == indices
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
    trunk = TimmTrunk(name)
    assert trunk.out_indices == indices
    assert trunk.strides == [4, 8, 16, 32]
    assert trunk.channel_list == list(reference.feature_info.channels())[::-1]


@pytest.mark.parametrize("name", list(TRUNKS))
def test_arch_variant_builds_with_the_trunks_channels(name):
    _, arch = TRUNKS[name]
    assert arch in available_models()
    assert model_config(arch).image_encoder.trunk.name == name
    model = build_model(arch, image_size=256).eval()
    trunk = model.image_encoder.trunk
    neck = model.image_encoder.neck
    assert neck.backbone_channel_list == trunk.channel_list
    assert [conv.conv.in_channels for conv in neck.convs] == trunk.channel_list
    keys = list(model.state_dict())
    assert all(k.startswith("image_encoder.trunk.body.") for k in keys if k.startswith("image_encoder.trunk."))
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, 256, 256))
    assert feats.f16.shape == (1, 256, 16, 16)


def test_one_override_is_enough():
    """``model.student.image_encoder.trunk.name=<timm name>`` on the default edgetam tree builds that trunk."""
    cfg = model_config("edgetam", image_size=256)
    cfg.image_encoder.trunk.name = "efficientvit_b0"
    model = build_model(cfg)
    assert model.image_encoder.trunk.channel_list == [128, 64, 32, 16]


def test_strides_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match=r"strides \[16, 16, 16\].*needs one level at each of strides "
                                         r"\[4, 8, 16, 32\]"):
        TimmTrunk("vit_tiny_patch16_224")
    cfg = model_config("edgetam", image_size=256)
    cfg.image_encoder.trunk.name = "vit_tiny_patch16_224"
    with pytest.raises(ValueError, match=r"cannot build .*strides \[16, 16, 16\]"):
        build_model(cfg)


def test_explicit_out_indices_with_other_strides_and_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match=r"out_indices \[0, 1, 2, 3\]: feature strides \[2, 4, 8, 16\]"):
        TimmTrunk("mobilenetv4_conv_small", out_indices=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"'no_such_trunk' cannot be built.*Unknown model"):
        TimmTrunk("no_such_trunk")


def test_neck_channels_typed_by_hand_must_match_the_trunk():
    cfg = model_config("edgetam_efficientvit", image_size=256)
    cfg.image_encoder.neck.backbone_channel_list = [384, 192, 96, 48]
    with pytest.raises(ValueError, match=r"neck backbone_channel_list \[384, 192, 96, 48\] != trunk channel_list "
                                         r"\[128, 64, 32, 16\]"):
        build_model(cfg)


@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "efficientvit_b0", "fastvit_t8"])
def test_local_timm_weights_file_initialises_the_trunk(tmp_path, name):
    """A full timm state_dict (head, final conv included) loads as timm itself would load it into features_only."""
    full = timm.create_model(name, pretrained=False)
    path = tmp_path / f"{name}.pth"
    torch.save(full.state_dict(), path)
    indices = select_levels(name)
    reference = timm.create_model(name, pretrained=True, features_only=True, out_indices=indices,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()  # timm's own local-file load
    trunk = TimmTrunk(name, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(trunk(x), reference(x), strict=True):
            assert torch.equal(ours, theirs)


def test_quickstart_with_another_trunk_trains_predicts_and_exports(tmp_path, capsys):
    """The one override on the quick start trains; the checkpoint alone then drives edgetam-predict and -export."""
    import numpy as np
    from PIL import Image

    from edgetam_train.data.synthetic import make_sample_data
    from edgetam_train.export.cli import main as export_main
    from edgetam_train.predictor.cli import main as predict_main
    from tests.run.test_train import run_train  # python train.py as the quick-start tests run it

    make_sample_data(["--out", str(tmp_path / "data" / "sample"), "--num-images", "2", "--formats",
                           "sa1b,davis", "--num-davis-videos", "1", "--video-frames", "2"])
    proc = run_train(tmp_path, "experiment=edgetam_distill", "debug=quickstart", "trainer.max_steps=2",
                     "callbacks.model_checkpoint.every_n_train_steps=2", "model.prompts.num_correction_clicks=1",
                     "data.max_masks=2", "model.student.image_encoder.trunk.name=efficientvit_b0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = tmp_path / "logs" / "train" / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
    record = torch.load(ckpt, map_location="cpu", weights_only=True)["edgetam_arch"]
    assert (record["trunk"], record["image_size"]) == ("efficientvit_b0", 256)

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(image)
    assert predict_main(["image", "--ckpt", str(ckpt), "--image", str(image), "--points", "40,30", "--labels", "1",
                         "--device", "cpu", "--out", str(tmp_path / "pred")]) == 0
    assert export_main([str(ckpt), "--format", "official", "--out", str(tmp_path / "student.pt")]) == 0
    assert "trunk efficientvit_b0, 256 px" in capsys.readouterr().out


def test_channels_last_timm_features_become_channels_first_and_hf_says_plainly_it_cannot():
    """Swin's features_only maps are NHWC: the trunk permutes them; transformers' EdgeTamVisionModel reads its timm
    backbone's maps as NCHW, so the HF export refuses that trunk with a plain message."""
    from types import SimpleNamespace

    from edgetam_train.export.hf import hf_target

    trunk = TimmTrunk("swin_tiny_patch4_window7_224", img_size=128).eval()
    assert trunk.channels_last and trunk.strides == [4, 8, 16, 32]
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in trunk(torch.randn(1, 3, 128, 128))]
    assert shapes == [(1, c, 128 // s, 128 // s) for c, s in zip(trunk.channel_list[::-1], trunk.strides)]
    with pytest.raises(ValueError, match=r"transformers cannot express the timm trunk 'swin_tiny_patch4_window7_224'"
                                         r".*channels-last.*official or onnx"):
        hf_target(SimpleNamespace(image_encoder=SimpleNamespace(trunk=trunk)))


def test_hf_target_follows_the_trunk():
    from edgetam_train.export.hf import hf_target
    from edgetam_train.export.hf_config import hf_config

    model = build_model("edgetam_mobilenetv4", image_size=256)
    name, spec = hf_target(model)
    assert (name, spec.architecture, spec.out_indices, spec.channel_list) == (
        "edgetam", "mobilenetv4_conv_small", (1, 2, 3, 4), (960, 96, 64, 32))
    vision = hf_config(name, 256, "image", spec).vision_config
    assert vision.backbone_config.architecture == "mobilenetv4_conv_small"
    assert vision.backbone_config.model_args["out_indices"] == [1, 2, 3, 4]
    assert vision.backbone_channel_list == [960, 96, 64, 32]
    with pytest.raises(ValueError, match=r"does not match the model's trunk"):
        hf_target(model, "sam2.1_hiera_t")


def test_hf_and_onnx_exports_of_another_trunk_check_out(tmp_path):
    """The exporters reload what they wrote and compare it with the source model (see export/hf.py, onnx.py)."""
    from edgetam_train.export.cli import run_export
    from edgetam_train.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(build_model("edgetam_efficientvit", image_size=256), tmp_path / "student.pt")
    for fmt in ("hf", "onnx"):
        report = run_export(path, fmt, tmp_path / fmt)
        assert report.ok, report.summary()
        assert report.arch["trunk"] == "efficientvit_b0"
    import json

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_config"]["backbone_config"]["architecture"] == "efficientvit_b0"


def test_hiera_position_embedding_fixed_for_export_is_the_same_constant():
    """``HieraTrunk.fix_pos_embed`` (what ``fuse_for_export`` does): the same trunk outputs with no bicubic resize
    left in the forward pass (coremltools converts none: ``Unsupported fx node upsample_bicubic2d``); another input
    size still resizes."""
    from unittest import mock

    from edgetam_train.models.trunk import HieraTrunk

    torch.manual_seed(0)
    trunk = HieraTrunk("sam2_hiera_tiny").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = trunk(x)
        trunk.fix_pos_embed(128)
        assert "fixed_pos_embed" not in trunk.state_dict()  # not part of the checkpoint layout
        with mock.patch("torch.nn.functional.interpolate", side_effect=AssertionError("resized")):
            after = trunk(x)
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        with pytest.raises(AssertionError, match="resized"), \
                mock.patch("torch.nn.functional.interpolate", side_effect=AssertionError("resized")):
            trunk(torch.randn(1, 3, 64, 64))
