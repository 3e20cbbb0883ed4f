"""``edgetam-predict stream``: on an mp4 from the sample-data generator and on a frame folder it writes the same
per-frame PNGs as ``edgetam-predict video`` (an object entering on a later frame: from that frame on), an
overlay.mp4, and a bad source (missing, not a video, absent camera) exits 2 with one line naming it; Ctrl-C
(SIGINT to a subprocess) leaves whole files and exits 130. Also ``edgetam-predict video --max-frames``. Random
EdgeTAM weights at 256 px."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.predictor import cli
from edgetam_train.predictor.stream_source import open_source
from tests.helpers.hf_reference import random_official_state_dict

S = 256
ROOT = Path(__file__).resolve().parents[2]


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


def test_ctrl_c_finishes_the_files_written_so_far(setup, tmp_path):
    """``stream`` and ``video`` side by side on a 300-frame folder, each sent SIGINT once its first 3 PNGs exist:
    exit status 130, one line saying so, every PNG whole, overlay.mp4 (stream) or overlay.gif + masks.npz (video)
    finished and holding the frames done."""
    _, ckpt, _, _ = setup
    frames = tmp_path / "long"
    frames.mkdir()
    base = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    for t in range(300):
        Image.fromarray(np.roll(base, 2 * t, axis=1)).save(frames / f"{t:05d}.png", compress_level=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    procs = {command: subprocess.Popen(
        [sys.executable, "-m", "edgetam_train.predictor.cli", command, "--ckpt", str(ckpt), "--image-size", str(S),
         "--device", "cpu", "--source" if command == "stream" else "--frames", str(frames),
         "--out", str(tmp_path / command), "--points", "30,20", "--labels", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for command in ("stream", "video")}
    printed = {}
    try:
        deadline = time.monotonic() + 300
        while len(printed) < len(procs):
            for command, proc in procs.items():
                if command in printed:  # interrupted and finished already (its exit status is checked below)
                    continue
                if len(list((tmp_path / command).glob("*.png"))) >= 3:
                    proc.send_signal(signal.SIGINT)
                    printed[command] = proc.communicate(timeout=300)
                else:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            proc.kill()
    for command, (stdout, stderr) in printed.items():
        out = tmp_path / command
        assert procs[command].returncode == 130, stdout + stderr
        assert "Traceback" not in stderr and len(stdout.strip().splitlines()) == 1, stdout + stderr
        written = int(stdout.split("interrupted: wrote ")[1].split(" mask PNGs")[0])
        pngs = sorted(out.glob("*.png"))
        assert 3 <= written == len(pngs) < 300 and not list(out.glob("*.part"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(written)]  # tracked forward from frame 0
        for p in pngs:
            with Image.open(p) as im:
                im.load()  # a truncated file raises here
                assert im.mode == "P" and im.size == (64, 48)
        if command == "stream":
            with av.open(str(out / "overlay.mp4")) as container:
                assert sum(1 for _ in container.decode(video=0)) == written
        else:
            with Image.open(out / "overlay.gif") as gif:
                assert gif.n_frames == written
            saved = np.load(out / "masks.npz")
            assert saved["logits"].shape[0] == written and list(saved["frames"]) == [p.stem for p in pngs]
