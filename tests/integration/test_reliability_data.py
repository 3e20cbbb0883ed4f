"""Hardening of the data path (docs/reliability.md): huge or tiny images, decoder errors, SA-1B images without json,
DAVIS frames missing their jpg or png, and bad validation frames -- each a counted skip that names the file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import edgetam_train.data.formats.images as images_mod
from edgetam_train.data.datasets.sa1b import SA1BDataset
from edgetam_train.data.formats.images import read_image, set_image_limits
from edgetam_train.data.skips import BadSample
from edgetam_train.data.synthetic import make_sample_data


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Sample data (SA-1B and DAVIS layouts); tests copy what they modify."""
    out = tmp_path_factory.mktemp("sample")
    make_sample_data(["--out", str(out), "--num-images", "4", "--formats", "sa1b", "davis", "--num-davis-videos", "2",
              "--video-size", "64x48", "--video-frames", "4"])
    return out


@pytest.fixture(autouse=True)
def _default_limits():
    """Every test starts and ends with the default image limits (they are process-wide)."""
    set_image_limits(images_mod.DEFAULT_MAX_IMAGE_PIXELS, images_mod.DEFAULT_MIN_IMAGE_SIDE)
    yield
    set_image_limits(images_mod.DEFAULT_MAX_IMAGE_PIXELS, images_mod.DEFAULT_MIN_IMAGE_SIDE)


def jpeg_declaring(w: int, h: int) -> bytes:
    """A valid small JPEG whose SOF0 header is patched to declare w x h (what a hostile or broken file does)."""
    _, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5: sof + 7] = h.to_bytes(2, "big")
    data[sof + 7: sof + 9] = w.to_bytes(2, "big")
    return bytes(data)


# ------------------------------------------------------------------------------------------- 1: huge headers


@pytest.mark.parametrize("side", [60000, 20000])
def test_huge_header_is_too_large_and_never_decoded(tmp_path, monkeypatch, side):
    path = tmp_path / "huge.jpg"
    path.write_bytes(jpeg_declaring(side, side))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image whose header is above data.max_image_pixels")

    monkeypatch.setattr(images_mod.cv2, "imdecode", no_decode)
    with pytest.raises(BadSample) as err:
        read_image(path)
    assert err.value.reason == "too_large" and err.value.path == str(path)
    assert f"{side}x{side}" in str(err.value) and "data.max_image_pixels" in str(err.value)


def test_limit_is_configurable_and_decoder_errors_are_counted_skips(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.full((40, 50, 3), 100, np.uint8))
    assert read_image(path).shape == (40, 50, 3)
    set_image_limits(max_pixels=40 * 50 - 1)
    with pytest.raises(BadSample, match="too_large"):
        read_image(path)
    set_image_limits(max_pixels=10**8)

    def cv2_fails(*args, **kwargs):
        raise cv2.error("OpenCV(4.x) imdecode_: image size exceeds the limit")

    monkeypatch.setattr(images_mod.cv2, "imdecode", cv2_fails)
    with pytest.raises(BadSample) as err:
        read_image(path)
    assert err.value.reason == "corrupt_image" and "OpenCV" in err.value.detail
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    with pytest.raises(BadSample, match="corrupt_image"):
        read_image(tmp_path / "junk.jpg")


def _sa1b_copy(sample: Path, dst: Path) -> Path:
    return Path(shutil.copytree(sample / "sa1b", dst, ignore=shutil.ignore_patterns(".*")))


def test_training_skips_and_counts_huge_and_tiny_images(sample, tmp_path):
    """Stage 1 goes on past a 60000x60000 header (valid json) and a 1x1 image with a full-frame 1x1 mask."""
    root = _sa1b_copy(sample, tmp_path / "sa1b")
    record = json.loads((root / "sa_000001.json").read_text())
    record["image"].update(width=60000, height=60000)
    (root / "sa_000000a.jpg").write_bytes(jpeg_declaring(60000, 60000))
    (root / "sa_000000a.json").write_text(json.dumps(record))
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "sa_000000b.jpg")
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.ones((1, 1), np.uint8, order="F"))
    tiny = {"image": {"image_id": 0, "width": 1, "height": 1, "file_name": "sa_000000b.jpg"},
            "annotations": [{"id": 1, "segmentation": {"size": [1, 1], "counts": rle["counts"].decode()},
                             "bbox": [0, 0, 1, 1], "area": 1}]}
    (root / "sa_000000b.json").write_text(json.dumps(tiny))
    ds = SA1BDataset(root, image_size=64, index_cache=tmp_path / "idx.txt", max_skip_rate=1.0)
    assert ds.files[:2] == ["sa_000000a.jpg", "sa_000000b.jpg"]
    item = ds[0]
    assert item["path"].endswith("sa_000001.jpg") and item["skips"] == {"too_large": 1, "too_small": 1}
    assert ds.skips.counts == {"too_large": 1, "too_small": 1}


def test_cache_teacher_stores_huge_image_as_unreadable(tmp_path):
    """edgetam-cache-teacher's reader gets the same counted skip instead of an uncaught cv2.error."""
    from edgetam_train.distill.cache_teacher import CacheViews

    (tmp_path / "huge.jpg").write_bytes(jpeg_declaring(60000, 60000))
    item = CacheViews(tmp_path, ["huge.jpg"], [0], image_size=64, flip=False)[0]
    assert item["ok"] is False


def test_datamodule_applies_the_limits_in_workers(sample, tmp_path):
    from edgetam_train.data.datamodule import SA1BDataModule

    dm = SA1BDataModule(sample / "sa1b", image_size=64, index_cache=tmp_path / "idx.txt", max_image_pixels=1234,
                        min_image_side=3, num_workers=0)
    assert images_mod.image_limits() == (1234, 3)
    init = dm._worker_init()
    set_image_limits(99, 99)
    init(0)  # what every DataLoader worker runs first (also under spawn, where module state is not inherited)
    assert images_mod.image_limits() == (1234, 3)


# ------------------------------------------------------------------------------------------- 2: validation set


def _davis_copy(sample: Path, dst: Path) -> Path:
    return Path(shutil.copytree(sample / "davis", dst))


def _first_video(root: Path) -> tuple[str, list[Path]]:
    video = min(p.name for p in (root / "Annotations").iterdir())
    return video, sorted((root / "Annotations" / video).glob("*.png"))


def test_corrupt_and_missing_validation_png_are_skipped_counted_and_named(sample, tmp_path, monkeypatch, caplog):
    import edgetam_train.distill.module as lightning_module
    from edgetam_train.data.datasets.val import VOSValDataset
    from edgetam_train.distill.losses import DistillationLoss
    from edgetam_train.models.build import build_model

    corrupt = _davis_copy(sample, tmp_path / "corrupt")
    _, pngs = _first_video(corrupt)
    pngs[1].write_bytes(pngs[1].read_bytes()[:40])  # truncated PNG
    item = VOSValDataset(corrupt)[0]
    assert item["kind"] == "skipped" and item["reason"] == "corrupt_mask" and item["path"] == str(pngs[1])

    missing = _davis_copy(sample, tmp_path / "missing")
    _, pngs = _first_video(missing)
    pngs[2].unlink()  # the jpg is still there: DAVIS annotates every frame, so the video is broken, not shorter
    with caplog.at_level(logging.WARNING):
        ds = VOSValDataset(missing)
    assert str(pngs[2]) in caplog.text  # reported when the set is built
    skipped = ds[0]
    assert skipped["kind"] == "skipped" and skipped["reason"] == "missing_frame" and skipped["path"] == str(pngs[2])
    assert ds[1]["kind"] == "vos"  # the other video is still scored

    module = lightning_module.DistillationModule(build_model("edgetam", image_size=256), None, DistillationLoss())
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    monkeypatch.setattr(lightning_module, "track_video",
                        lambda model, frames, first: np.stack([np.where(first == 255, 0, first)] * len(frames)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgetam_train.distill.module"):
        module.validation_step(item, 0)
        module.validation_step(skipped, 1)
        module.validation_step(ds[1], 2)
    assert str(pngs[2]) in caplog.text and "corrupt_mask" in caplog.text
    module.on_validation_epoch_end()
    assert logged["val/skipped"] == 2.0 and 0.0 <= logged["val/J&F"] <= 1.0


def test_bad_validation_image_is_skipped(sample, tmp_path):
    from edgetam_train.data.datasets.val import MIoUValDataset

    root = _sa1b_copy(sample, tmp_path / "sa1b")
    first = min(root.glob("*.jpg"))
    first.write_bytes(b"junk")
    record = json.loads(sorted(root.glob("*.json"))[1].read_text())
    record["annotations"][0]["segmentation"]["counts"] = "!!"
    sorted(root.glob("*.json"))[1].write_text(json.dumps(record))
    ds = MIoUValDataset(root)
    bad, rle, good = ds[0], ds[1], ds[2]
    assert (bad["kind"], bad["reason"], bad["path"]) == ("skipped", "corrupt_image", str(first))
    assert rle["kind"] == "skipped" and rle["reason"] == "bad_rle" and rle["path"].endswith(".json")
    assert good["kind"] == "miou"


# ------------------------------------------------------------------------------------------- 7: silent drops


def test_sa1b_image_without_json_is_counted_once_at_indexing(sample, tmp_path, caplog):
    from edgetam_train.data.formats.sa1b import load_index

    root = _sa1b_copy(sample, tmp_path / "sa1b")
    orphan = sorted(root.glob("*.json"))[1]
    orphan.unlink()
    with caplog.at_level(logging.WARNING, logger="edgetam_train.data.formats.sa1b"):
        files = load_index(root, tmp_path / "idx.txt")
        assert load_index(root, tmp_path / "idx.txt") == files  # from the cache: not reported again
    assert orphan.with_suffix(".jpg").name not in files and len(files) == 3
    reports = [r.getMessage() for r in caplog.records if "without a sibling json" in r.getMessage()]
    assert len(reports) == 1 and "1 jpg file(s)" in reports[0] and str(orphan.with_suffix(".jpg")) in reports[0]


@pytest.mark.parametrize("missing", ["png", "jpg"])
def test_davis_training_frame_without_its_jpg_or_png_is_counted(sample, tmp_path, missing):
    from edgetam_train.data.datasets.vos import VOSDataset

    root = _davis_copy(sample, tmp_path / "davis")
    video, pngs = _first_video(root)
    gone = pngs[2] if missing == "png" else root / "JPEGImages" / video / f"{pngs[2].stem}.jpg"
    gone.unlink()
    ds = VOSDataset(root, image_size=64, clip_len=2, max_skip_rate=1.0, seed=0)
    item = ds[0]  # the broken video is skipped and counted, the next one is used
    assert sum(item["skips"].values()) == 1 and ds.skips.counts == {"missing_frame": 1}
    assert ds.skips.last_paths[-1] == f"{gone} [missing_frame]"
    sparse = VOSDataset(root, image_size=64, clip_len=2, seed=0, every_frame_annotated=False)
    if missing == "png":  # YouTube-VOS style (every 5th frame annotated): a jpg without a png is normal
        assert sparse[0]["skips"] == {}
    else:  # a png without its jpg is always a missing frame
        assert sparse[0]["skips"] == {"missing_frame": 1}


def test_davis_training_video_with_a_numbering_gap_is_used_with_a_warning(sample, tmp_path, caplog):
    """A frame whose jpg and png are both gone (00001, 00003): the clip joins the frames around it, as before, but the
    gap is no longer silent: one warning per video names the folder and the numbers."""
    from edgetam_train.data.datasets.vos import VOSDataset

    root = _davis_copy(sample, tmp_path / "davis")
    video, pngs = _first_video(root)
    pngs[2].unlink()
    (root / "JPEGImages" / video / f"{pngs[2].stem}.jpg").unlink()
    ds = VOSDataset(root, image_size=64, clip_len=2, max_skip_rate=1.0, seed=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # read twice: warned once
            assert ds[0]["skips"] == {}
    expected = f"{root / 'JPEGImages' / video}: frame numbers jump from {pngs[1].stem} to {pngs[3].stem} (1 frame(s)"
    assert caplog.text.count(expected) == 1, caplog.text


_FORK_SCRIPT = """
import cv2, numpy as np, torch
from torch.utils.data import DataLoader
from edgetam_train.data.datamodule import SA1BDataModule
from edgetam_train.data.synthetic import make_sample_data
img = np.random.rand(1500, 1500, 3).astype(np.float32)
shear = np.float32([[1, 0.2, 3], [0.1, 1, 2]])
for _ in range(3):  # in-process loading (data.num_workers=0) runs OpenCV's thread pool in this process
    cv2.warpAffine(img, shear, (1500, 1500))
dm = SA1BDataModule(ROOT, image_size=64, index_cache=IDX, num_workers=0)
class Warp(torch.utils.data.Dataset):
    def __len__(self): return 2
    def __getitem__(self, i): return float(cv2.warpAffine(img[:64, :64], shear, (64, 64)).mean())
print(len(list(DataLoader(Warp(), batch_size=None, num_workers=2, worker_init_fn=dm._worker_init(2)))))
"""


def test_workers_forked_after_in_process_opencv_do_not_hang(sample, tmp_path):
    """A fine-tuning run with data.num_workers=0 hung forever at its first validation: the val loader's forked
    workers inherited OpenCV's busy thread pool and blocked in init_worker's cv2.setNumThreads."""
    script = _FORK_SCRIPT.replace("ROOT", repr(str(sample / "sa1b"))).replace("IDX", repr(str(tmp_path / "i.txt")))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr[-2000:]
