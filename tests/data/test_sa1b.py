"""SA-1B sample data, dataset, skip counting, collate and DataModule."""

from __future__ import annotations

import builtins
import io
import json
import logging
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, DistributedSampler

import edgetam_train.data.formats.sa1b as sa1b_mod
from edgetam_train.data.datamodule import SA1BDataModule, split_files
from edgetam_train.data.datasets.sa1b import SA1BDataset, collate_sa1b
from edgetam_train.data.formats.rle import rle_runs
from edgetam_train.data.formats.sa1b import default_index_cache, load_index
from edgetam_train.data.samplers import EpochShuffleSampler
from edgetam_train.data.skips import BadSample, SkipCounter
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.data.synthetic.sa1b import make_sa1b_item
from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    """8 default sample images (320x240-ish, 3-12 masks); tests copy it before modifying."""
    out = tmp_path_factory.mktemp("sample")
    make_sample_data(["--out", str(out), "--num-images", "8"])
    return out / "sa1b"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
    return dst


# ------------------------------------------------------------------------------------------------ sample data


def test_sample_data_roundtrip(tmp_path):
    t0 = time.perf_counter()
    written = make_sample_data(["--out", str(tmp_path / "a"), "--num-images", "8", "--seed", "3"])
    assert time.perf_counter() - t0 < 10
    jpgs = written["sa1b"]
    assert [p.name for p in jpgs] == [f"sa_{i:06d}.jpg" for i in range(1, 9)]
    sizes, checked = set(), 0
    for i, jpg in enumerate(jpgs):
        record = json.loads(jpg.with_suffix(".json").read_text())
        info, anns = record["image"], record["annotations"]
        assert set(info) == {"image_id", "width", "height", "file_name"} and info["file_name"] == jpg.name
        h, w = info["height"], info["width"]
        with open(jpg, "rb") as f:
            assert cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h, w)
        sizes.add((w, h))
        assert 3 <= len(anns) <= 12
        scene, _ = make_sa1b_item(3, i, (320, 240), 3, 12)  # re-render the drawn shapes
        assert len(scene.shapes) == len(anns)
        for ann, shape in zip(anns, scene.shapes):
            assert set(ann) >= {"id", "segmentation", "bbox", "area", "point_coords", "predicted_iou",
                                "stability_score", "crop_box"}
            assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [h, w]
            decoded = mask_utils.decode(ann["segmentation"])
            np.testing.assert_array_equal(decoded, shape.full_mask(h, w))
            assert int(decoded.sum()) == ann["area"] > 0
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(decoded)
            assert (x, y, bw, bh) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            px, py = ann["point_coords"][0]
            assert decoded[int(py), int(px)] == 1
            x0, y0, x1, y1 = shape.box
            unclipped = x0 > 0 and y0 > 0 and x1 < w and y1 < h and np.isfinite(shape.analytic_area)
            if unclipped and shape.analytic_area >= 1000 and np.array_equal(shape.visible, shape.crop):
                assert abs(decoded.sum() / shape.analytic_area - 1) <= 0.01, (shape.kind, shape.analytic_area)
                checked += 1
    assert checked >= 5
    assert len({round(w / h, 2) for w, h in sizes}) >= 4  # varying aspect ratios
    # deterministic, and image i does not depend on how many are written
    again = make_sample_data(["--out", str(tmp_path / "b"), "--num-images", "3", "--seed", "3"])["sa1b"]
    for a, b in zip(jpgs, again):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes()


def test_rle_runs_match_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 120, size=2)
        m = np.asfortranarray((rng.random((h, w)) < rng.uniform(0, 1)).astype(np.uint8))
        runs = rle_runs(mask_utils.encode(m)["counts"])
        flat = m.flatten(order="F")
        expected = np.repeat(np.arange(len(runs)) % 2, runs)
        np.testing.assert_array_equal(expected, flat)


# ------------------------------------------------------------------------------------------------ dataset items


def test_item_shapes_dtypes_and_normalisation(sample_root, tmp_path):
    ds = SA1BDataset(sample_root, image_size=256, max_masks=8, hflip_p=0.0, index_cache=tmp_path / "idx.txt")
    assert len(ds) == 8
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for i in range(len(ds)):
        item = ds[i]
        img, masks = item["image"], item["masks"]
        assert img.shape == (3, 256, 256) and img.dtype == torch.float32
        assert masks.dtype == torch.bool and masks.ndim == 3 and masks.shape[1:] == (256, 256)
        assert 1 <= len(masks) <= 8 and item["ann_ids"].shape == (len(masks),)
        h, w = item["orig_hw"].tolist()
        assert (h, w) != (256, 256) and "valid_hw" not in item  # stretched to the square: no padded region
        assert masks.flatten(1).any(1).all()
        rgb = cv2.cvtColor(cv2.imread(item["path"]), cv2.COLOR_BGR2RGB)
        # SAM 2 training's resize: the PIL image to S x S, bilinear (torchvision F.resize on a PIL image)
        small = torch.from_numpy(np.array(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR))).permute(2, 0, 1)
        torch.testing.assert_close(img, (small / 255.0 - mean) / std, atol=1e-5, rtol=0)
        assert item["path"].endswith(".jpg") and item["skips"] == {}


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_item_equals_plain_square_resize_pipeline(sample_root, tmp_path, hflip_p):
    """The column-major per-mask resize gives exactly what resizing the row-major full masks to S x S (pixel-centre
    nearest), PIL-bilinear resizing the image to S x S, flipping and normalising give."""
    ds = SA1BDataset(sample_root, image_size=200, max_masks=4, hflip_p=hflip_p, index_cache=tmp_path / "idx.txt")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for i in (1, 2, 6):
        item = ds[i]
        record = json.loads(Path(item["path"]).with_suffix(".json").read_text())
        by_id = {a["id"]: a for a in record["annotations"]}
        full = [np.ascontiguousarray(mask_utils.decode(by_id[int(k)]["segmentation"])) for k in item["ann_ids"]]
        masks = np.stack([cv2.resize(m, (200, 200), interpolation=cv2.INTER_NEAREST_EXACT) for m in full])
        rgb = cv2.cvtColor(cv2.imread(item["path"]), cv2.COLOR_BGR2RGB)
        image = np.asarray(Image.fromarray(rgb).resize((200, 200), Image.BILINEAR))
        if hflip_p:
            image, masks = image[:, ::-1], masks[..., ::-1]
        ref = (torch.from_numpy(image.copy()).permute(2, 0, 1) / 255.0 - mean) / std
        torch.testing.assert_close(item["image"], ref, atol=1e-6, rtol=0)
        assert item["flipped"] == bool(hflip_p)
        assert torch.equal(item["masks"], torch.from_numpy(masks.copy()).bool())


def test_hflip_flips_image_and_masks_together(sample_root, tmp_path):
    kw = dict(image_size=256, max_masks=6, index_cache=tmp_path / "idx.txt", seed=5)
    plain, flipped = SA1BDataset(sample_root, hflip_p=0.0, **kw), SA1BDataset(sample_root, hflip_p=1.0, **kw)
    random_flip = SA1BDataset(sample_root, hflip_p=0.5, **kw)
    decisions = []
    for i in range(len(plain)):
        a, b, c = plain[i], flipped[i], random_flip[i]
        assert torch.equal(a["ann_ids"], b["ann_ids"])  # same masks sampled, only the flip differs
        assert torch.equal(b["image"], a["image"].flip(-1))  # the whole S x S image: nothing is padded
        assert torch.equal(b["masks"], a["masks"].flip(-1))
        img_flipped = torch.equal(c["image"], b["image"])
        assert img_flipped or torch.equal(c["image"], a["image"])
        assert torch.equal(c["masks"], (b if img_flipped else a)["masks"])  # image and masks flip together
        decisions.append(img_flipped)
    assert 0 < sum(decisions) < len(decisions)
    # deterministic per (seed, epoch, index): a fresh dataset repeats the flips, another epoch changes them
    again = SA1BDataset(sample_root, hflip_p=0.5, **kw)
    assert [torch.equal(again[i]["image"], flipped[i]["image"]) for i in range(len(again))] == decisions
    again.set_epoch(1)
    assert [torch.equal(again[i]["image"], flipped[i]["image"]) for i in range(len(again))] != decisions


def test_max_masks_and_only_sampled_masks_decoded(tmp_path, monkeypatch):
    make_sample_data(["--out", str(tmp_path), "--num-images", "3", "--min-masks", "20", "--max-masks", "30"])
    root = tmp_path / "sa1b"
    decoded = []

    real_decode = mask_utils.decode

    def spy(rles):
        decoded.append(len(rles) if isinstance(rles, list) else 1)
        return real_decode(rles)

    monkeypatch.setattr(mask_utils, "decode", spy)
    ds = SA1BDataset(root, image_size=128, max_masks=5, index_cache=tmp_path / "idx.txt")
    ids_epoch0 = []
    for i in range(len(ds)):
        decoded.clear()
        item = ds[i]
        n_anns = len(json.loads(Path(item["path"]).with_suffix(".json").read_text())["annotations"])
        assert n_anns >= 20
        assert sum(decoded) == 5 and 1 <= len(item["masks"]) <= 5
        ids_epoch0.append(item["ann_ids"].tolist())
    assert [ds[i]["ann_ids"].tolist() for i in range(len(ds))] == ids_epoch0
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert [ds[i]["ann_ids"].tolist() for i in range(len(ds))] != ids_epoch0


# ------------------------------------------------------------------------------------------------ index cache


def test_index_cache_created_once_and_reused(sample_root, tmp_path, monkeypatch):
    root = _copy(sample_root, tmp_path / "root")
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_io_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_io_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    scans = []
    real_scan = sa1b_mod.scan_pairs
    monkeypatch.setattr(sa1b_mod, "scan_pairs", lambda *a, **k: scans.append(1) or real_scan(*a, **k))

    ds = SA1BDataset(root, image_size=64)
    assert not [p for p in opened if p.endswith(".json")], "indexing must not open json files"
    cache = root / ".edgetam_index.txt"
    assert cache.exists() and len(scans) == 1
    assert ds.files == [f"sa_{i:06d}.jpg" for i in range(1, 9)]
    assert cache.read_text().splitlines()[4:] == ds.files

    SA1BDataset(root, image_size=64)  # reused: no second scan
    assert len(scans) == 1
    (root / "sub").mkdir()  # new pair in a sub-directory: the fingerprint changes, the index is rebuilt
    shutil.copy(root / "sa_000001.jpg", root / "sub" / "sa_000100.jpg")
    shutil.copy(root / "sa_000001.json", root / "sub" / "sa_000100.json")
    shutil.copy(root / "sa_000002.jpg", root / "sub" / "lonely.jpg")  # no json: not indexed
    opened.clear()
    ds = SA1BDataset(root, image_size=64)
    assert len(scans) == 2 and len(ds) == 9 and "sub/sa_000100.jpg" in ds.files
    assert not [p for p in opened if p.endswith(".json")]


def test_index_cache_falls_back_to_user_cache_and_split_file(sample_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sa1b_mod.os, "access", lambda *a, **k: False)  # root not writable
    cache = default_index_cache(sample_root)
    assert cache.parent == tmp_path / "cache" / "edgetam_train"
    assert len(load_index(sample_root)) == 8 and cache.exists()
    split = tmp_path / "split.txt"
    split.write_text("# subset\nsa_000003\nsa_000001.jpg\n\n")
    scans = []
    monkeypatch.setattr(sa1b_mod, "scan_pairs", lambda *a, **k: scans.append(1))
    ds = SA1BDataset(sample_root, image_size=64, split_file=split)
    assert ds.files == ["sa_000003.jpg", "sa_000001.jpg"] and not scans
    assert ds[0]["path"].endswith("sa_000003.jpg")


# ------------------------------------------------------------------------------------------------ bad samples


def _make_bad_root(sample_root: Path, dst: Path) -> tuple[Path, dict[str, str]]:
    """Copy of the sample root plus one bad sample per reason, placed between good ones; returns (split, bad)."""
    root = _copy(sample_root, dst)
    good = sorted(p.stem for p in root.glob("*.jpg"))
    src_jpg, src_json = root / "sa_000001.jpg", root / "sa_000001.json"
    bad = {}

    def pair(stem, jpg_bytes=None, json_text=None):
        if jpg_bytes is not None:
            (root / f"{stem}.jpg").write_bytes(jpg_bytes)
        if json_text is not None:
            (root / f"{stem}.json").write_text(json_text)
        return str(root / f"{stem}.jpg")

    data = src_jpg.read_bytes()
    bad["corrupt_image"] = pair("bad_truncated", data[: len(data) // 2], src_json.read_text())
    record = json.loads(src_json.read_text())
    record["annotations"][0]["segmentation"]["counts"] = record["annotations"][0]["segmentation"]["counts"][:-3]
    bad["bad_rle"] = pair("bad_rle", data, json.dumps(record))
    bad["bad_json"] = pair("bad_json", data, "{not json")
    bad["missing_json"] = pair("bad_missing_json", data)
    record = json.loads(src_json.read_text())
    record["annotations"] = []
    bad["no_masks"] = pair("bad_no_masks", data, json.dumps(record))
    bad["garbage_image"] = pair("bad_garbage", b"\x00garbage" * 100, src_json.read_text())
    order = []
    bad_stems = [Path(p).stem for p in bad.values()]
    for g, b in zip(good, bad_stems):
        order += [b, g]
    split = dst.parent / "split.txt"
    split.write_text("\n".join(order + good[len(bad_stems):]))
    return split, bad


def test_bad_samples_are_skipped_counted_and_logged(sample_root, tmp_path, caplog):
    split, bad = _make_bad_root(sample_root, tmp_path / "root")
    ds = SA1BDataset(tmp_path / "root", image_size=64, split_file=split, max_skip_rate=1.0)
    expected_reason = {"garbage_image": "corrupt_image"}
    with caplog.at_level(logging.WARNING, logger="edgetam_train.data.skips"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            for i, stem in enumerate(ds.files):
                item = ds[i]
                if stem.startswith("bad_"):
                    assert Path(item["path"]).stem == ds.files[i + 1].removesuffix(".jpg")  # the next one
                    assert sum(item["skips"].values()) == 1
                else:
                    assert item["skips"] == {}
    counts = ds.skips.as_dict()
    assert counts["attempts"] == 2 * len(ds) + 2 * len(bad)
    assert counts["skipped"] == 2 * len(bad)
    for key, path in bad.items():
        reason = expected_reason.get(key, key)
        assert counts[reason] >= 2
        stem = str(Path(path).with_suffix(""))  # the jpg or the json, whichever is bad
        warnings = [r for r in caplog.records if f"{stem}.jpg" in r.getMessage() or f"{stem}.json" in r.getMessage()]
        assert len(warnings) == 1 and reason in warnings[0].getMessage()  # once per path, with its reason
    assert counts["corrupt_image"] == 4


def test_skip_rate_error(sample_root, tmp_path):
    split, bad = _make_bad_root(sample_root, tmp_path / "root")
    ds = SA1BDataset(tmp_path / "root", image_size=64, split_file=split, max_skip_rate=0.1, min_attempts=20)
    with pytest.raises(RuntimeError) as err:
        for i in range(100):
            ds[i % len(ds)]
    msg = str(err.value)
    assert ds.skips.attempts >= 20
    assert "data.max_skip_rate=0.1" in msg and "skip rate" in msg
    assert any(Path(p).name in msg for p in bad.values())  # names the last bad paths
    # below the minimum number of attempts nothing is raised, however bad
    ds = SA1BDataset(tmp_path / "root", image_size=64, split_file=split, max_skip_rate=0.0, min_attempts=50)
    for i in range(6):
        ds[i]


def test_skip_counter_merge_and_reduce():
    a, b = SkipCounter(max_skip_rate=1.0), SkipCounter(max_skip_rate=1.0)
    a.ok(), a.skip(BadSample("bad_rle", "/x/1.jpg")), b.skip(BadSample("bad_rle", "/x/2.jpg"))
    b.skip(BadSample("corrupt_image", "/x/3.jpg")), b.ok()
    merged = SkipCounter.merge([a, b.state()])
    assert merged.as_dict() == {"attempts": 5, "skipped": 3, "bad_rle": 2, "corrupt_image": 1}
    assert SkipCounter.from_tensor(merged.to_tensor()).as_dict() == merged.as_dict()
    assert merged.to_tensor().dtype == torch.int64
    with pytest.raises(ValueError, match="data.max_skip_rate"):
        SkipCounter(max_skip_rate=1.5)


# ------------------------------------------------------------------------------------------------ collate, DataModule


def test_collate_varying_object_counts(sample_root, tmp_path):
    def fake(k, path):
        return {"image": torch.randn(3, 32, 32), "masks": torch.rand(k, 32, 32) > 0.5,
                "orig_hw": torch.tensor([64, 48]), "ann_ids": torch.arange(k), "path": path, "skips": {"bad_rle": 1}}

    batch = collate_sa1b([fake(3, "a"), fake(1, "b"), fake(5, "c")])
    assert batch["images"].shape == (3, 3, 32, 32) and batch["masks"].shape == (9, 32, 32)
    assert batch["obj_to_img"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]
    assert batch["num_objects"].tolist() == [3, 1, 5] and batch["paths"] == ["a", "b", "c"]
    assert batch["skips"] == {"bad_rle": 3} and batch["orig_hw"].shape == (3, 2)
    per_image = batch["masks"].split(batch["num_objects"].tolist())
    assert [len(m) for m in per_image] == [3, 1, 5]
    ds = SA1BDataset(sample_root, image_size=64, max_masks=12, index_cache=tmp_path / "idx.txt")
    items = [ds[i] for i in range(4)]
    batch = collate_sa1b(items)
    assert batch["masks"].shape[0] == sum(len(it["masks"]) for it in items)
    assert torch.equal(batch["masks"][batch["obj_to_img"] == 2], items[2]["masks"])


def test_datamodule(sample_root, tmp_path, monkeypatch):
    root = _copy(sample_root, tmp_path / "root")
    dm = SA1BDataModule(root, image_size=64, max_masks=3, batch_size=2, num_workers=0, pin_memory=False,
                        val_fraction=0.25)
    dm.prepare_data()
    assert (root / ".edgetam_index.txt").exists()
    dm.setup("fit")
    assert set(dm.train_set.files).isdisjoint(dm.val_files)
    assert len(dm.train_set) + len(dm.val_files) == 8 and len(dm.val_files) >= 1
    assert split_files(dm.train_set.files + dm.val_files, 0.25)[1] == dm.val_files  # stable split
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler) and not loader.persistent_workers
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 3, 64, 64) and batch["masks"].shape[0] == len(batch["obj_to_img"])
    loader.sampler.set_epoch(3)  # what Lightning calls every epoch reaches the dataset
    assert dm.train_set.epoch == 3
    (val_loader,) = dm.val_dataloader()  # the hold-out images are the 1-click mIoU validation set, in order
    assert [item["name"] for item in val_loader] == sorted(dm.val_files)
    monkeypatch.setattr(SA1BDataModule, "_world", lambda self: (2, 1))  # as under DDP
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) == (2, 1)
    sampler.set_epoch(4)
    assert dm.train_set.epoch == 4


def test_epoch_reaches_persistent_workers(sample_root, tmp_path):
    ds = SA1BDataset(sample_root, image_size=64, max_masks=2, index_cache=tmp_path / "idx.txt")
    sampler = EpochShuffleSampler(ds, shuffle=False)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=1, persistent_workers=True,
                        collate_fn=collate_sa1b)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = next(iter(loader))["ann_ids"].tolist()
        ref = SA1BDataset(sample_root, image_size=64, max_masks=2, index_cache=tmp_path / "idx.txt")
        ref.set_epoch(epoch)
        assert got == collate_sa1b([ref[i] for i in range(8)])["ann_ids"].tolist()


def test_training_resize_is_the_image_predictors_resize(sample_root, tmp_path):
    """One S×S geometry for training and inference: a stage-1 item equals the image predictor's input up to the
    uint8 rounding of the resized image (PIL bilinear = torch's antialiased bilinear)."""
    from edgetam_train.predictor.preprocess import image_to_input

    ds = SA1BDataset(sample_root, image_size=128, max_masks=2, hflip_p=0.0, index_cache=tmp_path / "idx.txt")
    for i in (0, 3):
        item = ds[i]
        rgb = cv2.cvtColor(cv2.imread(item["path"]), cv2.COLOR_BGR2RGB)
        pred = image_to_input(rgb, 128)[0]
        step = 1.0 / 255 / min(IMAGENET_STD)  # one uint8 level after normalisation
        assert (item["image"] - pred).abs().max() <= 1.01 * step
        assert (item["image"] - pred).abs().mean() < 0.3 * step
