"""Image encoder: timm trunks (RepViT-M1, SAM 2 Hiera) + FPN neck.

Checks key names/shapes against the official checkpoint layouts (shared/reference/*.tsv), output shapes, numerics
against transformers' EdgeTAM / SAM 2 vision encoders, RepViT reparameterization, and trunk weight loading.
"""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from torch import nn

from edgetam_train.models.checkpoint import CheckpointMismatchError
from edgetam_train.models.image_encoder import FpnNeck, ImageEncoder
from edgetam_train.models.position_encoding import PositionEmbeddingSine
from edgetam_train.models.trunk import HieraTrunk, TimmTrunk, reparameterize
from tests.helpers.reference import reference_dir

REFERENCE = reference_dir()

CHANNELS = {
    "repvit_m1": [384, 192, 96, 48],
    "sam2_hiera_tiny": [768, 384, 192, 96],
    "sam2_hiera_small": [768, 384, 192, 96],
    "sam2_hiera_base_plus": [896, 448, 224, 112],
    "sam2_hiera_large": [1152, 576, 288, 144],
}
TSV = {
    "repvit_m1": "edgetam_state_dict.tsv",
    "sam2_hiera_tiny": "sam2.1_hiera_tiny_state_dict.tsv",
    "sam2_hiera_small": "sam2.1_hiera_small_state_dict.tsv",
    "sam2_hiera_base_plus": "sam2.1_hiera_base_plus_state_dict.tsv",
    "sam2_hiera_large": "sam2.1_hiera_large_state_dict.tsv",
}


def reference_rows(name: str, prefix: str = "image_encoder.") -> list[tuple[str, tuple[int, ...]]]:
    """(key without ``prefix``, shape) rows of the official state_dict under ``prefix``, in file order."""
    path = REFERENCE / TSV[name]
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith(prefix):
            key, shape, _ = line.split("\t")
            rows.append((key[len(prefix):], () if shape == "()" else tuple(int(s) for s in shape.split("x"))))
    return rows


def build_encoder(name: str) -> ImageEncoder:
    """EdgeTAM / SAM 2.1 image encoder as in the official configs (nearest top-down on levels 2, 3; scalp 1)."""
    trunk = TimmTrunk(name) if name == "repvit_m1" else HieraTrunk(name)
    neck = FpnNeck(PositionEmbeddingSine(256), d_model=256, backbone_channel_list=CHANNELS[name],
                   fpn_interp_model="nearest", fpn_top_down_levels=[2, 3])
    return ImageEncoder(trunk, neck, scalp=1)


def layout(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.fixture(scope="module")
def edgetam_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return build_encoder("repvit_m1").eval()


@pytest.fixture(scope="module")
def hiera_tiny_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return build_encoder("sam2_hiera_tiny").eval()


# ------------------------------------------------------------------ key layout
def test_edgetam_keys_match_official(edgetam_encoder):
    assert layout(edgetam_encoder) == reference_rows("repvit_m1")
    assert edgetam_encoder.trunk.channel_list == [384, 192, 96, 48]
    assert edgetam_encoder.trunk.strides == [4, 8, 16, 32]
    buffers = [k for k, _ in edgetam_encoder.named_buffers()]
    assert len(buffers) == 318 and all(re.search(r"running_(mean|var)|num_batches_tracked", k) for k in buffers)


def test_sam21_tiny_keys_match_official(hiera_tiny_encoder):
    assert layout(hiera_tiny_encoder) == reference_rows("sam2_hiera_tiny")
    assert not list(hiera_tiny_encoder.buffers())


@pytest.mark.parametrize("name", ["sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large"])
def test_sam21_keys_match_official_meta(name):
    with torch.device("meta"):
        encoder = build_encoder(name)
    assert layout(encoder) == reference_rows(name)
    assert encoder.trunk.channel_list == CHANNELS[name]


def test_channel_mismatch_is_an_error():
    neck = FpnNeck(PositionEmbeddingSine(256), 256, [768, 384, 192, 96])
    with pytest.raises(ValueError, match=r"channel_list \[384, 192, 96, 48\]"):
        ImageEncoder(TimmTrunk("repvit_m1"), neck)


# ------------------------------------------------------------------ shapes and numerics
@pytest.mark.parametrize("fixture", ["edgetam_encoder", "hiera_tiny_encoder"])
def test_output_shapes_256(fixture, request):
    encoder = request.getfixturevalue(fixture)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        trunk_out = encoder.trunk(x)
        features, pos = encoder(x)
    expected_trunk = [(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(encoder.trunk.channel_list[::-1])]
    assert [tuple(t.shape) for t in trunk_out] == expected_trunk
    expected = [(2, 256, 64, 64), (2, 256, 32, 32), (2, 256, 16, 16)]
    assert [tuple(f.shape) for f in features] == expected
    assert [tuple(p.shape) for p in pos] == expected
    torch.testing.assert_close(pos[2][0], PositionEmbeddingSine(256).grid(16, 16, torch.device("cpu")))


def test_neck_top_down_only_on_chosen_levels():
    """Levels 0-1 are lateral only; level 2 adds the nearest-upsampled level 3; the sum is float32."""
    torch.manual_seed(0)
    neck = FpnNeck(PositionEmbeddingSine(16), 16, [32, 24, 16, 8], fpn_interp_model="nearest",
                   fpn_top_down_levels=[2, 3])
    xs = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    with torch.no_grad():
        features, _ = neck(xs)
        lateral = [neck.convs[3 - i](x) for i, x in enumerate(xs)]
    torch.testing.assert_close(features[3], lateral[3])
    torch.testing.assert_close(features[2], lateral[2] + lateral[3].repeat_interleave(2, -1).repeat_interleave(2, -2))
    torch.testing.assert_close(features[1], lateral[1])
    torch.testing.assert_close(features[0], lateral[0])
    with pytest.raises(ValueError, match="fuse_type"):
        FpnNeck(PositionEmbeddingSine(16), 16, [8], fuse_type="max")


def _to_transformers_key(key: str) -> str:
    """Our (= official) image-encoder key -> transformers EdgeTamVisionModel / Sam2VisionModel key."""
    key = re.sub(r"^neck\.convs\.(\d+)\.conv\.", r"neck.convs.\1.", key)
    if key.startswith("trunk.body."):
        return "backbone.timm_model." + key[len("trunk.body."):]
    key = "backbone." + key[len("trunk."):] if key.startswith("trunk.") else key
    for ours, theirs in ((".patch_embed.proj.", ".patch_embed.projection."), (".norm1.", ".layer_norm1."),
                         (".norm2.", ".layer_norm2."), (".mlp.layers.0.", ".mlp.proj_in."),
                         (".mlp.layers.1.", ".mlp.proj_out.")):
        key = key.replace(ours, theirs)
    return key


@pytest.mark.parametrize("fixture", ["edgetam_encoder", "hiera_tiny_encoder"])
def test_matches_transformers_vision_encoder(fixture, request):
    transformers = pytest.importorskip("transformers")
    encoder = request.getfixturevalue(fixture)
    if fixture == "edgetam_encoder":
        from transformers.models.edgetam.modeling_edgetam import EdgeTamVisionModel

        backbone = transformers.TimmWrapperConfig(
            architecture="repvit_m1",
            model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
        theirs = EdgeTamVisionModel(transformers.EdgeTamVisionConfig(backbone_config=backbone))
    else:
        from transformers.models.sam2.modeling_sam2 import Sam2VisionModel

        theirs = Sam2VisionModel(transformers.Sam2VisionConfig())  # default = Hiera-T
    theirs.load_state_dict({_to_transformers_key(k): v for k, v in encoder.state_dict().items()}, strict=True)
    theirs.eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        features, pos = encoder(x)
        out = theirs(pixel_values=x)
    for ours, ref in zip(features + pos, list(out.fpn_hidden_states) + list(out.fpn_position_encoding), strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ reparameterization
def _calibrated_repvit(seed: int = 0) -> TimmTrunk:
    """RepViT trunk whose BatchNorms hold non-trivial running statistics (cumulative over a few batches)."""
    torch.manual_seed(seed)
    trunk = TimmTrunk("repvit_m1")
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        trunk.train()(torch.randn(2, 3, 128, 128))
    return trunk.eval()


def test_reparameterized_trunk_equals_original_in_eval():
    trunk = _calibrated_repvit()
    fused = reparameterize(copy.deepcopy(trunk))
    assert fused.reparameterized
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in trunk.parameters())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for a, b in zip(trunk(x), fused(x), strict=True):
            # float rounding of the fused weights: ~1e-6 of the output scale (1e-6 absolute with timm's init)
            torch.testing.assert_close(b, a, rtol=0, atol=2e-6 * max(1.0, a.abs().max().item()))
        assert fused.reparameterize() is fused  # idempotent


# ------------------------------------------------------------------ trunk weights from a local file
def test_timm_imagenet_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("repvit_m1", pretrained=False)  # the non-features_only ImageNet layout
    keys = full.state_dict()
    assert any(k.startswith("stages.0.") for k in keys) and any(k.startswith("head.") for k in keys)
    path = tmp_path / "repvit_m1_in1k.pth"
    torch.save({"model": full.state_dict()}, path)
    trunk = TimmTrunk("repvit_m1", weights=str(path)).eval()
    ref = full.state_dict()
    for key, value in trunk.body.state_dict().items():
        src = re.sub(r"^stages_(\d+)\.", r"stages.\1.", key)
        torch.testing.assert_close(value, ref[src], rtol=0, atol=0)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = full.eval().forward_intermediates(x, indices=4, intermediates_only=True)
        for a, b in zip(trunk(x), expected, strict=True):
            torch.testing.assert_close(a, b)

    # bare state_dict, {"state_dict": ...}, and features_only / official EdgeTAM layouts load too
    for i, obj in enumerate([full.state_dict(), {"state_dict": full.state_dict()},
                             trunk.body.state_dict(),
                             {"model": {f"image_encoder.trunk.body.{k}": v
                                        for k, v in trunk.body.state_dict().items()}}]):
        torch.save(obj, tmp_path / f"w{i}.pt")
        trunk.load_timm(tmp_path / f"w{i}.pt")


def test_wrong_trunk_file_names_file_and_keys(tmp_path):
    path = tmp_path / "not_repvit.pt"
    torch.save({"model": {"encoder.layer1.weight": torch.zeros(3), "stem.conv1.c.weight": torch.zeros(24, 3, 3, 3)}},
               path)
    with pytest.raises(CheckpointMismatchError) as err:
        TimmTrunk("repvit_m1", weights=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys" in msg and "stem.conv1.bn.weight" in msg
    assert "unexpected keys" in msg and "encoder.layer1.weight" in msg
    assert "... and" in msg  # long lists are cut at 20 keys
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TimmTrunk("repvit_m1", weights=tmp_path / "missing.pt")


def test_hiera_trunk_weights_official_and_timm_layouts(tmp_path, hiera_tiny_encoder):
    src = hiera_tiny_encoder.trunk.state_dict()
    timm_layout = {k.replace("mlp.layers.0", "mlp.fc1").replace("mlp.layers.1", "mlp.fc2"): v for k, v in src.items()}
    timm_layout["head.norm.weight"] = torch.ones(768)  # timm's final norm / head is not part of the trunk
    whole_checkpoint = {"model": {**{f"image_encoder.trunk.{k}": v for k, v in src.items()},
                                  "sam_mask_decoder.x": torch.zeros(1)}}
    for i, obj in enumerate([src, timm_layout, whole_checkpoint]):
        path = tmp_path / f"hiera{i}.pt"
        torch.save(obj, path)
        loaded = HieraTrunk("sam2_hiera_tiny", weights=path)
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, src[k]), k
    bad = tmp_path / "bad_hiera.pt"
    torch.save({k: v for k, v in src.items() if k != "pos_embed"}, bad)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)bad_hiera\.pt.*missing keys.*pos_embed"):
        HieraTrunk("sam2_hiera_tiny", weights=bad)
