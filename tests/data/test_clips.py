"""Stage-2 data: SA-V / DAVIS sample data, clip loaders, clip augmentation, skip counting, collate and the mixture."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import cv2
import extract_sav_frames as extract_script  # scripts/ (pytest pythonpath)
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset, DistributedSampler

from edgetam_train.data.datamodule import VideoDataModule
from edgetam_train.data.datasets.clips import RawClip, SA1BClipDataset, collate_clips, finish_clip, sample_window
from edgetam_train.data.datasets.sav import SAVDataset
from edgetam_train.data.datasets.vos import VOSDataset
from edgetam_train.data.formats.sav import FRAMES_DIRNAME, iter_mp4_frames, mp4_info, read_mp4_frames, scan_annotations
from edgetam_train.data.mixture import MixtureBatchSampler, MixtureDataset
from edgetam_train.data.skips import REASONS, BadSample
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.data.synthetic.davis import make_davis_item
from edgetam_train.data.synthetic.sav import make_sav_item
from edgetam_train.data.transforms import ClipAugment, affine_matrix

REPO = Path(__file__).resolve().parents[2]


SEED = 0


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """Default sample data of every format (3 SA-V videos, 2 DAVIS videos, 8 SA-1B images); copied before edits."""
    out = tmp_path_factory.mktemp("sample")
    t0 = time.perf_counter()
    make_sample_data(["--out", str(out), "--formats", "sa1b,sav,davis", "--seed", str(SEED)])
    assert time.perf_counter() - t0 < 15
    return out


def _annotated(i: int) -> int:
    return 16 + 4 * (i % 3)  # the writer's default: --video-frames 16, cycling +0 / +4 / +8


# ------------------------------------------------------------------------------------------------ sample data


def test_sample_sav_roundtrip(sample, tmp_path):
    root = sample / "sav"
    jsons = scan_annotations(root, ("manual", "auto"))
    assert jsons == [f"sav_000/sav_00000{i}_{k}.json" for i in (1, 2, 3) for k in ("auto", "manual")]
    for i in range(3):
        vid = f"sav_{i + 1:06d}"
        scene, manual, auto = make_sav_item(SEED, i, (320, 240), _annotated(i))
        record = json.loads((root / "sav_000" / f"{vid}_manual.json").read_text())
        assert record == json.loads(json.dumps(manual))
        n_ann, n_frames = _annotated(i), len(scene.frames)
        assert len(record["masklet"]) == n_ann and record["masklet_num"] == 4
        assert record["masklet_frame_count"] == [n_ann] * 4 and record["video_frame_count"] == float(n_frames)
        assert (record["video_height"], record["video_width"]) == (240.0, 320.0)
        for f, frame in enumerate(record["masklet"]):
            for k, rle in enumerate(frame):
                np.testing.assert_array_equal(mask_utils.decode(rle), scene.visible[4 * f, k])
        # object 3 appears late: empty RLEs first, as SA-V stores an absent object
        first = int(record["masklet_first_appeared_frame"][3])
        assert first > 0 and all(mask_utils.area(fr[3]) == 0 for fr in record["masklet"][:first])
        assert json.loads((root / "sav_000" / f"{vid}_auto.json").read_text())["masklet_type"][0] == "auto"
        # the mp4 holds the drawn frames (H.264 is lossy: compare on average)
        mp4 = root / "sav_000" / f"{vid}.mp4"
        assert mp4_info(mp4) == (n_frames, 240, 320)
        decoded = np.stack([rgb for _, rgb in iter_mp4_frames(mp4)])
        assert decoded.shape == scene.frames.shape
        err = np.abs(decoded.astype(float) - scene.frames).mean((1, 2, 3))  # per frame; pixel noise std 3
        shifted = np.abs(decoded[4:].astype(float) - scene.frames[:-4]).mean((1, 2, 3))
        assert err.max() < 6.0 and err.mean() < shifted.mean()  # frame i is drawn frame i, not a neighbour
        # annotated frames extracted, and only those
        names = sorted(p.name for p in (root / FRAMES_DIRNAME / vid).glob("*.jpg"))
        assert names == [f"{4 * f:05d}.jpg" for f in range(n_ann)]
    # deterministic, and item i does not depend on how many are written
    again = make_sample_data(["--out", str(tmp_path), "--formats", "sav,davis", "--num-videos", "1",
                              "--num-davis-videos", "1", "--seed", str(SEED)])
    for path in [again["sav"][0], again["sav"][0].with_name("sav_000001_manual.json"),
                 tmp_path / "sav" / FRAMES_DIRNAME / "sav_000001" / "00008.jpg",
                 tmp_path / "davis" / "Annotations" / "video_000" / "00003.png"]:
        assert path.read_bytes() == (sample / path.relative_to(tmp_path)).read_bytes(), path


def test_sample_davis_roundtrip(sample):
    root = sample / "davis"
    for i in range(2):
        name = f"video_{i:03d}"
        scene, labels = make_davis_item(SEED, i, (320, 240), 16 + 4 + 2 * (i % 3))
        pngs = sorted((root / "Annotations" / name).glob("*.png"))
        assert len(pngs) == len(labels) == len(list((root / "JPEGImages" / name).glob("*.jpg")))
        for png, label in zip(pngs, labels):
            with Image.open(png) as im:
                assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]  # DAVIS (VOC) palette
                np.testing.assert_array_equal(np.asarray(im), label)
        assert set(np.unique(labels)) == {0, 1, 2, 3, 255}
        void = labels == 255
        assert void.any() and not (void & scene.visible.any(1)).any()  # the void band lies on background only
        # object id 1 leaves the frame and comes back
        present = scene.visible[:, 0].any((1, 2))
        gone = np.flatnonzero(~present)
        assert present[0] and len(gone) and present[gone[-1] + 1 :].any()


def test_sample_sav_val_layout(tmp_path):
    """``--formats sav_val``: SA-V val / test layout, every 24 fps frame as jpg, one binary PNG per object on every
    4th frame (empty where absent: object 003 enters late) and sav_val.txt; the jpgs are the rendered frames."""
    written = make_sample_data(["--out", str(tmp_path), "--formats", "sav_val", "--num-videos", "2",
                                "--video-frames", "3", "--video-size", "64x48", "--seed", str(SEED)])
    root = tmp_path / "sav_val"
    assert written["sav_val"] == [root / "JPEGImages_24fps" / f"sav_00000{i}" for i in (1, 2)]
    assert (root / "sav_val.txt").read_text().split() == ["sav_000001", "sav_000002"]
    for i, video in enumerate(["sav_000001", "sav_000002"]):
        jpgs = sorted(p.name for p in (root / "JPEGImages_24fps" / video).iterdir())
        assert jpgs == [f"{t:05d}.jpg" for t in range(9 + i)]  # 3 annotated frames (0, 4, 8) + i unannotated
        objects = sorted(p.name for p in (root / "Annotations_6fps" / video).iterdir())
        assert objects == ["000", "001", "002", "003"]
        firsts = []
        for obj in objects:
            pngs = sorted((root / "Annotations_6fps" / video / obj).iterdir())
            assert [p.name for p in pngs] == ["00000.png", "00004.png", "00008.png"]
            masks = [np.asarray(Image.open(p)) for p in pngs]
            assert all(m.shape == (48, 64) and set(np.unique(m).tolist()) <= {0, 255} for m in masks)
            firsts.append(next((4 * k for k, m in enumerate(masks) if m.any()), None))
        assert firsts[:3] == [0, 0, 0] and firsts[3] in (4, 8)  # object 003 first appears on a later annotated frame
        frame = np.asarray(Image.open(root / "JPEGImages_24fps" / video / "00004.jpg"))
        obj = np.asarray(Image.open(root / "Annotations_6fps" / video / "001" / "00004.png")) > 0
        assert frame.shape == (48, 64, 3) and obj.any()


# ------------------------------------------------------------------------------------------------ clip sampling


def test_sample_window_matches_sam2_rejection_sampling():
    first_ok = np.array([0, 1, 0, 0, 1, 1, 0, 0, 0, 1], dtype=bool)
    clip_len, reverse_p = 4, 0.3
    rng = np.random.default_rng(0)
    ours, theirs = {}, {}
    for _ in range(6000):
        pos = sample_window(first_ok, clip_len, reverse_p, rng)
        assert first_ok[pos[0]] and abs(np.diff(pos)).tolist() == [1] * (clip_len - 1)
        key = (int(pos.min()), bool(pos[0] > pos[-1]))
        ours[key] = ours.get(key, 0) + 1
        while True:  # SAM 2's RandomUniformSampler: redraw until the first clip frame shows an object
            start = int(rng.integers(len(first_ok) - clip_len + 1))
            rev = bool(rng.random() < reverse_p)
            if first_ok[start + clip_len - 1 if rev else start]:
                theirs[(start, rev)] = theirs.get((start, rev), 0) + 1
                break
    assert set(ours) == set(theirs)
    for key in ours:
        assert abs(ours[key] - theirs[key]) / 6000 < 0.03, key
    assert sample_window(np.zeros(10, bool), 4, 0.5, rng) is None
    assert sample_window(np.ones(3, bool), 4, 0.5, rng) is None


# ------------------------------------------------------------------------------------------------ SA-V loading


def test_mp4_seek_matches_sequential_decode(sample):
    mp4 = sample / "sav" / "sav_000" / "sav_000002.mp4"  # key frame every 24 frames: reads after 0 seek
    sequential = [rgb for _, rgb in iter_mp4_frames(mp4)]
    for indices in ([0, 4, 8], [25, 29, 33, 49], [47, 48], [len(sequential) - 1]):
        got = read_mp4_frames(mp4, indices)
        for i in indices:
            np.testing.assert_array_equal(got[i], sequential[i])


@pytest.mark.parametrize("reverse_p", [0.0, 1.0])
def test_mp4_and_extracted_frames_give_the_same_clip(sample, reverse_p):
    kw = dict(image_size=256, clip_len=8, max_objects=3, augment=ClipAugment(256), reverse_p=reverse_p, seed=7)
    from_frames = SAVDataset(sample / "sav", source="frames", **kw)
    from_mp4 = SAVDataset(sample / "sav", source="mp4", **kw)
    assert len(from_frames) == 3
    for i in range(3):
        a, b = from_frames[i], from_mp4[i]
        assert a["path"].endswith(f"{FRAMES_DIRNAME}/sav_00000{i + 1}") and b["path"].endswith(".mp4")
        assert torch.equal(a["obj_ids"], b["obj_ids"]) and torch.equal(a["frame_idx"], b["frame_idx"])
        assert torch.equal(a["masks"], b["masks"])
        assert (a["images"] - b["images"]).abs().mean() < 0.03  # JPEG re-encoding only (q95)
        assert a["images"].shape == (8, 3, 256, 256) and a["masks"].shape[:2] == (8, len(a["obj_ids"]))
        frames = a["frame_idx"].tolist()
        step = -4 if reverse_p else 4
        assert all(f % 4 == 0 for f in frames) and np.diff(frames).tolist() == [step] * 7
        assert a["masks"][0].flatten(1).any(1).all()  # every object is visible on the first clip frame
        assert "valid_hw" not in a and a["orig_hw"].tolist() == [240, 320]  # 320x240 stretched to 256², no padding
        assert a["dataset"] == "sav" and a["video"] == f"sav_00000{i + 1}" and a["skips"] == {}


def test_sav_masks_equal_the_drawn_masks_and_occlusion_targets(sample):
    """Full-length clip, no augmentation: masks are the drawn ones on the S×S grid; object 0 leaves and returns."""
    for i in range(3):
        scene, _, _ = make_sav_item(SEED, i, (320, 240), _annotated(i))
        ds = SAVDataset(sample / "sav", files=[f"sav_000/sav_00000{i + 1}_manual.json"], source="mp4",
                        image_size=320, clip_len=_annotated(i), max_objects=4, augment=None)
        item = ds[0]
        assert item["frame_idx"].tolist() == list(range(0, 4 * _annotated(i), 4))
        drawn = scene.visible[::4][:, item["obj_ids"].numpy()]  # (T, K, 240, 320)
        square = [[cv2.resize(m.astype(np.uint8), (320, 320), interpolation=cv2.INTER_NEAREST_EXACT) for m in f]
                  for f in drawn]  # stretched to 320x320 like the frame
        np.testing.assert_array_equal(item["masks"].numpy(), np.array(square, dtype=bool))
        assert 0 in item["obj_ids"].tolist()  # object 0 starts in the middle of frame 0
        present = item["masks"][:, item["obj_ids"].tolist().index(0)].flatten(1).any(1).tolist()
        first_gone = present.index(False)
        assert present[0] and any(present[first_gone:])  # empty masks while outside, non-empty after re-entering
        assert 3 not in item["obj_ids"].tolist()  # object 3 is absent on frame 0: not a candidate


def test_object_absent_in_clip_frames_is_a_target(sample):
    """Augmented clips keep objects that disappear on later frames (their empty masks are the occlusion target)."""
    ds = SAVDataset(sample / "sav", image_size=128, clip_len=8, max_objects=4, augment=ClipAugment(128), seed=1)
    seen_absent = False
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            visible = ds[i]["masks"].flatten(2).any(2)  # (T, K)
            assert visible[0].all()
            seen_absent |= bool((~visible[1:]).any())
    assert seen_absent


# ------------------------------------------------------------------------------------------------ DAVIS loading


def test_davis_palette_loading_ignores_void(sample, tmp_path):
    root = sample / "davis"
    for i in range(2):
        name = f"video_{i:03d}"
        n = len(list((root / "Annotations" / name).glob("*.png")))
        ds = VOSDataset(root, videos=[name], image_size=320, clip_len=n, max_objects=3, augment=None)
        item = ds[0]
        assert item["frame_idx"].tolist() == list(range(n)) and item["dataset"] == "vos"
        ids = item["obj_ids"].tolist()
        assert set(ids) <= {1, 2, 3} and 255 not in ids
        labels = np.stack([cv2.resize(np.asarray(Image.open(p)), (320, 320), interpolation=cv2.INTER_NEAREST_EXACT)
                           for p in sorted((root / "Annotations" / name).glob("*.png"))])  # the S×S grid
        for k, obj in enumerate(ids):
            np.testing.assert_array_equal(item["masks"][:, k].numpy(), labels == obj)
        assert not (item["masks"].any(1).numpy() & (labels == 255)).any()
        if 1 in ids:  # id 1 leaves the frame and re-enters
            present = item["masks"][:, ids.index(1)].flatten(1).any(1).tolist()
            assert present[0] and not all(present) and any(present[present.index(False):])
    # 8-bit grey ("L") id maps are accepted too; a colour PNG is not an id map
    copy = shutil.copytree(root, tmp_path / "davis")
    pngs = sorted((copy / "Annotations" / "video_000").glob("*.png"))
    palette_item = VOSDataset(copy, videos=["video_000"], image_size=64, clip_len=4, augment=None).load(0, 0)
    for png in pngs:
        Image.fromarray(np.asarray(Image.open(png))).save(png)  # L mode, same ids
    ds = VOSDataset(copy, videos=["video_000"], image_size=64, clip_len=4, augment=None)
    assert Image.open(pngs[0]).mode == "L" and torch.equal(ds.load(0, 0)["masks"], palette_item["masks"])
    for png in pngs:
        Image.open(png).convert("RGB").save(png)
    with pytest.raises(BadSample) as err:
        ds.load(0, 0)
    assert err.value.reason == "bad_annotation" and "mode RGB" in str(err.value)


# ------------------------------------------------------------------------------------------------ augmentation


def test_augmentation_is_identical_across_frames():
    """Flip, affine, clip jitter and grayscale: one draw per clip (the per-frame jitter is off here)."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    masks = np.zeros((1, 2, 128, 128), dtype=np.uint8)
    masks[0, 0, 20:60, 30:70], masks[0, 1, 50:90, 60:120] = 1, 1
    aug = ClipAugment(128, grayscale_p=0.5, frame_brightness=0, frame_contrast=0, frame_saturation=0)
    outputs = set()
    for seed in range(12):
        images, out = aug([frame] * 6, np.repeat(masks, 6, axis=0), seed=seed, orig_hw=(96, 128))
        assert images.shape == (6, 128, 128, 3) and out.shape == (6, 2, 128, 128)
        assert all(np.array_equal(images[t], images[0]) for t in range(6))
        assert all(np.array_equal(out[t], out[0]) for t in range(6))
        single, single_masks = aug([frame], masks, seed=seed, orig_hw=(96, 128))  # the draw depends on the seed only
        assert np.array_equal(single[0], images[0]) and np.array_equal(single_masks[0], out[0])
        outputs.add(images[0].tobytes())
    assert len(outputs) == 12  # every seed draws different parameters


def test_per_frame_jitter_changes_colours_not_geometry():
    """SAM 2's second colour jitter draws again for every frame; flip and affine stay one draw per clip."""
    frame = np.random.default_rng(1).integers(40, 200, size=(64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 1, 64, 64), dtype=np.uint8)
    masks[:, 0, 10:40, 5:30] = 1
    aug = ClipAugment(64, brightness=0, contrast=0, saturation=0, grayscale_p=0)  # per-frame jitter only (defaults)
    images, out = aug([frame] * 4, masks, seed=3)
    assert len({images[t].tobytes() for t in range(4)}) == 4
    assert all(np.array_equal(out[t], out[0]) for t in range(4))
    # the defaults are SAM 2's: clip jitter (0.1, 0.03, 0.03), per-frame jitter (0.1, 0.05, 0.05), affine fill
    default = ClipAugment(64)
    assert default.jitter == (0.1, 0.03, 0.03, 0.0) and default.frame_jitter == (0.1, 0.05, 0.05, 0.0)


def test_affine_matrix_is_sam2s_geometry_on_the_square():
    """Warp-then-stretch (SAM 2: affine at the original size) and stretch-then-warp with the conjugated matrix move
    a point to the same place."""
    h, w, s = 90, 160, 64
    angle, shear = 17.0, -11.0
    square = affine_matrix(angle, shear, (h, w), s)
    rot, sx = np.radians(angle), np.radians(shear)
    rss = np.array([[np.cos(rot), -np.cos(rot) * np.tan(sx) - np.sin(rot)],
                    [np.sin(rot), -np.sin(rot) * np.tan(sx) + np.cos(rot)]])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    p = np.array([20.0, 70.0])  # a pixel (x, y) of the original frame
    moved = rss @ (p - centre) + centre
    to_square = lambda q: (q + 0.5) * np.array([s / w, s / h]) - 0.5  # noqa: E731
    np.testing.assert_allclose(square[:, :2] @ to_square(p) + square[:, 2], to_square(moved), atol=1e-9)


def test_masks_move_with_the_image():
    """A white square on black: after flip + affine its mask still covers the white pixels."""
    frame = np.zeros((160, 160, 3), dtype=np.uint8)
    frame[30:80, 20:70] = 255
    mask = (frame[..., 0] > 0).astype(np.uint8)[None, None]
    aug = ClipAugment(160, hflip_p=0.5, degrees=25, shear=20, brightness=0, contrast=0, saturation=0, grayscale_p=0,
                      frame_brightness=0, frame_contrast=0, frame_saturation=0)
    flips = 0
    for seed in range(10):
        images, masks = aug([frame, frame], np.repeat(mask, 2, axis=0), seed=seed, orig_hw=(120, 160))
        white, m = images[1, ..., 0] > 127, masks[1, 0].astype(bool)
        assert (white & m).sum() / (white | m).sum() > 0.9
        flips += int(m[:, 80:].sum() > m[:, :80].sum())  # the square starts on the left
    assert 0 < flips < 10
    # finish_clip: normalised S×S tensors; the square's pixels are white after de-normalisation
    raw = RawClip(frames=[frame] * 3, masks=np.repeat(mask, 3, axis=0), obj_ids=np.array([5]),
                  frame_idx=np.array([0, 4, 8]), orig_hw=(120, 160), video="v", path="p")
    item = finish_clip(raw, aug, np.random.default_rng(0), "test")
    assert item["images"].shape == (3, 3, 160, 160) and item["masks"].shape == (3, 1, 160, 160)
    std, mean = torch.tensor([0.229, 0.224, 0.225]), torch.tensor([0.485, 0.456, 0.406])
    rgb = item["images"][0].permute(1, 2, 0) * std + mean
    assert (rgb[item["masks"][0, 0]] > 0.5).float().mean() > 0.9


def test_vanished_objects_are_dropped():
    frame = np.full((64, 64, 3), 128, dtype=np.uint8)
    masks = np.zeros((2, 3, 64, 64), dtype=np.uint8)
    masks[:, 0, 20:40, 20:40] = 1  # always visible
    masks[1, 1, 0:10, 0:10] = 1  # absent on the first frame only
    raw = RawClip(frames=[frame, frame], masks=masks, obj_ids=np.array([7, 8, 9]), frame_idx=np.array([0, 4]),
                  orig_hw=(64, 64), video="v", path="p")
    identity = ClipAugment.identity(64)
    item = finish_clip(raw, identity, np.random.default_rng(0), "t")
    assert item["obj_ids"].tolist() == [7]  # the first frame must show the object (it is prompted there)
    item = finish_clip(raw, identity, np.random.default_rng(0), "t", require_first_visible=False)
    assert item["obj_ids"].tolist() == [7, 8]  # 9 is visible on no frame: dropped
    assert not item["masks"][0, 1].any() and item["masks"][1, 1].any()
    raw.masks = masks[:, 1:2]
    raw.obj_ids = np.array([8])
    with pytest.raises(Exception, match="empty_after_transform"):
        finish_clip(raw, identity, np.random.default_rng(0), "t")


# ------------------------------------------------------------------------------------------------ bad input


def _bad_sav_root(sample: Path, dst: Path) -> tuple[list[str], dict[str, str]]:
    """A copy of the sample SA-V root with one bad video per case between good ones: (files, {case: bad path})."""
    root = shutil.copytree(sample / "sav", dst)
    src = root / "sav_000"
    good_json = json.loads((src / "sav_000001_manual.json").read_text())
    frames_src = root / FRAMES_DIRNAME / "sav_000001"
    bad: dict[str, str] = {}

    def make(vid: str, record: dict, mp4: bytes | None = None, frames: bool = False) -> str:
        (src / f"{vid}_manual.json").write_text(json.dumps(record))
        (src / f"{vid}.mp4").write_bytes(mp4 if mp4 is not None else (src / "sav_000001.mp4").read_bytes())
        if frames:
            shutil.copytree(frames_src, root / FRAMES_DIRNAME / vid)
        return vid

    short = dict(good_json, masklet=good_json["masklet"][:5], masklet_frame_count=[5] * 4, video_frame_count=20.0)
    bad["too_short"] = make("sav_100001", short)
    mismatch = dict(good_json, masklet=good_json["masklet"][:-2], masklet_frame_count=[14] * 4)
    bad["frame_count_mismatch"] = make("sav_100002", mismatch)  # json: video_frame_count vs masklet length
    no_meta = {k: v for k, v in good_json.items() if k not in ("video_frame_count", "masklet_frame_count")}
    bad["mp4_count_mismatch"] = make("sav_100003", dict(no_meta, masklet=good_json["masklet"][:-2]))
    bad["corrupt_video"] = make("sav_100004", good_json, mp4=b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 300)
    data = (src / "sav_000001.mp4").read_bytes()
    bad["truncated_video"] = make("sav_100005", good_json, mp4=data[: len(data) // 2])
    vid = make("sav_100006", good_json, frames=True)
    for jpg in sorted((root / FRAMES_DIRNAME / vid).glob("*.jpg"))[1::2]:
        jpg.unlink()  # every other extracted frame missing: any clip needs one
    bad["missing_frame"] = vid
    broken = json.loads(json.dumps(good_json))
    broken["masklet"][3][1]["counts"] = 12345  # not an RLE string
    bad["bad_rle"] = make("sav_100007", broken)
    bad["bad_json"] = "sav_100008"
    make("sav_100008", good_json)
    (src / "sav_100008_manual.json").write_text("{not json")
    goods = ["sav_000001", "sav_000002", "sav_000003"]
    files = []
    for k, vid in enumerate(bad.values()):
        files += [f"sav_000/{vid}_manual.json", f"sav_000/{goods[k % 3]}_manual.json"]
    return files, bad


EXPECTED_REASON = {"mp4_count_mismatch": "frame_count_mismatch", "truncated_video": "corrupt_video"}


def test_bad_sav_inputs_are_skipped_counted_and_logged(sample, tmp_path, caplog):
    files, bad = _bad_sav_root(sample, tmp_path / "sav")
    ds = SAVDataset(tmp_path / "sav", files=files, image_size=64, clip_len=8, augment=None, max_skip_rate=1.0)
    with caplog.at_level(logging.WARNING, logger="edgetam_train.data.skips"):
        for i in range(0, len(files), 2):
            item = ds[i]
            assert item["video"] == Path(files[i + 1]).name.removesuffix("_manual.json")  # the next, good one
            assert sum(item["skips"].values()) == 1
    counts = ds.skips.as_dict()
    assert counts["attempts"] == 2 * len(bad) and counts["skipped"] == len(bad)
    for case, vid in bad.items():
        reason = EXPECTED_REASON.get(case, case)
        assert reason in REASONS and counts.get(reason, 0) >= 1, (case, counts)
        messages = [r.getMessage() for r in caplog.records if vid in r.getMessage()]
        assert len(messages) == 1 and reason in messages[0], (case, messages)
    assert counts["frame_count_mismatch"] == 2 and counts["corrupt_video"] == 2


def test_bad_davis_inputs_are_skipped_and_counted(sample, tmp_path):
    root = shutil.copytree(sample / "davis", tmp_path / "davis")
    shutil.copytree(root / "JPEGImages" / "video_000", root / "JPEGImages" / "short")
    shutil.copytree(root / "Annotations" / "video_000", root / "Annotations" / "short")
    for png in sorted((root / "Annotations" / "short").glob("*.png"))[5:]:
        png.unlink()  # 5 frames < clip_len (jpg and png: a jpg without its png would be missing_frame)
        (root / "JPEGImages" / "short" / f"{png.stem}.jpg").unlink()
    shutil.copytree(root / "JPEGImages" / "video_000", root / "JPEGImages" / "corrupt")
    shutil.copytree(root / "Annotations" / "video_000", root / "Annotations" / "corrupt")
    for png in (root / "Annotations" / "corrupt").glob("*.png"):
        png.write_bytes(png.read_bytes()[:60])  # truncated PNG
    (root / "Annotations" / "no_frames").mkdir()  # annotations without a JPEGImages folder
    videos = ["short", "video_000", "corrupt", "video_001", "no_frames", "video_000"]
    ds = VOSDataset(root, videos=videos, image_size=64, clip_len=8, augment=None, max_skip_rate=1.0)
    assert [ds[i]["video"] for i in (0, 2, 4)] == ["video_000", "video_001", "video_000"]
    counts = ds.skips.as_dict()
    assert counts == {"attempts": 6, "skipped": 3, "too_short": 1, "corrupt_mask": 1, "missing_frame": 1}


def test_skip_rate_error_names_the_threshold(sample, tmp_path):
    files, bad = _bad_sav_root(sample, tmp_path / "sav")
    ds = SAVDataset(tmp_path / "sav", files=files, image_size=64, augment=None, max_skip_rate=0.1, min_attempts=6)
    with pytest.raises(RuntimeError, match=r"data\.max_skip_rate=0\.1") as err:
        for i in range(len(files)):
            ds[i]
    assert any(vid in str(err.value) for vid in bad.values())


# ------------------------------------------------------------------------------------------------ collate, SA-1B clips


def _fake_item(t: int, k: int, name: str, s: int = 32) -> dict:
    return {"images": torch.randn(t, 3, s, s), "masks": torch.rand(t, k, s, s) > 0.5, "obj_ids": torch.arange(k),
            "frame_idx": torch.arange(t) * 4, "orig_hw": torch.tensor([60, 80]),
            "video": name, "path": f"/{name}", "dataset": "sav", "skips": {"too_short": 1}}


def test_collate_clip_shapes(sample, tmp_path):
    batch = collate_clips([_fake_item(8, 3, "a"), _fake_item(8, 1, "b"), _fake_item(8, 2, "c")])
    assert batch["images"].shape == (3, 8, 3, 32, 32) and batch["masks"].shape == (8, 6, 32, 32)
    assert batch["masks"].dtype == torch.bool and batch["obj_to_img"].tolist() == [0, 0, 0, 1, 2, 2]
    assert batch["num_objects"].tolist() == [3, 1, 2] and batch["frame_idx"].shape == (3, 8)
    assert batch["videos"] == ["a", "b", "c"] and batch["dataset"] == "sav" and batch["skips"] == {"too_short": 3}
    assert [m.shape[1] for m in batch["masks"].split(batch["num_objects"].tolist(), dim=1)] == [3, 1, 2]
    with pytest.raises(ValueError, match="one dataset"):
        collate_clips([_fake_item(8, 1, "a"), _fake_item(1, 1, "b")])
    # SA-1B images as one-frame clips
    ds = SA1BClipDataset(sample / "sa1b", image_size=64, max_objects=3, augment=ClipAugment(64),
                         index_cache=tmp_path / "idx.txt")
    items = [ds[i] for i in range(4)]
    for item in items:
        assert item["images"].shape == (1, 3, 64, 64) and item["masks"].shape[:2] == (1, len(item["obj_ids"]))
        assert 1 <= len(item["obj_ids"]) <= 3 and item["frame_idx"].tolist() == [0] and item["dataset"] == "sa1b"
        assert item["masks"][0].flatten(1).any(1).all()
    batch = collate_clips(items)
    assert batch["images"].shape == (4, 1, 3, 64, 64) and batch["masks"].shape[:2] == (1, len(batch["obj_to_img"]))


# ------------------------------------------------------------------------------------------------ mixture


class _Toy(Dataset):
    def __init__(self, n: int, name: str) -> None:
        self.n, self.name, self.epoch = n, name, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"i": i, "from": self.name}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def test_mixture_ranks_draw_the_same_dataset_and_different_samples():
    mix = MixtureDataset({"sav": _Toy(40, "sav"), "sa1b": _Toy(25, "sa1b"), "davis": _Toy(3, "davis")})
    weights = {"sav": 1.0, "sa1b": 0.1, "davis": 0.2}
    ranks = [MixtureBatchSampler(mix, weights, batch_size=2, num_replicas=2, rank=r, seed=3, steps_per_epoch=600)
             for r in (0, 1)]
    assert isinstance(ranks[0], DistributedSampler) and len(ranks[0]) == 600
    steps = list(zip(*[list(s) for s in ranks]))
    picks = []
    for b0, b1 in steps:
        k0, k1 = {mix.locate(i)[0] for i in b0}, {mix.locate(i)[0] for i in b1}
        assert len(k0) == 1 and k0 == k1  # one dataset per batch, the same on both ranks
        k = k0.pop()
        if mix.sizes[k] >= 4:
            assert not set(b0) & set(b1)  # different samples on the two ranks
        picks.append(mix.names[k])
    freq = {n: picks.count(n) / len(picks) for n in mix.names}
    assert abs(freq["sav"] - 1 / 1.3) < 0.05 and abs(freq["sa1b"] - 0.1 / 1.3) < 0.03
    # within a dataset the two ranks together walk one permutation before repeating
    sav = [i for b0, b1 in steps if mix.locate(b0[0])[0] == 0 for i in b0 + b1][:40]
    assert sorted(sav) == list(range(40))
    # deterministic per (seed, epoch); set_epoch changes the draw and reaches the datasets
    assert [b for b in ranks[0]] == [b for b, _ in steps]
    ranks[0].set_epoch(1)
    assert mix.datasets[2].epoch == 1 and list(ranks[0]) != [b for b, _ in steps]
    assert mix[[0, 40, 65]] == [{"i": 0, "from": "sav", "dataset": "sav"}, {"i": 0, "from": "sa1b", "dataset": "sa1b"},
                               {"i": 0, "from": "davis", "dataset": "davis"}]
    with pytest.raises(KeyError, match="unknown datasets"):
        MixtureBatchSampler(mix, {"mose": 1.0}, batch_size=1)


def test_video_datamodule_two_ranks(sample, tmp_path, monkeypatch):
    pkg = "edgetam_train.data.datasets"
    datasets = {"sav": {"_target_": f"{pkg}.sav.SAVDataset", "root": str(sample / "sav"), "weight": 1.0},
                "sa1b": {"_target_": f"{pkg}.clips.SA1BClipDataset", "root": str(sample / "sa1b"), "weight": 0.5,
                         "index_cache": str(tmp_path / "idx.txt")},
                "davis": {"_target_": f"{pkg}.vos.VOSDataset", "root": str(sample / "davis"), "weight": 0.5},
                "mose": {"_target_": f"{pkg}.vos.VOSDataset", "root": None, "weight": 0.1}}
    kw = dict(image_size=64, clip_len=4, batch_size=1, num_workers=0, pin_memory=False, seed=0, steps_per_epoch=8,
              augment={"hflip_p": 0.5, "degrees": 25.0, "shear": 20.0})
    batches = []
    for rank in (0, 1):
        dm = VideoDataModule(datasets, **kw)
        # mose has no root: left out; the weights come back as fractions of the steps
        assert dm.weights == pytest.approx({"sav": 0.5, "sa1b": 0.25, "davis": 0.25})
        monkeypatch.setattr(VideoDataModule, "_world", lambda self, r=rank: (2, r))
        dm.prepare_data()
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, MixtureBatchSampler) and loader.sampler.rank == rank
        batches.append(list(loader))
    assert len(batches[0]) == 8
    used = set()
    for b0, b1 in zip(*batches):
        assert b0["dataset"] == b1["dataset"]
        used.add(b0["dataset"])
        t = 1 if b0["dataset"] == "sa1b" else 4
        assert b0["images"].shape == (1, t, 3, 64, 64) and b0["masks"].shape[:2] == (t, len(b0["obj_to_img"]))
        if b0["dataset"] == "sa1b":  # 8 images: the ranks' slices never straddle two passes
            assert b0["paths"] != b1["paths"]
    assert used == {"sav", "sa1b", "davis"}
    assert [b["paths"] for b in batches[0]] != [b["paths"] for b in batches[1]]
    with pytest.raises(ValueError, match="data.datasets"):
        VideoDataModule({"sav": {"root": None}})
    with pytest.raises(ValueError, match=r"data\.datasets\.lvos has no _target_: name its dataset class"):
        VideoDataModule({"lvos": {"root": "/x"}})
    with pytest.raises(ValueError, match=r"data\.datasets\.lvos\._target_=no\.such\.Dataset cannot be imported"):
        VideoDataModule({"lvos": {"_target_": "no.such.Dataset", "root": "/x"}})


def test_video_mixture_config_composes(sample, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=video_mixture", "model.student.image_size=64", f"paths.data_dir={sample}",
            f"+data.datasets.sa1b.index_cache={tmp_path / 'idx.txt'}", f"data.datasets.davis.root={sample / 'davis'}",
            "data.num_workers=0", "data.pin_memory=false", "data.steps_per_epoch=2"])
    assert cfg.data.clip_len == 8 and cfg.data.max_objects == 3
    assert cfg.data.datasets.sav.weight == 1.0 and cfg.data.datasets.sa1b.share == 0.1
    dm = instantiate(cfg.data)
    # SA-1B keeps 10 % of the steps with DAVIS enabled too; SA-V and DAVIS split the other 90 % by weight
    assert dm.weights == pytest.approx({"sav": 0.9 / 1.1, "davis": 0.09 / 1.1, "sa1b": 0.1})
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[-3:] == (3, 64, 64)


class RenamedVOS(VOSDataset):
    """A dataset class the project has never heard of: only its import path appears in the config."""


def test_a_new_dataset_is_a_class_and_one_config_entry(sample, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    entry = f"{{_target_:tests.data.test_clips.RenamedVOS,root:'{sample / 'davis'}',weight:1.0}}"
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=video_mixture", "model.student.image_size=64", "data.datasets.sav.root=null",
            "data.datasets.sa1b.root=null", f"+data.datasets.mine={entry}", "data.clip_len=2",
            "data.num_workers=0", "data.pin_memory=false", "data.steps_per_epoch=1"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.weights == {"mine": 1.0} and isinstance(dm.train_set.datasets[0], RenamedVOS)
    batch = next(iter(dm.train_dataloader()))
    assert batch["dataset"] == "mine" and batch["images"].shape[1:] == (2, 3, 64, 64)


# ------------------------------------------------------------------------------------------------ extraction script


def test_extract_script_is_resumable(sample, tmp_path, capsys):
    out = tmp_path / "frames"
    assert extract_script.main(["--sav-root", str(sample / "sav"), "--out", str(out), "--workers", "1"]) == 0
    for vid in ("sav_000001", "sav_000002", "sav_000003"):
        ours = sorted(p.name for p in (out / vid).glob("*.jpg"))
        assert ours == sorted(p.name for p in (sample / "sav" / FRAMES_DIRNAME / vid).glob("*.jpg"))
        reference = sample / "sav" / FRAMES_DIRNAME / vid / "00004.jpg"
        assert (out / vid / "00004.jpg").read_bytes() == reference.read_bytes()
    capsys.readouterr()
    assert extract_script.main(["--sav-root", str(sample / "sav"), "--out", str(out), "--workers", "1"]) == 0
    assert "wrote 0 frames" in capsys.readouterr().out  # complete directories are skipped
    extract_script.main(["--sav-root", str(sample / "sav"), "--out", str(out), "--workers", "1", "--all-frames",
                         "--videos", "sav_000001"])
    assert len(list((out / "sav_000001").glob("*.jpg"))) == mp4_info(sample / "sav" / "sav_000" / "sav_000001.mp4")[0]
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    (bad_root / "sav_999999.mp4").write_bytes(b"not a video")
    assert extract_script.main(["--sav-root", str(bad_root), "--workers", "1"]) == 1


def test_video_data_module_from_hydra_config_saves_weights_only_loadable_hparams(tmp_path):
    """Regression: built from a Hydra config, the data module kept DictConfig/ListConfig in its hyper-parameters, which
    Lightning stores in every checkpoint; resuming (torch.load(weights_only=True)) then failed for stage 2."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from edgetam_train.config import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill_video", "debug=quickstart_video",
                                          f"paths.root_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, VideoDataModule)
    path = tmp_path / "hparams.pt"
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, path)
    loaded = torch.load(path, weights_only=True)["datamodule_hyper_parameters"]
    assert set(loaded["datasets"]) == set(cfg.data.datasets)


def test_sa1b_inside_stage2_takes_its_mask_count_and_augmentation_from_config(sample, tmp_path):
    """data.datasets.sa1b.max_objects / .augment (configs/data/video_mixture.yaml) reach the SA-1B clip dataset; the
    defaults are the clips' values (3 objects, the full clip augmentation)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from edgetam_train.config import CONFIG_DIR

    def sa1b_of(*overrides: str):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = compose("train", overrides=["experiment=edgetam_distill_video", "debug=quickstart_video",
                                              f"paths.root_dir={tmp_path}", "data.max_objects=3",
                                              f"data.datasets.sa1b.root={sample / 'sa1b'}", *overrides])
        dm = instantiate(cfg.data)
        return cfg, dm.build_dataset("sa1b", dm.entries["sa1b"])

    cfg, ds = sa1b_of()
    assert cfg.data.datasets.sa1b.max_objects == 3 and ds.max_masks == 3
    assert ds.clip_augment.hflip_p == cfg.data.augment.hflip_p == 0.5 and ds.clip_augment.degrees == 25.0
    _, ds = sa1b_of("data.datasets.sa1b.max_objects=5", "data.datasets.sa1b.augment=null")
    assert ds.max_masks == 5 and ds.clip_augment.hflip_p == 0.0 and ds.clip_augment.degrees == 0.0
