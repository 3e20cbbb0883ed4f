"""Official <-> transformers checkpoint mapping (edgetam_train.export.hf_keys / hf_convert / hf_config) and the
reference runners.

Checks: official->transformers keys/shapes equal the transformers models' state_dicts exactly (video and image
classes; built on the meta device), the official layout equals shared/reference/*.tsv, round trips are the identity,
unknown keys raise ValueError naming them, configs carry the official hyper-parameters, nothing is downloaded, and
the reference runners in tests/helpers/hf_reference.py give non-degenerate outputs.
"""

from __future__ import annotations

import socket

import pytest
import torch

from tests.helpers.reference import read_layout

pytest.importorskip("transformers")

from edgetam_train.export.hf_config import build_hf_model, hf_config  # noqa: E402
from edgetam_train.export.hf_convert import hf_to_official, official_to_hf  # noqa: E402
from edgetam_train.export.hf_keys import MODELS  # noqa: E402
from tests.helpers.hf_reference import (  # noqa: E402
    OBJECT_SCORE_BIAS_KEY,
    Click,
    VideoScenario,
    hf_image_predict,
    hf_video_track,
    official_layout,
    random_official_state_dict,
)

MAIN = ("edgetam", "sam2.1_hiera_tiny")
OTHERS = tuple(m for m in MODELS if m not in MAIN)


def tsv_layout(model: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of shared/reference/<model>_state_dict.tsv."""
    return {k: shape for k, (shape, _) in read_layout(model).items()}


def meta_official(model: str) -> dict[str, torch.Tensor]:
    """Official-layout meta tensors (from the tsv when present)."""
    return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in official_layout(model).items()}


def shapes(state_dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def assert_same_layout(got: dict, want: dict) -> None:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:10]} unexpected {unexpected[:10]}"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shape mismatches {wrong}"


# ----------------------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("model", MODELS)
def test_official_layout_matches_reference_tsv(model):
    """Our official layout (hence random_official_state_dict) equals the tsv, and hf_to_official of the transformers
    video model's state_dict reproduces it exactly."""
    want = tsv_layout(model)
    assert {k: s for k, (s, _) in official_layout(model).items()} == want
    net = build_hf_model(model, target="video", device="meta")
    assert_same_layout(shapes(hf_to_official(net.state_dict(), model)), want)


@pytest.mark.parametrize("target", ["video", "image"])
@pytest.mark.parametrize("model", MAIN + OTHERS)
def test_official_to_hf_equals_transformers_state_dict(model, target):
    """official -> transformers gives exactly the keys and shapes of the transformers model (no missing/unexpected)."""
    net = build_hf_model(model, target=target, device="meta")
    assert_same_layout(shapes(official_to_hf(meta_official(model), model, target)), shapes(net.state_dict()))


def test_tensor_counts():
    """Counts quoted in shared/reference/README.md: EdgeTAM 982 official, 984 video, 831 image tensors."""
    official = meta_official("edgetam")
    assert len(official) == 982
    assert len(official_to_hf(official, "edgetam", "video")) == 984
    assert len(official_to_hf(official, "edgetam", "image")) == 831


# ----------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("model", MAIN)
def test_round_trip_is_identity(model):
    sd = random_official_state_dict(model, seed=0)
    back = hf_to_official(official_to_hf(sd, model, "video"), model)
    assert set(back) == set(sd)
    for key, tensor in sd.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize("model", MAIN)
def test_image_round_trip_keeps_the_image_path(model):
    sd = random_official_state_dict(model, seed=1)
    hf = official_to_hf(sd, model, "image")
    back = hf_to_official(hf, model, "image")
    image_keys = {k for k in sd if k.startswith(("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder."))}
    assert set(back) == image_keys | {"no_mem_embed"}
    for key, tensor in back.items():
        assert torch.equal(tensor, sd[key]), key
    with pytest.raises(ValueError, match="memory_attention"):
        hf_to_official(official_to_hf(sd, model, "video"), model, "image")


def test_merged_split_and_duplicated_tensors():
    sd = random_official_state_dict("edgetam", seed=2)
    hf = official_to_hf(sd, "edgetam")
    point_embed = hf["prompt_encoder.point_embed.weight"]
    assert point_embed.shape == (4, 256)
    for p in range(4):
        assert torch.equal(point_embed[p], sd[f"sam_prompt_encoder.point_embeddings.{p}.weight"][0])
    gaussian = sd["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(hf["shared_image_embedding.positional_embedding"], gaussian)
    assert torch.equal(hf["prompt_encoder.shared_embedding.positional_embedding"], gaussian)
    to_kv = sd["spatial_perceiver.layers.1.self_attn.to_kv.weight"]
    assert torch.equal(hf["spatial_perceiver.layers.1.self_attention.k_proj.weight"], to_kv[:64])
    assert torch.equal(hf["spatial_perceiver.layers.1.self_attention.v_proj.weight"], to_kv[64:])
    assert hf["vision_encoder.backbone.timm_model.stem.conv1.bn.num_batches_tracked"].dtype == torch.int64
    hf["prompt_encoder.shared_embedding.positional_embedding"] = gaussian + 1
    with pytest.raises(ValueError, match="positional_encoding_gaussian_matrix"):
        hf_to_official(hf, "edgetam")


# ----------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("model", MAIN)
def test_unknown_keys_raise_naming_them(model):
    sd = dict(meta_official(model))
    sd["sam_mask_decoder.bogus.weight"] = torch.empty(1, device="meta")
    sd["not_a_module"] = torch.empty(1, device="meta")
    with pytest.raises(ValueError, match=r"sam_mask_decoder\.bogus\.weight.*not_a_module|not_a_module.*bogus"):
        official_to_hf(sd, model)
    hf = official_to_hf(meta_official(model), model)
    hf["mask_decoder.extra"] = torch.empty(1, device="meta")
    with pytest.raises(ValueError, match=r"mask_decoder\.extra"):
        hf_to_official(hf, model)


def test_keys_of_the_other_family_are_unknown():
    """EdgeTAM has no obj_ptr_tpos_proj / no_obj_embed_spatial; SAM 2.1 has no perceiver."""
    sd = dict(meta_official("edgetam"))
    sd["obj_ptr_tpos_proj.weight"] = torch.empty(64, 256, device="meta")
    with pytest.raises(ValueError, match="obj_ptr_tpos_proj.weight"):
        official_to_hf(sd, "edgetam")
    sd = dict(meta_official("sam2.1_hiera_tiny"))
    sd["spatial_perceiver.latents"] = torch.empty(256, 64, device="meta")
    with pytest.raises(ValueError, match="spatial_perceiver.latents"):
        official_to_hf(sd, "sam2.1_hiera_tiny")


def test_missing_member_of_a_merged_group_raises():
    sd = dict(meta_official("sam2.1_hiera_tiny"))
    del sd["sam_prompt_encoder.point_embeddings.2.weight"]
    with pytest.raises(ValueError, match="point_embeddings.2.weight"):
        official_to_hf(sd, "sam2.1_hiera_tiny")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        official_to_hf({}, "sam3")
    with pytest.raises(ValueError, match="target"):
        official_to_hf({}, "edgetam", "audio")
    with pytest.raises(ValueError, match="multiple of 256"):
        hf_config("edgetam", 384, "video")
    with pytest.raises(ValueError, match="multiple of 32"):
        hf_config("sam2.1_hiera_tiny", 200)


# ----------------------------------------------------------------------------------------------- configs

def test_edgetam_config_matches_official_yaml():
    cfg = hf_config("edgetam", 1024, "video")
    backbone = cfg.vision_config.backbone_config
    assert backbone.architecture == "repvit_m1"
    assert backbone.model_args == {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    assert cfg.vision_config.backbone_channel_list == [384, 192, 96, 48]
    assert cfg.vision_config.backbone_feature_sizes == [[256, 256], [128, 128], [64, 64]]
    assert cfg.memory_attention_num_layers == 2 and cfg.memory_attention_rope_feat_sizes == [64, 64]
    assert cfg.memory_attention_rope_k_sizes == [16, 16]
    assert not cfg.enable_temporal_pos_encoding_for_object_pointers and not cfg.enable_occlusion_spatial_embedding
    assert (cfg.perceiver_resampler_num_latents, cfg.perceiver_resampler_num_latents_2d) == (256, 256)
    assert cfg.perceiver_resampler_num_layers == 2 and cfg.perceiver_resampler_mlp_intermediate_size == 256
    assert cfg.num_maskmem == 7 and cfg.max_object_pointers_in_encoder == 16
    assert cfg.mask_decoder_config.dynamic_multimask_via_stability


@pytest.mark.parametrize("model,stages,global_att,dim,heads,bkg,windows", [
    ("sam2.1_hiera_tiny", [1, 2, 7, 2], [5, 7, 9], 96, 1, [7, 7], [8, 4, 14, 7]),
    ("sam2.1_hiera_small", [1, 2, 11, 2], [7, 10, 13], 96, 1, [7, 7], [8, 4, 14, 7]),
    ("sam2.1_hiera_base_plus", [2, 3, 16, 3], [12, 16, 20], 112, 2, [14, 14], [8, 4, 14, 7]),
    ("sam2.1_hiera_large", [2, 6, 36, 4], [23, 33, 43], 144, 2, [7, 7], [8, 4, 16, 8]),
])
def test_sam21_config_matches_official_yaml(model, stages, global_att, dim, heads, bkg, windows):
    cfg = hf_config(model, 512, "video")
    hiera = cfg.vision_config.backbone_config
    assert hiera.blocks_per_stage == stages and hiera.global_attention_blocks == global_att
    assert hiera.embed_dim_per_stage == [dim, 2 * dim, 4 * dim, 8 * dim]
    assert hiera.num_attention_heads_per_stage == [heads, 2 * heads, 4 * heads, 8 * heads]
    assert hiera.window_positional_embedding_background_size == bkg and hiera.window_size_per_stage == windows
    assert cfg.vision_config.backbone_channel_list == [8 * dim, 4 * dim, 2 * dim, dim]
    assert cfg.vision_config.backbone_feature_sizes == [[128, 128], [64, 64], [32, 32]]
    assert cfg.prompt_encoder_config.image_size == 512 and cfg.image_size == 512
    assert cfg.memory_attention_num_layers == 4 and cfg.memory_attention_rope_feat_sizes == [32, 32]
    assert cfg.enable_temporal_pos_encoding_for_object_pointers and cfg.enable_occlusion_spatial_embedding


def test_builds_and_loads_without_network(monkeypatch):
    """Building EdgeTamModel (timm repvit_m1 through TimmWrapper) and loading our weights opens no connection."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd = random_official_state_dict("edgetam", seed=3)
    net = build_hf_model("edgetam", sd, image_size=256, target="image")
    assert not net.training
    loaded = net.state_dict()["vision_encoder.backbone.timm_model.stages_2.blocks.3.channel_mixer.conv1.bn.running_var"]
    assert torch.equal(loaded, sd["image_encoder.trunk.body.stages_2.blocks.3.channel_mixer.conv1.bn.running_var"])


# ----------------------------------------------------------------------------------------------- runners

def test_random_state_dict_values():
    sd = random_official_state_dict("edgetam", seed=0)
    again = random_official_state_dict("edgetam", seed=0)
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    assert sd["image_encoder.trunk.body.stem.conv1.bn.num_batches_tracked"].dim() == 0
    running_var = sd["image_encoder.trunk.body.stem.conv1.bn.running_var"]
    assert running_var.min() >= 0.5 and running_var.max() <= 1.5
    assert sd["memory_encoder.fuser.layers.0.gamma"].abs().min() >= 0.1
    assert sd[OBJECT_SCORE_BIAS_KEY].min() > 0
    assert all(torch.isfinite(v.float()).all() for v in sd.values())


def test_image_runner_outputs_are_not_degenerate():
    size = 256
    sd = random_official_state_dict("edgetam", seed=0)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = hf_image_predict(sd, "edgetam", image, torch.tensor([[[80.0, 90.0], [150.0, 60.0]]]), torch.tensor([[1, 0]]))
    masks, iou = out["low_res_logits"], out["iou"]
    assert masks.shape == (1, 3, 64, 64) and iou.shape == (1, 3) and out["object_score_logits"].shape == (1, 1)
    assert torch.isfinite(masks).all() and masks.std() > 0.1
    foreground = (masks > 0).float().mean(dim=(-1, -2))
    assert ((foreground > 0.01) & (foreground < 0.99)).all()
    assert iou.unique().numel() == 3
    single = hf_image_predict(sd, "edgetam", image, torch.tensor([[[80.0, 90.0]]]), torch.tensor([[1]]),
                              multimask=False)
    assert single["low_res_logits"].shape == (1, 1, 64, 64)


def test_video_runner_scenario():
    size, frames = 256, 4
    sd = random_official_state_dict("edgetam", seed=0)
    video = torch.randn(frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = hf_video_track(sd, "edgetam", video)
    assert sorted(out) == list(range(frames))
    for frame, result in out.items():
        assert result["low_res_logits"].shape == (2, 1, 64, 64)
        assert result["object_score_logits"].shape == (2, 1) and result["iou"].shape == (2, 1)
        assert torch.isfinite(result["low_res_logits"]).all()
        assert (result["object_score_logits"] > 0).all()  # objects present: masks are not blanked to -1024
    # the two objects are tracked differently, and the frame-2 correction changes object 2 from frame 2 on
    assert (out[1]["low_res_logits"][0] - out[1]["low_res_logits"][1]).abs().mean() > 1e-3
    no_correction = hf_video_track(sd, "edgetam", video, VideoScenario(initial=[
        Click(0, 1, torch.tensor([[0.30 * size, 0.35 * size]]), torch.tensor([1])),
        Click(0, 2, torch.tensor([[0.70 * size, 0.60 * size]]), torch.tensor([1]))]))
    for frame in (0, 1):
        assert torch.equal(no_correction[frame]["low_res_logits"], out[frame]["low_res_logits"])
    for frame in (2, 3):
        assert torch.equal(no_correction[frame]["low_res_logits"][0], out[frame]["low_res_logits"][0])
        assert not torch.allclose(no_correction[frame]["low_res_logits"][1], out[frame]["low_res_logits"][1])
