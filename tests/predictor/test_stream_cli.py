"""``edgetam-predict stream``: on an mp4 from the sample-data generator and on a frame folder it writes the same
per-frame PNGs as ``edgetam-predict video`` (an object entering on a later frame: from that frame on), an
overlay.mp4, and a bad source (missing, not a video, absent camera) exits 2 with one line naming it. Also
``edgetam-predict video --max-frames``. Random EdgeTAM weights at 256 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.predictor import cli
from edgetam_train.predictor.stream_source import open_source
from tests.helpers.hf_reference import random_official_state_dict

S = 256


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, checkpoint, an SA-V mp4 of the sample-data generator, a frame folder of its first 8 frames)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stream")
    ckpt = root / "edgetam.pt"
    torch.save({"model": random_official_state_dict("edgetam", seed=4)}, ckpt)
    written = make_sample_data(["--out", str(root / "sample"), "--formats", "sav", "--num-videos", "1",
                                "--video-frames", "8"])
    mp4 = written["sav"][0]
    folder = root / "frames"
    folder.mkdir()
    for name, rgb in open_source(mp4, max_frames=8):
        Image.fromarray(rgb).save(folder / f"{name}.png")
    yield root, ckpt, mp4, folder
    torch.set_num_threads(before)


def _run(capsys, command, ckpt, *args) -> tuple[int, str]:
    rc = cli.main([command, "--ckpt", str(ckpt), "--image-size", str(S), "--device", "cpu", *args])
    printed = capsys.readouterr()
    return rc, printed.err + printed.out


PROMPTS = ["--obj-id", "1", "--points", "100,90", "--labels", "1", "--obj-id", "2", "--box", "150,60,260,180"]
LATE = PROMPTS[:8] + ["--frame-idx", "3"] + PROMPTS[8:]  # object 2 enters on frame 3
NAMES = [f"{t:05d}" for t in range(8)]


def _labels(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in NAMES])


@pytest.mark.parametrize("source", ["mp4", "folder"])
def test_stream_writes_the_video_commands_pngs(setup, capsys, source):
    root, ckpt, mp4, folder = setup
    src = mp4 if source == "mp4" else folder
    out_s, out_v = root / f"stream_{source}", root / f"video_{source}"
    rc, printed = _run(capsys, "stream", ckpt, "--source", str(src), "--out", str(out_s), "--max-frames", "8",
                       *PROMPTS)
    assert rc == 0, printed
    assert "wrote 8 mask PNGs and overlay.mp4" in printed and "frames/s" in printed
    rc, printed = _run(capsys, "video", ckpt, "--frames", str(src), "--out", str(out_v), "--max-frames", "8",
                       "--no-logits", *PROMPTS)
    assert rc == 0, printed
    assert sorted(p.stem for p in out_v.glob("*.png")) == NAMES == sorted(p.stem for p in out_s.glob("*.png"))
    stream = _labels(out_s)
    assert np.array_equal(stream, _labels(out_v))  # file by file
    assert (stream == 1).any() and (stream == 2).any()
    assert len(list(open_source(out_s / "overlay.mp4"))) == 8


def test_stream_object_entering_mid_stream(setup, capsys):
    root, ckpt, mp4, _ = setup
    out = root / "stream_late"
    rc, printed = _run(capsys, "stream", ckpt, "--source", str(mp4), "--out", str(out), "--max-frames", "8", *LATE)
    assert rc == 0, printed
    labels = _labels(out)
    assert not (labels[:3] == 2).any() and (labels[3:] == 2).any(axis=(1, 2)).all()
    assert (labels[:3] == 1).any(axis=(1, 2)).all()


def test_video_max_frames(setup, capsys):
    root, ckpt, mp4, _ = setup
    rc, printed = _run(capsys, "video", ckpt, "--frames", str(mp4), "--out", str(root / "v3"), "--max-frames", "3",
                       "--points", "100,90", "--labels", "1")
    assert rc == 0, printed
    assert sorted(p.stem for p in (root / "v3").glob("*.png")) == NAMES[:3]


def test_bad_sources_exit_2_with_one_line(setup, capsys, tmp_path):
    root, ckpt, _, _ = setup
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    clicks = ["--points", "10,10", "--labels", "1", "--out", str(tmp_path / "out")]
    for source, words in ((tmp_path / "missing.mp4", "does not exist"), (bad, "cannot decode it as a video"),
                          ("camera:57", "no camera at index 57"), (tmp_path, "no .jpg/.jpeg/.png frames")):
        rc, err = _run(capsys, "stream", ckpt, "--source", str(source), *clicks)
        assert rc == 2 and words in err and str(source) in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
