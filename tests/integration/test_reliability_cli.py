"""Hardening of the command-line tools (docs/reliability.md): edgetam-predict reads 16-bit images correctly, turns a
non-image (also inside a frame folder) into an exit-2 message and takes negative coordinates; edgetam-export exits 2
for bad input (read-only output, a parent path that is a file, a garbage checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgetam_train.export import cli as export_cli
from edgetam_train.models.build import build_model
from edgetam_train.models.checkpoint import save_checkpoint
from edgetam_train.predictor import cli
from edgetam_train.predictor.image_io import read_rgb

S = 256


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised EdgeTAM (input 256) in the official format."""
    torch.manual_seed(0)
    return save_checkpoint(build_model("edgetam", image_size=S), tmp_path_factory.mktemp("ckpt") / "edgetam.pt")


def _rgb_png(path: Path, h: int = 48, w: int = 64) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------- 7: predict inputs


def test_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)
    path = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped[24:] == 255).all()  # what PIL's convert gives: the lower half is white
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    expected = np.rint(ramp / 257.0)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1 and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.min() == 0 and rgb.max() == 255


def test_predict_out_under_a_file_is_refused_before_the_model_is_loaded(tmp_path, capsys):
    """Was a traceback after the prediction; now exit 2 naming the file, before the (missing) checkpoint is read."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    image = _rgb_png(tmp_path / "im.png")
    missing_ckpt = str(tmp_path / "never_read.pt")
    rc = cli.main(["image", "--ckpt", missing_ckpt, "--image", str(image), "--points", "5,5", "--labels", "1",
                   "--out", str(blocker / "sub" / "pred"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--out {blocker / 'sub'}: {blocker} is a file, not a folder" in err, err
    assert "never_read.pt" not in err
    rc = cli.main(["video", "--ckpt", missing_ckpt, "--frames", str(tmp_path), "--points", "5,5", "--labels", "1",
                   "--out", str(blocker / "res"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{blocker} is a file, not a folder" in err and "never_read.pt" not in err, err


def test_int8_export_with_a_junk_calibration_image_names_that_image(ckpt, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    _rgb_png(calib / "0.png")
    (calib / "1.jpg").write_text("not a jpeg")
    rc = export_cli.main([str(ckpt), "--format", "onnx", "--image-size", str(S), "--quantize", "int8",
                          "--calibration", str(calib), "--out", str(tmp_path / "int8")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--calibration {calib}: 1.jpg is not a readable image" in err, err
    assert "cannot write --out" not in err and not (tmp_path / "int8" / "image_encoder.onnx").exists()


def test_non_image_file_is_an_exit_2_message(tmp_path, capsys):
    junk = tmp_path / "notes.jpg"
    junk.write_text("this is not a picture")
    rc = cli.main(["image", "--ckpt", str(tmp_path / "unused.pt"), "--image", str(junk), "--points", "5,5",
                   "--labels", "1", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and str(junk) in err and "not an image" in err and "Traceback" not in err


def test_junk_jpg_in_a_frame_folder_is_an_exit_2_message(tmp_path, capsys, ckpt):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        _rgb_png(frames / f"{t:05d}.png")
    (frames / "00003.jpg").write_bytes(b"\xff\xd8 junk")
    rc = cli.main(["video", "--ckpt", str(ckpt), "--image-size", str(S), "--frames", str(frames), "--points",
                   "10,10", "--labels", "1", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and str(frames / "00003.jpg") in err and "not an image" in err


# ------------------------------------------------------------------------------------------- 9: negative points


def test_negative_coordinates_parse_and_reach_the_range_check(tmp_path, capsys, ckpt):
    assert cli.attach_negative_values(["image", "--points", "-5,10", "--box", "-1,-2,3,4", "--labels", "1"]) == \
        ["image", "--points=-5,10", "--box=-1,-2,3,4", "--labels", "1"]
    image = _rgb_png(tmp_path / "image.png")
    common = ["image", "--ckpt", str(ckpt), "--image-size", str(S), "--image", str(image), "--out",
              str(tmp_path / "pred"), "--device", "cpu", "--labels", "1"]
    rc = cli.main([*common, "--points", "-5,10"])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the image" in err and "(-5.0, 10.0)" in err  # the existing message, not argparse's
    assert cli.main([*common, "--points", "5,10"]) == 0


# ------------------------------------------------------------------------------------------- 8: export exit codes


@pytest.mark.parametrize("case", ["parent_is_a_file", "read_only_output", "garbage_checkpoint"])
def test_export_bad_input_exits_2_with_one_line(tmp_path, capsys, ckpt, monkeypatch, case):
    out = tmp_path / "edgetam_export.pt"
    source = ckpt
    if case == "parent_is_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "edgetam.pt"
    elif case == "read_only_output":
        def read_only(*args, **kwargs):  # a read-only mount (root ignores chmod in this test environment)
            raise PermissionError(13, "Permission denied", str(out) + ".tmp")

        import edgetam_train.models.checkpoint as ckpt_mod

        monkeypatch.setattr(ckpt_mod, "open", read_only, raising=False)
    else:
        source = tmp_path / "garbage.ckpt"
        source.write_bytes(os.urandom(1024))
    rc = export_cli.main([str(source), "--format", "official", "--out", str(out), "--image-size", str(S)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    *stages, err = err.splitlines()  # progress lines (edgetam_train.progress.stage), then the error in one line
    assert all(line.endswith((" ...", " s")) for line in stages) and "Traceback" not in "".join(stages)
    assert err.startswith("edgetam-export: error:")
    assert str(source if case == "garbage_checkpoint" else out) in err or str(out.parent) in err
