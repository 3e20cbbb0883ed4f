"""``edgetam-predict video`` with several objects and mask prompts: how the options group by ``--obj-id``, how mask
PNGs are read, equality with :class:`VideoPredictor` called directly (clicks for one object, a mask for another),
the same run from a ``--prompts`` json, the DAVIS semi-supervised protocol (``--init-masks``) scored by
``edgetam-eval jf``, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgetam_train.data.formats.vos import voc_palette
from edgetam_train.eval import cli as eval_cli
from edgetam_train.models.build import build_model
from edgetam_train.predictor import cli
from edgetam_train.predictor.video import VideoPredictor
from edgetam_train.predictor.video_prompts import group_options, read_mask_png
from tests.helpers.hf_reference import random_official_state_dict
from tests.helpers.video_clip import smooth_frames

S, T, H, W = 256, 4, 144, 192


# ----------------------------------------------------------------------------------------------- no model

def test_options_group_by_obj_id():
    """Prompts before the first --obj-id belong to it; a --frame-idx there is every object's default."""
    legacy = [("frame_idx", 1), ("points", "1,2"), ("labels", "1"), ("obj_id", 3)]  # the one-object form
    assert group_options(legacy) == [({"frame_idx": 1, "obj_id": 3, "points": "1,2", "labels": "1"}, "--obj-id 3")]
    assert group_options([("box", "0,0,5,5")]) == [({"obj_id": 1, "box": "0,0,5,5"}, "--obj-id 1")]
    items = [("frame_idx", 2), ("obj_id", 1), ("points", "1,2"), ("labels", "1"), ("obj_id", 2), ("box", "0,0,5,5"),
             ("obj_id", 1), ("frame_idx", 3), ("mask", "m.png")]
    assert [g for g, _ in group_options(items)] == [
        {"frame_idx": 2, "obj_id": 1, "points": "1,2", "labels": "1"},
        {"frame_idx": 2, "obj_id": 2, "box": "0,0,5,5"},
        {"frame_idx": 3, "obj_id": 1, "mask": "m.png"},
    ]
    with pytest.raises(ValueError, match="--points given twice for object 2; start the next object with --obj-id"):
        group_options([("obj_id", 2), ("points", "1,2"), ("points", "3,4")])


def test_mask_png_binary_palette_and_errors(tmp_path):
    binary = np.zeros((6, 8), np.uint8)
    binary[1:4, 2:5] = 255
    Image.fromarray(binary).save(tmp_path / "bin.png")
    assert np.array_equal(read_mask_png(tmp_path / "bin.png", 7, (6, 8), "--mask"), binary > 0)  # any id: non-zero
    label = np.zeros((6, 8), np.uint8)
    label[0:2] = 1
    label[3:5] = 2
    label[5] = 255  # void
    im = Image.fromarray(label)
    im.putpalette(voc_palette())
    im.save(tmp_path / "pal.png")
    assert np.array_equal(read_mask_png(tmp_path / "pal.png", 2, (6, 8), "--mask"), label == 2)
    with pytest.raises(ValueError, match=r"holds object ids \[1, 2\] but not 3"):
        read_mask_png(tmp_path / "pal.png", 3, (6, 8), "--mask")
    with pytest.raises(ValueError, match=r"pal.png is 8x6 but the video is 9x6"):
        read_mask_png(tmp_path / "pal.png", 1, (6, 9), "--mask")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="empty"):
        read_mask_png(tmp_path / "empty.png", 1, (6, 8), "--mask")
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        read_mask_png(tmp_path / "missing.png", 1, (6, 8), "--mask")


# ----------------------------------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """(root, checkpoint, frame folder, (T, H, W, 3) frames, label maps (T, H, W) of objects 1 and 2, predictor)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("video_prompts")
    sd = random_official_state_dict("edgetam", seed=4)
    ckpt = root / "edgetam.pt"
    torch.save({"model": sd}, ckpt)
    frames = smooth_frames(T, H, W, seed=1)
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):  # a red rectangle moving right (object 1), a blue square moving down (object 2)
        frames[t, 20:70, 30 + 8 * t:90 + 8 * t] = (210, 50, 40)
        labels[t, 20:70, 30 + 8 * t:90 + 8 * t] = 1
        frames[t, 60 + 6 * t:100 + 6 * t, 120:160] = (40, 60, 220)
        labels[t, 60 + 6 * t:100 + 6 * t, 120:160] = 2
    folder = root / "JPEGImages" / "clip"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")  # lossless
    model = build_model("edgetam", image_size=S)
    model.load_state_dict(sd)
    yield root, ckpt, folder, frames, labels, VideoPredictor(model, fill_hole_area=8)
    torch.set_num_threads(before)


def _run(capsys, ckpt, frames, out, *extra) -> tuple[int, str]:
    rc = cli.main(["video", "--ckpt", str(ckpt), "--image-size", str(S), "--frames", str(frames), "--out", str(out),
                   "--device", "cpu", *extra])
    printed = capsys.readouterr()
    return rc, printed.err + printed.out


def _read(out, n_obj) -> tuple[dict, np.ndarray]:
    with np.load(out / "masks.npz") as data:
        npz = dict(data)
    assert npz["logits"].shape == (T, n_obj, H, W) and npz["object_score"].shape == (T, n_obj)
    pngs = []
    for t in range(T):
        with Image.open(out / f"{t:05d}.png") as png:
            assert png.mode == "P"
            pngs.append(np.asarray(png))
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == T
    return npz, np.stack(pngs)


def _direct(predictor, frames, calls) -> np.ndarray:
    """Logits (T, N, H, W) from VideoPredictor called directly: ``calls`` (method, frame, obj_id, kwargs) in order,
    then forward from the earliest prompted frame and backward from it."""
    state = predictor.init_state(list(frames))
    for method, k, obj_id, kwargs in calls:
        getattr(predictor, method)(state, k, obj_id, **kwargs)
    start = min(c[1] for c in calls)
    out = np.full((T, len(state.obj_ids), H, W), np.nan, dtype=np.float32)
    for t, _, logits in predictor.propagate(state, start_frame_idx=start):
        out[t] = logits.numpy()
    if start > 0:
        for t, _, logits in predictor.propagate(state, start_frame_idx=start, reverse=True):
            out[t] = logits.numpy()
    assert not np.isnan(out).any()
    return out


def test_two_objects_clicks_and_mask_equal_video_predictor(video, capsys):
    """Object 4: clicks on frame 1; object 2: its mask (a binary PNG) on frame 1. Same logits as the direct calls,
    both ids in the PNGs (object 2 drawn over object 4), obj_ids in prompt order."""
    root, ckpt, folder, frames, labels, predictor = video
    mask_png = root / "obj2.png"
    Image.fromarray((labels[1] == 2).astype(np.uint8) * 255).save(mask_png)
    out = root / "two"
    rc, printed = _run(capsys, ckpt, folder, out, "--frame-idx", "1", "--obj-id", "4", "--points", "60,45;10,10",
                       "--labels", "1;0", "--obj-id", "2", "--mask", str(mask_png))
    assert rc == 0, printed
    assert "object(s) 4, 2 prompted on frame(s) 1 (00001), tracked forward and backward over 4 frames" in printed
    npz, pngs = _read(out, 2)
    assert npz["obj_ids"].tolist() == [4, 2]
    ref = _direct(predictor, frames, [("add_clicks", 1, 4, dict(points=[[60, 45], [10, 10]], labels=[1, 0])),
                                      ("add_mask", 1, 2, dict(mask=labels[1] == 2))])
    np.testing.assert_array_equal(npz["logits"], ref.astype(np.float16))
    expected = np.where(ref[:, 1] > 0, 2, np.where(ref[:, 0] > 0, 4, 0))
    assert np.array_equal(pngs, expected)
    assert (pngs == 2).any() and (pngs == 4).any()

    spec = [{"obj_id": 4, "frame_idx": 1, "points": [[60, 45], [10, 10]], "labels": [1, 0]},
            {"obj_id": 2, "frame_idx": 1, "mask": "obj2.png"}]  # relative to the json file
    (root / "prompts.json").write_text(json.dumps({"objects": spec}))
    rc, printed = _run(capsys, ckpt, folder, root / "from_json", "--prompts", str(root / "prompts.json"))
    assert rc == 0, printed
    npz_json, pngs_json = _read(root / "from_json", 2)
    np.testing.assert_array_equal(npz_json["logits"], npz["logits"])
    assert np.array_equal(pngs_json, pngs)


def test_init_masks_is_davis_semi_supervised_and_scored_by_jf(video, capsys):
    """--init-masks Annotations/clip/00000.png: both objects prompted by their masks on frame 0 (picked by the
    PNG's name); equals add_mask per object; the output folder is what edgetam-eval jf --protocol davis reads, and
    --allow-missing scores it while a second GT video has no prediction."""
    root, ckpt, folder, frames, labels, predictor = video
    ann = root / "Annotations"
    for video_name in ("clip", "other"):
        (ann / video_name).mkdir(parents=True)
        for t in range(T):
            im = Image.fromarray(labels[t])
            im.putpalette(voc_palette())
            im.save(ann / video_name / f"{t:05d}.png")
    preds = root / "results"
    rc, printed = _run(capsys, ckpt, folder, preds / "clip", "--init-masks", str(ann / "clip" / "00000.png"),
                       "--no-logits")
    assert rc == 0, printed
    assert "object(s) 1, 2 prompted on frame(s) 0 (00000), tracked forward over 4 frames" in printed
    assert not (preds / "clip" / "masks.npz").exists()
    pngs = np.stack([np.asarray(Image.open(preds / "clip" / f"{t:05d}.png")) for t in range(T)])
    ref = _direct(predictor, frames, [("add_mask", 0, 1, dict(mask=labels[0] == 1)),
                                      ("add_mask", 0, 2, dict(mask=labels[0] == 2))])
    assert np.array_equal(pngs, np.where(ref[:, 1] > 0, 2, np.where(ref[:, 0] > 0, 1, 0)))

    args = ["jf", "--gt", str(ann), "--pred", str(preds), "--protocol", "davis"]
    assert eval_cli.main(args) == 2
    assert "1 GT video(s) have no prediction folder" in capsys.readouterr().err
    assert eval_cli.main(args + ["--allow-missing"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "left out 1 GT video(s) without a prediction folder (--allow-missing): other" in out
    assert out[-1].startswith("J&F=")


def test_errors(video, capsys):
    root, ckpt, folder, _, labels, _ = video
    out = root / "err"
    click = ["--points", "60,45", "--labels", "1"]
    rc, err = _run(capsys, ckpt, folder, out, *click, "--prompts", str(root / "p.json"))
    assert rc == 2 and "give the prompts one way" in err and "--prompts" in err
    rc, err = _run(capsys, ckpt, folder, out, "--frame-idx", "1")
    assert rc == 2 and "give the prompts one way" in err
    rc, err = _run(capsys, ckpt, folder, out, "--obj-id", "1", *click, "--obj-id", "1", "--box", "0,0,9,9")
    assert rc == 2 and "object 1 is prompted twice on frame 0" in err
    rc, err = _run(capsys, ckpt, folder, out, "--obj-id", "2", "--obj-id", "3", *click)
    assert rc == 2 and "--obj-id 2: object 2 has no prompt" in err
    rc, err = _run(capsys, ckpt, folder, out, "--obj-id", "255", *click)
    assert rc == 2 and "1 .. 254" in err
    rc, err = _run(capsys, ckpt, folder, out, "--obj-id", "2", "--frame-idx", "7", *click)
    assert rc == 2 and "--obj-id 2: --frame-idx 7 is out of range" in err
    rc, err = _run(capsys, ckpt, folder, out, "--obj-id", "2", "--points", "500,20", "--labels", "1")
    assert rc == 2 and "--obj-id 2: point coordinates" in err and "outside the frame" in err
    Image.fromarray((labels[0] > 0).astype(np.uint8)).save(root / "m.png")
    rc, err = _run(capsys, ckpt, folder, out, "--mask", str(root / "m.png"), *click)
    assert rc == 2 and "either a mask or clicks/box" in err
    im = Image.fromarray(labels[0])
    im.putpalette(voc_palette())
    im.save(root / "frame_7.png")
    rc, err = _run(capsys, ckpt, folder, out, "--init-masks", str(root / "frame_7.png"))
    assert rc == 2 and "no frame is named 'frame_7'" in err
    (root / "bad.json").write_text(json.dumps([{"obj_id": 1, "frame": 0, "box": [0, 0, 9, 9]}]))
    rc, err = _run(capsys, ckpt, folder, out, "--prompts", str(root / "bad.json"))
    assert rc == 2 and "entry 0: unknown key(s) ['frame']" in err
    assert not out.exists()  # nothing written before the prompts are checked
