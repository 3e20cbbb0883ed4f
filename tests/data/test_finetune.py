"""Fine-tuning inputs: COCO json (polygons, compressed / uncompressed RLE, iscrowd), image + mask folders and
DAVIS-layout videos, and the clear errors / counted skips of bad input (docs/finetune.md "Bad input")."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from edgetam_train.data.datasets.coco import COCODataset, COCOValDataset
from edgetam_train.data.datasets.mask_folder import MaskFolderDataset, MaskFolderValDataset
from edgetam_train.data.finetune import COCODataModule, VOSFinetuneDataModule
from edgetam_train.data.formats.coco import annotation_rle, read_coco
from edgetam_train.data.skips import SkipRateExceeded
from edgetam_train.data.synthetic import make_sample_data
from edgetam_train.data.synthetic.finetune import uncompressed_rle

H, W = 48, 64


def _image(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _coco(tmp: Path, anns: list[dict], images: int = 2, name: str = "a.json") -> tuple[Path, Path]:
    folder = tmp / "img"
    entries = []
    for i in range(images):
        _image(folder / f"{i}.png")
        entries.append({"id": i + 1, "file_name": f"{i}.png", "height": H, "width": W})
    path = tmp / name
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return path, folder


def _ann(ident: int, image_id: int, seg, iscrowd: int = 0) -> dict:
    return {"id": ident, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd, "segmentation": seg}


# ---------------------------------------------------------------------------------------------- COCO
def test_polygon_and_both_rle_forms_decode_to_the_object(tmp_path):
    box = _box_mask(10, 8, 40, 30)
    poly = [[10, 8, 40, 8, 40, 30, 10, 30]]
    uncompressed = uncompressed_rle(box)
    path, _ = _coco(tmp_path, [_ann(1, 1, poly), _ann(2, 1, _compressed(box)), _ann(3, 1, uncompressed)])
    coco = read_coco(path)
    (entry,) = coco.images[:1]
    masks = [mask_utils.decode(annotation_rle(a, H, W)).astype(bool) for a in entry.annotations]
    assert np.array_equal(masks[1], box) and np.array_equal(masks[2], box)
    inter, union = (masks[0] & box).sum(), (masks[0] | box).sum()
    assert inter / union > 0.9  # pycocotools rasterises the polygon's corners slightly differently


def test_bad_annotations_are_left_out_counted_and_named(tmp_path, caplog):
    good = _compressed(_box_mask(5, 5, 20, 20))
    wrong_size = {"size": [H + 1, W], "counts": good["counts"]}
    anns = [_ann(1, 1, good), _ann(2, 1, [[1, 1, 5, 5]]), _ann(3, 1, wrong_size), _ann(4, 2, good),
            _ann(5, 99, good)]
    path, _ = _coco(tmp_path, anns)
    with caplog.at_level(logging.WARNING):
        coco = read_coco(path)
    assert [len(im.annotations) for im in coco.images] == [1, 1]
    assert coco.dropped == {"bad_annotation": 2, "bad_rle": 1}
    log = caplog.text
    assert "annotation 2 of 0.png: polygon 0 has 2 points (need >= 3" in log and str(path) in log
    assert "annotation 3 of 0.png: RLE size [49, 64] != image size [48, 64]" in log
    assert "annotation 5: image_id 99 is not in 'images'" in log
    with pytest.raises(SkipRateExceeded, match=r"3 of 5 annotations are malformed.*data.max_skip_rate=0.05"):
        COCODataset(path, tmp_path / "img", image_size=64)
    COCODataset(path, tmp_path / "img", image_size=64, max_skip_rate=0.7)  # tolerated when configured


def test_empty_annotation_list_and_missing_keys_are_errors_naming_the_file(tmp_path):
    path, _ = _coco(tmp_path, [])
    with pytest.raises(ValueError, match=rf"{path}: 'annotations' is empty"):
        read_coco(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=rf"{path}: key 'annotations' must be a list"):
        read_coco(path)
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        read_coco(tmp_path / "nope.json")


def test_iscrowd_skipped_or_used(tmp_path):
    crowd = uncompressed_rle(_box_mask(0, 0, 30, 30))
    path, _ = _coco(tmp_path, [_ann(1, 1, _compressed(_box_mask(5, 5, 9, 9))), _ann(2, 1, crowd, iscrowd=1)], 1)
    assert [a["id"] for a in read_coco(path).images[0].annotations] == [1]
    assert read_coco(path).crowd == 1
    assert [a["id"] for a in read_coco(path, iscrowd="use").images[0].annotations] == [1, 2]
    with pytest.raises(ValueError, match="iscrowd='maybe'"):
        read_coco(path, iscrowd="maybe")


def test_missing_and_mis_sized_images_are_skipped_and_counted(tmp_path, caplog):
    good = _compressed(_box_mask(5, 5, 20, 20))
    path, folder = _coco(tmp_path, [_ann(i, i, good) for i in (1, 2, 3)], images=3)
    (folder / "0.png").unlink()
    _image(folder / "1.png", h=H + 2)
    ds = COCODataset(path, folder, image_size=64, max_skip_rate=1.0)
    with caplog.at_level(logging.WARNING):
        item = ds[0]
    assert item["path"].endswith("2.png")
    assert item["skips"] == {"missing_image": 1, "size_mismatch": 1}
    assert "0.png (missing_image)" in caplog.text and "image is 64x50, " in caplog.text
    val = COCOValDataset(path, folder)  # validation leaves the missing image out when it is built
    assert [e.file_name for e in val.entries] == ["1.png", "2.png"]


def test_coco_data_module_on_generated_data(tmp_path):
    make_sample_data(["--out", str(tmp_path), "--formats", "coco", "--num-images", "3", "--num-val-images",
                           "2", "--max-masks", "5"])
    coco = tmp_path / "coco"
    dm = COCODataModule(train={"annotations": coco / "instances_train.json", "images": coco / "train"},
                        val={"annotations": coco / "instances_val.json", "images": coco / "val",
                             "miou": {"root": None, "max_masks": 2}, "vos": {"root": None}},
                        image_size=64, max_masks=3, batch_size=2, num_workers=0, pin_memory=False,
                        root="/ignored/sa1b/root")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 64, 64) and batch["masks"].shape[1:] == (64, 64)
    assert int(batch["num_objects"].max()) <= 3
    (val,) = dm.val_sets
    item = val[0]
    assert item["kind"] == "miou" and item["masks"].shape[0] == 2 and item["masks"].shape[1:] == item["image"].shape[:2]
    half = COCODataModule(train={"annotations": coco / "instances_train.json", "images": coco / "train"},
                          val={"annotations": coco / "instances_val.json"}, batch_size=2)
    with pytest.raises(ValueError, match="set data.val.images too"):
        half.setup("fit")


def test_non_finite_or_far_polygon_points_are_skipped_before_rasterising(tmp_path, caplog):
    """NaN / ±1e300 polygon points crash pycocotools (the DataLoader worker dies naming nothing): left out instead,
    counted as bad_annotation and named with the file and annotation id; the good annotation still trains."""
    good = [[10, 8, 40, 8, 40, 30, 10, 30]]
    bad = {2: [[10, 8, float("nan"), 8, 40, 30]], 3: [[10, 8, 1e300, 8, 40, 30]], 4: [[10, -1e300, 40, 8, 40, 30]],
           5: [[10, 8, 10**400, 8, 40, 30]]}
    path, folder = _coco(tmp_path, [_ann(1, 1, good)] + [_ann(i, 2, seg) for i, seg in bad.items()])
    with caplog.at_level(logging.WARNING):
        coco = read_coco(path)
    assert coco.dropped == {"bad_annotation": 4, "no_masks": 1} and [im.file_name for im in coco.images] == ["0.png"]
    assert "annotation 2 of 1.png: polygon 0 has the point (nan, 8): x, y must be finite" in caplog.text
    assert "annotation 3 of 1.png: polygon 0 has the point (1e+300, 8)" in caplog.text and str(path) in caplog.text
    item = COCODataset(path, folder, image_size=64, max_skip_rate=1.0)[0]
    assert item["masks"].shape[0] == 1 and item["masks"].any()


def test_duplicate_or_list_image_ids_are_refused_or_skipped_by_name(tmp_path, caplog):
    good = _compressed(_box_mask(5, 5, 20, 20))
    path, _ = _coco(tmp_path, [_ann(1, 1, good)], images=2)
    data = json.loads(path.read_text())
    data["images"][1]["id"] = 1  # 1.png claims 0.png's id: its annotations would train on the wrong picture
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: image id 1 is used twice, by 0.png and by 1.png"):
        read_coco(path)
    data["images"][1]["id"] = [2, 3]  # unhashable: was a TypeError
    data["annotations"].append(_ann(2, [2, 3], good))
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        coco = read_coco(path)
    assert coco.dropped == {"bad_json": 1, "bad_annotation": 1} and len(coco.images) == 1
    assert "images[1]: needs id (an integer or a string)" in caplog.text
    assert "annotation 2: image_id [2, 3] is not in 'images'" in caplog.text


def test_zero_area_polygons_and_ragged_rle_counts_are_named(tmp_path, caplog):
    line = [[10, 10, 20, 20, 30, 30]]  # three points on one line: rasterises to nothing
    ragged = {"size": [H, W], "counts": [10, [5, 5], H * W - 20]}
    path, _ = _coco(tmp_path, [_ann(1, 1, line), _ann(2, 1, [[5, 5, 5, 5, 5, 5]]), _ann(3, 2, ragged)])
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match=rf"{path}: no image has a usable "
                                                                           r"annotation.*'bad_annotation': 2"):
        read_coco(path)
    assert "annotation 1 of 0.png: polygons enclose no area" in caplog.text
    assert "annotation 3 of 1.png: uncompressed RLE counts must be a flat list of integers" in caplog.text


def test_no_readable_sample_says_that_no_annotation_survived(tmp_path):
    from edgetam_train.data.skips import BadSample, SkipCounter, first_readable

    def load(i: int) -> dict:
        raise BadSample("empty_after_transform", f"{i}.png", "all 1 sampled masks vanished when resized")

    with pytest.raises(RuntimeError, match=r"among the 4 items of x: the images are readable but no annotation "
                                           r"survived \(every object mask is empty.*'empty_after_transform': 4"):
        first_readable(load, 0, 4, SkipCounter(max_skip_rate=1.0), "x")


# ---------------------------------------------------------------------------------------------- mask folder
def test_mask_folder_both_layouts_and_bad_masks(tmp_path, caplog):
    make_sample_data(["--out", str(tmp_path), "--formats", "mask_folder", "--num-images", "4",
                           "--num-val-images", "1", "--max-masks", "4"])
    root = tmp_path / "mask_folder" / "train"
    ds = MaskFolderDataset(root, image_size=64, max_masks=2, max_skip_rate=1.0)
    assert [it.per_object for it in ds.items] == [False, True, False, True]
    for i in range(2):
        item = ds[i]
        assert item["masks"].shape[0] <= 2 and item["masks"].any() and not item["skips"]
    # an instance PNG of the wrong size, a colour PNG, an image without a mask
    label = np.asarray(Image.open(root / "masks" / "img_0000.png"))
    Image.fromarray(label[:-3]).save(root / "masks" / "img_0000.png")
    Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(root / "masks" / "img_0002.png")
    shutil.copy(root / "images" / "img_0001.jpg", root / "images" / "orphan.jpg")
    with caplog.at_level(logging.WARNING):
        ds = MaskFolderDataset(root, image_size=64, max_skip_rate=1.0)
        item = ds[0]
    assert item["path"].endswith("img_0001.jpg") and item["skips"] == {"size_mismatch": 1}
    assert "img_0000.png (size_mismatch: mask is" in caplog.text
    assert "1 images without a mask left out (first: orphan)" in caplog.text
    assert ds[2]["skips"] == {"bad_annotation": 1} and "got mode RGB" in caplog.text
    val = MaskFolderValDataset(tmp_path / "mask_folder" / "val", max_masks=2)
    assert val[0]["kind"] == "miou" and val[0]["masks"].shape[0] == 2
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        MaskFolderDataset(tmp_path / "nowhere")


def test_anti_aliased_or_soft_instance_png_is_refused_unless_binary_mode(tmp_path, caplog):
    """An anti-aliased 8-bit disc (grey levels on its edge) or a blurred 16-bit square was read as dozens of
    "objects", most of them 1-px rings: skipped as bad_annotation with what a mask must hold; mode=binary reads them
    as one object; a 2-level grey PNG (no 0) is one object."""
    root = tmp_path / "mf"
    yy, xx = np.mgrid[0:H * 8, 0:W * 8]
    disc = ((yy - H * 4) ** 2 + (xx - W * 4) ** 2 < (H * 3) ** 2).astype(np.uint8) * 255
    smooth = np.asarray(Image.fromarray(disc).resize((W, H), Image.BOX))  # anti-aliased: edge levels 1..254
    assert len(np.unique(smooth)) > 10
    square = np.zeros((H, W))
    square[10:38, 15:50] = 1
    soft = square.copy()
    for _ in range(3):  # a cheap blur: a soft 16-bit mask
        soft = (soft + np.roll(soft, 1, 0) + np.roll(soft, -1, 0) + np.roll(soft, 1, 1) + np.roll(soft, -1, 1)) / 5
    masks = {"aa": smooth, "soft16": (soft * 65535).round().astype(np.uint16),
             "two_level": np.where(square > 0, 200, 10).astype(np.uint8)}
    for stem, m in masks.items():
        _image(root / "images" / f"{stem}.png")
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(m).save(root / "masks" / f"{stem}.png")
    with caplog.at_level(logging.WARNING):
        ds = MaskFolderDataset(root, image_size=64, max_skip_rate=1.0)
        item = ds[0]  # aa (skipped), soft16 (skipped), two_level
    assert item["path"].endswith("two_level.png") and item["skips"] == {"bad_annotation": 2}
    assert item["masks"].shape[0] == 1
    assert "aa.png (bad_annotation: looks anti-aliased or soft" in caplog.text
    assert "must hold 0 for background and one exact value per object" in caplog.text
    assert "data.train.mode=binary" in caplog.text and "soft16.png (bad_annotation" in caplog.text
    binary = MaskFolderDataset(root, image_size=64, max_skip_rate=1.0, mode="binary")
    for i, stem in enumerate(sorted(masks)):
        item = binary[i]
        assert item["path"].endswith(f"{stem}.png") and not item["skips"] and item["masks"].shape[0] == 1
    val = MaskFolderValDataset(root, mode="binary")
    disc_mask = val[0]["masks"][0]
    assert abs(int(disc_mask.sum()) - int((smooth > 127).sum())) == 0
    with pytest.raises(ValueError, match="data.train.mode='semantic': expected one of instance, binary"):
        MaskFolderDataset(root, mode="semantic")


# ---------------------------------------------------------------------------------------------- videos
def test_vos_finetune_clips_validation_and_unannotated_videos(tmp_path, caplog):
    make_sample_data(["--out", str(tmp_path), "--formats", "davis", "--num-davis-videos", "2",
                           "--video-frames", "2"])
    root = tmp_path / "davis"
    (root / "JPEGImages" / "frames_only").mkdir()
    shutil.copy(root / "JPEGImages" / "video_000" / "00000.jpg", root / "JPEGImages" / "frames_only")
    with caplog.at_level(logging.WARNING):
        dm = VOSFinetuneDataModule(train={"root": root}, val={"root": root, "max_frames": 4, "vos": {"root": None}},
                                   image_size=256, clip_len=3, max_objects=2, num_workers=0, pin_memory=False,
                                   augment=None)
    assert dm.unannotated == ["frames_only"]
    assert "frames_only has frames but no annotations (no Annotations/frames_only/<frame>.png)" in caplog.text
    dm.setup("fit")
    assert len(dm.train_set) == 2 and [type(s).__name__ for s in dm.val_sets] == ["VOSValDataset"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[:3] == (1, 3, 3)
