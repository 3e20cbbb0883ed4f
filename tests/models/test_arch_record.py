"""Checkpoints that describe themselves (issues 16.3 and 18.2): official exports and Lightning checkpoints record the
architecture (trunk included) and the image size; the tools rebuild the model from the file alone, refuse flags and
models that contradict it, and official files without a record keep working with --model / --image-size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from edgetam_train.config import CONFIG_DIR
from edgetam_train.export.cli import main as export_main
from edgetam_train.models.arch_record import ARCH_KEY, ArchitectureMismatchError
from edgetam_train.models.build import build_model, load_model_file, record_student_architecture
from edgetam_train.models.checkpoint import CheckpointMismatchError, save_checkpoint
from edgetam_train.predictor.cli import main as predict_main

S = 256
ARCH = "edgetam_efficientvit"  # the cheapest non-RepViT student


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_model(ARCH, image_size=S).eval()


@pytest.fixture(scope="module")
def official(student, tmp_path_factory):
    return save_checkpoint(student, tmp_path_factory.mktemp("ckpt") / "student.pt")


def _plain(obj) -> bool:
    """Only what ``torch.load(weights_only=True)`` accepts without allow-listing: dict, list, str, int, float, bool,
    None."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool))


def test_official_file_records_the_architecture_and_still_loads_as_the_official_code_does(official, student):
    raw = torch.load(official, map_location="cpu", weights_only=True)
    record = raw[ARCH_KEY]
    assert (record["name"], record["trunk"], record["image_size"]) == (ARCH, "efficientvit_b0", S)
    assert _plain(record)
    assert record["config"]["image_encoder"]["trunk"]["weights"] is None  # init files are not architecture
    # sam2 1.1.0 build_sam._load_checkpoint: sd = torch.load(path, weights_only=True)["model"]; strict load
    fresh = build_model(ARCH, image_size=S)
    missing, unexpected = fresh.load_state_dict(raw["model"])
    assert not missing and not unexpected


def test_rebuilt_from_the_file_alone(official, student):
    model = load_model_file(official)
    assert model.image_size == S and model.image_encoder.trunk.name == "efficientvit_b0"
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.encode_image(x).f16, student.encode_image(x).f16)
    # flags that agree are accepted
    assert load_model_file(official, ARCH, S).image_size == S


def test_flags_that_contradict_the_record_are_errors(official):
    with pytest.raises(ArchitectureMismatchError, match=r"--image-size 1024 contradicts it"):
        load_model_file(official, image_size=1024)
    with pytest.raises(ArchitectureMismatchError,
                       match=r"(?s)--model edgetam differs.*\n  image_encoder.trunk.name: file 'efficientvit_b0', "
                             r"--model edgetam 'repvit_m1'"):
        load_model_file(official, "edgetam")


def test_a_model_with_another_trunk_refuses_the_file_naming_both(official):
    with pytest.raises(CheckpointMismatchError, match=r"holds edgetam_efficientvit \(trunk efficientvit_b0, 256 px\), "
                                                      r"the model has trunk repvit_m1"):
        build_model("edgetam", image_size=S, checkpoint=official)


def test_files_without_a_record_use_model_and_image_size(student, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"model": student.state_dict()}, path)  # as the official releases: no record
    with pytest.raises(CheckpointMismatchError, match=r"(?s)records no architecture.*hint: pass the --model"):
        load_model_file(path, image_size=S)
    model = load_model_file(path, ARCH, S)
    assert model.image_encoder.trunk.name == "efficientvit_b0"


def test_lightning_checkpoint_rebuilds_with_the_predictors_settings(student, tmp_path):
    """A training record says dynamic_multimask_via_stability=false (training setting); tools run it as true."""
    record = dict(student.arch_record)
    record["config"] = {**record["config"],
                        "sam_mask_decoder": {**record["config"]["sam_mask_decoder"],
                                             "dynamic_multimask_via_stability": False}}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()}, "global_step": 3,
                ARCH_KEY: record}, path)
    model = load_model_file(path)
    assert model.image_encoder.trunk.name == "efficientvit_b0"
    assert model.sam_mask_decoder.dynamic_multimask_via_stability is True
    assert load_model_file(path, ARCH).image_size == S  # the training-only setting is no contradiction


def test_train_records_the_composed_student(tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", "debug=quickstart", "model.teacher=null",
                                          "model.student.image_encoder.trunk.name=efficientvit_b0"])
    from hydra.utils import instantiate

    module = instantiate(cfg.model, _convert_="partial")
    record_student_architecture(module, cfg)
    checkpoint = {"state_dict": {f"student.{k}": v for k, v in module.student.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    record = checkpoint[ARCH_KEY]
    assert (record["trunk"], record["image_size"]) == ("efficientvit_b0", S)
    # the arch value: training switches the fallback off by its step rules (models/step_rules.py), not the config
    assert record["config"]["sam_mask_decoder"]["dynamic_multimask_via_stability"] is True
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    assert load_model_file(path).image_encoder.trunk.channel_list == [128, 64, 32, 16]


def test_cli_tools_need_no_flags_and_refuse_contradicting_ones(official, tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    args = ["image", "--ckpt", str(official), "--image", str(image), "--points", "40,30", "--labels", "1",
            "--device", "cpu"]
    assert predict_main([*args, "--out", str(tmp_path / "pred")]) == 0
    assert predict_main([*args, "--out", str(tmp_path / "bad"), "--model", "edgetam"]) == 2
    err = capsys.readouterr().err
    assert "edgetam-predict image: error:" in err and "image_encoder.trunk.name: file 'efficientvit_b0'" in err
    assert export_main([str(official), "--format", "official", "--out", str(tmp_path / "again.pt")]) == 0
    assert "model edgetam_efficientvit (trunk efficientvit_b0, 256 px)" in capsys.readouterr().out
    assert export_main([str(official), "--format", "official", "--out", str(tmp_path / "x.pt"),
                        "--image-size", "512"]) == 2
    assert "--image-size 512 contradicts it" in capsys.readouterr().err


def test_explicit_levels_equal_to_the_automatic_ones_are_the_same_trunk(official):
    from edgetam_train.models.build import model_config

    cfg = model_config(ARCH, image_size=S)
    cfg.image_encoder.trunk.out_indices = [0, 1, 2, 3]  # what null resolves to for efficientvit_b0
    model = build_model(cfg, checkpoint=official)
    assert model.arch_record["trunk_out_indices"] == [0, 1, 2, 3]
