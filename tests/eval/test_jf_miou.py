"""``edgetam-eval``: J and F on hand-made masks (values worked out by hand), the DAVIS / SA-V folder protocols and
their errors, and the N-click mIoU on generated SA-1B-format images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from edgetam_train.eval import cli
from edgetam_train.eval.jf import (
    EvalError,
    boundary_f,
    boundary_radius,
    disk,
    evaluate,
    evaluate_video,
    region_similarity,
    seg2bmap,
)
from edgetam_train.eval.miou import farthest_point, next_click


def square(top: int, left: int, side: int, hw=(100, 100)) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[top:top + side, left:left + side] = True
    return m


# ----------------------------------------------------------------------------------------------- measures

def test_identical_and_disjoint():
    a = square(40, 40, 20)
    assert region_similarity(a, a) == 1.0 and boundary_f(a, a) == 1.0
    b = square(5, 5, 10)
    assert region_similarity(a, b) == 0.0 and boundary_f(a, b) == 0.0


def test_empty_conventions():
    """Official convention: both empty -> J = F = 1; one empty -> J = F = 0 (either way round)."""
    empty, full = np.zeros((50, 60), bool), square(10, 10, 20, (50, 60))
    assert region_similarity(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_similarity(empty, full) == 0.0 and boundary_f(empty, full) == 0.0
    assert region_similarity(full, empty) == 0.0 and boundary_f(full, empty) == 0.0


def test_partial_overlap_j():
    """10x10 squares offset by 5 columns: intersection 50, union 150 -> J = 1/3."""
    assert region_similarity(square(10, 10, 10), square(10, 15, 10)) == pytest.approx(1 / 3)


def test_boundary_map_and_tolerance():
    """seg2bmap of a 20x20 square = the outline of the 21x21 square one pixel up-left (80 pixels); the tolerance
    is ceil(0.008 * diagonal) = ceil(1.13) = 2 px at 100x100 (8 px at DAVIS' 480x854)."""
    bmap = seg2bmap(square(40, 40, 20))
    ring = square(39, 39, 21) & ~square(40, 40, 19)
    assert np.array_equal(bmap, ring) and bmap.sum() == 80
    assert boundary_radius((100, 100)) == 2 and boundary_radius((480, 854)) == 8
    assert disk(2).sum() == 13 and disk(1).sum() == 5


def test_f_of_shifted_squares_by_hand():
    """1-px shift: every boundary pixel lies within the 2-px tolerance -> F = 1. 4-px shift: of each 80-pixel
    outline, the two horizontal sides match 19 of 21 pixels each and the near vertical side 4 of its 19 inner
    pixels -> precision = recall = 42/80 -> F = 0.525."""
    gt = square(40, 40, 20)
    assert boundary_f(gt, square(40, 41, 20)) == pytest.approx(1.0)
    assert boundary_f(gt, square(40, 44, 20)) == pytest.approx(42 / 80)
    assert region_similarity(gt, square(40, 41, 20)) == pytest.approx(380 / 420)


# ----------------------------------------------------------------------------------------------- folders

def write_palette(path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [128] * (252 * 3))
    im.save(path)


def write_binary(path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


def davis_video(root, video: str, frames: list[np.ndarray]) -> None:
    for t, labels in enumerate(frames):
        write_palette(root / video / f"{t:05d}.png", labels)


def two_objects(shift: int = 0) -> np.ndarray:
    labels = np.zeros((60, 80), np.uint8)
    labels[10:30, 10 + shift:30 + shift] = 1
    labels[35:55, 40:70] = 2
    return labels


def test_davis_folders_identical_skips_first_and_last(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    frames = [two_objects() for _ in range(5)]
    davis_video(gt, "bike", frames)
    garbage = np.full((60, 80), 2, np.uint8)
    davis_video(pred, "bike", [garbage] + frames[1:4] + [garbage])  # first / last frames are not scored
    result = evaluate(gt, pred, "davis", progress=False)
    assert [(o.video, o.object, o.frames) for o in result.objects] == [("bike", "1", 3), ("bike", "2", 3)]
    assert result.jf == 1.0 and result.j == 1.0 and result.f == 1.0
    assert evaluate(gt, pred, "davis", skip_first_last=False, progress=False).j < 1.0

    rc = cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--protocol", "davis"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1] == "J&F=1.0000 J=1.0000 F=1.0000"
    rows = (pred / "jf_davis.csv").read_text().splitlines()
    assert rows[0] == "video,object,frames,J&F,J,F" and rows[1] == "bike,1,3,1.0000,1.0000,1.0000"


def test_davis_partial_scores_and_means(tmp_path):
    """Object 1 shifted by 10 of its 20 columns (J = 1/3 on each scored frame), object 2 exact; a second video
    with one missed object (J = F = 0). Dataset means run over the 3 objects."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    davis_video(gt, "a", [two_objects()] * 4)
    davis_video(pred, "a", [two_objects(shift=10)] * 4)
    one = np.zeros((60, 80), np.uint8)
    one[20:40, 20:40] = 1
    davis_video(gt, "b", [one] * 3)
    davis_video(pred, "b", [np.zeros_like(one)] * 3)
    result = evaluate(gt, pred, "davis", progress=False)
    j = {(o.video, o.object): o.j for o in result.objects}
    assert j == {("a", "1"): pytest.approx(1 / 3), ("a", "2"): 1.0, ("b", "1"): 0.0}
    assert result.j == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert result.jf == pytest.approx((result.j + result.f) / 2)


def test_sav_protocol_scores_objects_from_first_appearance(tmp_path):
    """SA-V layout (<video>/<obj>/<frame>.png). Object 001 appears on frame 3 of 0..5: under ``sav`` the empty
    frames 1, 2 are not scored (J = 1/2 on frames 3, 4), under ``davis`` they count as J = 1."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    empty = np.zeros((40, 40), bool)
    obj = square(10, 10, 10, (40, 40))
    left_half = obj.copy()
    left_half[:, 15:] = False  # J = 50 / 100
    for t in range(6):
        write_binary(gt / "sav_1" / "001" / f"{4 * t:05d}.png", obj if t >= 3 else empty)
        write_binary(pred / "sav_1" / "001" / f"{4 * t:05d}.png", left_half if t >= 3 else empty)
        write_binary(pred / "sav_1" / "001" / f"{4 * t + 1:05d}.png", obj)  # not annotated: ignored
    sav = evaluate_video(gt, pred, "sav_1", "sav")
    assert [(o.object, o.frames) for o in sav] == [("001", 2)] and sav[0].j == pytest.approx(0.5)
    davis = evaluate_video(gt, pred, "sav_1", "davis")
    assert davis[0].frames == 4 and davis[0].j == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)


def test_errors_name_video_and_frame(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    davis_video(gt, "cows", [two_objects()] * 4)
    davis_video(pred, "cows", [two_objects()] * 4)
    (pred / "cows" / "00002.png").unlink()
    with pytest.raises(EvalError, match=r"video 'cows' frame '00002.png'.*missing"):
        evaluate(gt, pred, "davis", progress=False)
    write_palette(pred / "cows" / "00002.png", np.zeros((30, 80), np.uint8))
    with pytest.raises(EvalError, match=r"video 'cows' frame '00002.png'.*80x30.*80x60"):
        evaluate(gt, pred, "davis", progress=False)
    write_palette(pred / "cows" / "00002.png", np.full((60, 80), 3, np.uint8))
    with pytest.raises(EvalError, match=r"video 'cows' frame '00002.png': predicted object id\(s\) \[3\]"):
        evaluate(gt, pred, "davis", progress=False)
    davis_video(gt, "dogs", [two_objects()] * 3)
    rc = cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--protocol", "sav"])
    assert rc == 2


def test_allow_missing_scores_predicted_videos_and_says_how_many_left_out(tmp_path, capsys):
    """Three GT videos, predictions for one: an error by default (naming the two), with --allow-missing the scores
    of that one video alone (the same as evaluating it by itself) and a line naming the 2 left out."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for video in ("a", "b", "c"):
        davis_video(gt, video, [two_objects()] * 4)
    davis_video(pred, "b", [two_objects(shift=10)] * 4)
    with pytest.raises(EvalError, match=r"2 GT video\(s\) have no prediction folder.*\['a', 'c'\].*--allow-missing"):
        evaluate(gt, pred, "davis", progress=False)
    result = evaluate(gt, pred, "davis", progress=False, allow_missing=True)
    assert result.left_out == ["a", "c"] and {o.video for o in result.objects} == {"b"}
    alone = evaluate(gt, pred, "davis", progress=False, videos=["b"])
    assert result.objects == alone.objects and alone.left_out == []

    assert cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--protocol", "davis"]) == 2
    assert "--allow-missing" in capsys.readouterr().err
    rc = cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--protocol", "davis", "--allow-missing"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-1] == alone.summary()
    assert "left out 2 GT video(s) without a prediction folder (--allow-missing): a, c" in out
    assert len((pred / "jf_davis.csv").read_text().splitlines()) == 1 + 2  # header + objects 1, 2 of video b

    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(EvalError, match="none of the 3 GT videos"):
        evaluate(gt, empty, "davis", progress=False, allow_missing=True)


def test_videos_list_scores_only_the_listed_videos(tmp_path, capsys):
    """``--videos val.txt`` (DAVIS' ImageSets/2017/val.txt): the GT folder also holds unlisted videos without
    predictions; only the listed ones are scored (no error for the others), a listed video without a prediction is
    an error unless --allow-missing, and a name the GT lacks or an empty list is an error naming it."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for video in ("train_a", "val_b", "val_c"):
        davis_video(gt, video, [two_objects()] * 4)
    davis_video(pred, "val_b", [two_objects(shift=10)] * 4)
    davis_video(pred, "val_c", [two_objects()] * 4)
    listed = tmp_path / "val.txt"
    listed.write_text("val_b\n\nval_c\n")
    rc = cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--videos", str(listed)])
    out = capsys.readouterr().out.strip().splitlines()
    both = evaluate(gt, pred, "davis", progress=False, videos=["val_b", "val_c"])
    assert rc == 0 and out[-1] == both.summary() and "4 objects in 2 videos" in out[-2]
    assert {o.video for o in both.objects} == {"val_b", "val_c"} and both.left_out == []

    listed.write_text("val_b\ntrain_a\n")  # train_a has no prediction
    with pytest.raises(EvalError, match=r"1 GT video\(s\) have no prediction folder.*\['train_a'\]"):
        evaluate(gt, pred, "davis", progress=False, videos=["val_b", "train_a"])
    assert cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--videos", str(listed)]) == 2
    rc = cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--videos", str(listed), "--allow-missing"])
    assert rc == 0 and "left out 1 GT video(s) without a prediction folder (--allow-missing): train_a" in \
        capsys.readouterr().out
    with pytest.raises(EvalError, match=r"1 listed video\(s\) have no GT folder in .*gt: \['val_x'\]"):
        evaluate(gt, pred, "davis", progress=False, videos=["val_b", "val_x"])
    listed.write_text("\n# nothing\n")
    assert cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--videos", str(listed)]) == 2
    assert "lists no video" in capsys.readouterr().err
    assert cli.main(["jf", "--gt", str(gt), "--pred", str(pred), "--videos", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err
    assert "--videos" in err and "none.txt does not exist" in err


# ----------------------------------------------------------------------------------------------- mIoU

def test_click_simulation_points():
    gt = square(20, 30, 21, (80, 100))
    assert farthest_point(gt) == (40, 30)  # (x, y) centre of the square
    (x, y), label = next_click(gt, np.zeros_like(gt))
    assert label == 1 and (x, y) == (40, 30)
    pred = gt | square(60, 60, 11, (80, 100))  # a false-positive blob
    (x, y), label = next_click(gt, pred)
    assert label == 0 and (x, y) == (65, 65)
    assert next_click(gt, gt) is None


def write_sa1b(root, index: int, rng: np.random.Generator) -> None:
    h, w = 180, 240
    image = (rng.random((h, w, 3)) * 60 + 60).astype(np.uint8)
    annotations = []
    for k, (top, left, side) in enumerate([(20, 30, 60), (100, 120, 50), (30, 150, 40)]):
        mask = square(top, left, side, (h, w))
        image[mask] = rng.integers(120, 255, 3)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({"id": 100 * index + k, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                            "bbox": [left, top, side, side], "area": side * side})
    Image.fromarray(image).save(root / f"sa_{index}.jpg", quality=95)
    record = {"image": {"image_id": index, "width": w, "height": h, "file_name": f"sa_{index}.jpg"},
              "annotations": annotations}
    (root / f"sa_{index}.json").write_text(json.dumps(record))


def test_miou_cli_on_sa1b_images(tmp_path, capsys):
    from tests.helpers.hf_reference import random_official_state_dict

    data = tmp_path / "sa1b"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_sa1b(data, i, rng)
    ckpt = tmp_path / "edgetam.pt"
    torch.save({"model": random_official_state_dict("edgetam", seed=0)}, ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = cli.main(["miou", "--ckpt", str(ckpt), "--data", str(data), "--clicks", "3", "--image-size", "256",
                       "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[-4] == "6 masks"
    values = []
    for k, line in enumerate(out[-3:], start=1):
        assert line.startswith(f"clicks={k} mIoU=")
        values.append(float(line.split("mIoU=")[1]))
    assert all(0.0 <= v <= 1.0 for v in values)


def test_simulate_clicks_feeds_back_clicks_and_logits():
    """Click 1: multimask, best predicted IoU kept; later clicks: all clicks so far + the previous low-res logits."""
    from edgetam_train.eval.miou import simulate_clicks
    from edgetam_train.predictor.image import ImagePrediction

    gt = square(20, 30, 21, (80, 100))
    calls = []

    class Stub:
        def predict(self, points, labels, mask_input=None, multimask_output=True):
            calls.append((list(points), list(labels), mask_input, multimask_output))
            k = len(calls)
            masks = np.stack([np.zeros_like(gt), gt & (np.arange(100) < 40)[None], gt])[:3 if multimask_output else 1]
            if not multimask_output:
                masks = (gt | square(70, 80, 5, (80, 100)))[None] if k == 2 else gt[None]
            iou = np.array([0.1, 0.9, 0.5])[:len(masks)]
            low = np.full((len(masks), 20, 25), float(k), np.float32)
            return ImagePrediction(masks, iou, low, low, 1.0)

    ious = simulate_clicks(Stub(), gt, num_clicks=3)
    assert calls[0][:2] == ([(40, 30)], [1]) and calls[0][3] is True
    assert ious[0] == pytest.approx(210 / 441)  # the best-IoU candidate: columns 30..39 of 30..50
    assert calls[1][1] == [1, 1] and calls[1][3] is False and calls[1][0][1][0] >= 40  # click in the missed part
    assert np.all(calls[1][2] == 1.0)  # click-1 logits fed back
    assert calls[2][1] == [1, 1, 0] and calls[2][0][2] == (82, 72) and np.all(calls[2][2] == 2.0)
    assert ious[1] == pytest.approx(441 / 466) and ious[2] == 1.0


def test_davis_void_band_is_background(tmp_path):
    """GT value 255 (DAVIS' void band) counts as background; a 0/255 prediction is reported as object id 255."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    labels = two_objects()
    with_void = labels.copy()
    with_void[8:10, 10:30] = 255
    davis_video(gt, "v", [with_void] * 3)
    davis_video(pred, "v", [labels] * 3)
    assert evaluate(gt, pred, "davis", progress=False).jf == 1.0
    davis_video(pred, "v", [(labels > 0).astype(np.uint8) * 255] * 3)
    with pytest.raises(EvalError, match=r"\[255\] .*0/255 binary PNG"):
        evaluate(gt, pred, "davis", progress=False)
