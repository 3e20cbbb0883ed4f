"""``edgetam-predict video --init-masks <SA-V annotation folder>`` (:mod:`edgetam_train.predictor.object_folders`):
each object prompted by its first non-empty mask and tracked forward from it (equal to one VideoPredictor run per
object), ``OUT/<object>/<frame>.png`` for every object folder and frame, read back by ``edgetam-eval jf --protocol
sav``; and the errors for folders that are not in that layout (each before anything is written)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgetam_train.eval.jf import evaluate
from edgetam_train.models.build import build_model
from edgetam_train.models.sam2_model import NO_OBJ_SCORE
from edgetam_train.predictor import cli
from edgetam_train.predictor.video import VideoPredictor
from tests.helpers.hf_reference import random_official_state_dict
from tests.helpers.video_clip import smooth_frames

S = 256
T, VH, VW = 9, 96, 128  # annotated frames 0, 4, 8 (every 4th, as SA-V): frame 4 is scored
LATE = 3  # object 004 enters on frame 3, so its first non-empty annotation is frame 4


def _rect(t: int, top: int, left: int) -> np.ndarray:
    m = np.zeros((VH, VW), dtype=bool)
    m[top:top + 30, left + 3 * t:left + 40 + 3 * t] = True
    return m


@pytest.fixture(scope="module")
def sav(tmp_path_factory):
    """(root, checkpoint, frame folder, annotation root, masks {obj_id: (T, H, W)}, reference predictor)."""
    root = tmp_path_factory.mktemp("sav_predict")
    sd = random_official_state_dict("edgetam", seed=4)
    ckpt = root / "edgetam.pt"
    torch.save({"model": sd}, ckpt)
    frames = smooth_frames(T, VH, VW, seed=2)
    masks = {1: np.stack([_rect(t, 10, 5) for t in range(T)]),
             4: np.stack([_rect(t, 55, 60) if t >= LATE else np.zeros((VH, VW), bool) for t in range(T)])}
    folder = root / "JPEGImages_24fps" / "sav_000001"
    folder.mkdir(parents=True)
    for t in range(T):
        frames[t][masks[1][t]] = (210, 50, 40)
        frames[t][masks[4][t]] = (40, 60, 220)
        Image.fromarray(frames[t]).save(folder / f"{t:05d}.png")  # lossless: the CLI reads these pixels
    ann = root / "Annotations_6fps"
    for name, obj in (("001", 1), ("004", 4), ("007", None)):
        (ann / "sav_000001" / name).mkdir(parents=True)
        for t in range(0, T, 4):
            mask = masks[obj][t] if obj else np.zeros((VH, VW), bool)
            if name == "004":  # a 0/1 palette PNG (as vos_inference.py writes); the others 0/255 grey
                im = Image.fromarray(mask.astype(np.uint8), mode="L")
                im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            else:
                im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
            im.save(ann / "sav_000001" / name / f"{t:05d}.png")
    model = build_model("edgetam", image_size=S)
    model.load_state_dict(sd)
    return root, ckpt, folder, ann, masks, VideoPredictor(model, fill_hole_area=8)


def _run(capsys, ckpt, frames, init_masks, out, *extra) -> tuple[int, str]:
    rc = cli.main(["video", "--ckpt", str(ckpt), "--image-size", str(S), "--frames", str(frames), "--init-masks",
                   str(init_masks), "--out", str(out), "--device", "cpu", *extra])
    printed = capsys.readouterr()
    return rc, printed.err + printed.out


def _reference(predictor: VideoPredictor, folder, obj_id: int, k: int, mask: np.ndarray) -> np.ndarray:
    """(T, H, W) logits of one object alone: its mask on frame k, tracked forward; NaN before k."""
    state = predictor.init_state(folder)
    predictor.add_mask(state, k, obj_id, mask)
    out = np.full((T, VH, VW), np.nan, dtype=np.float32)
    for t, _, logits in predictor.propagate(state, start_frame_idx=k):
        out[t] = logits[0].numpy()
    return out


def test_sav_folder_prompts_first_masks_tracks_forward_and_writes_the_sav_layout(sav, capsys):
    root, ckpt, folder, ann, masks, predictor = sav
    pred = root / "pred"
    rc, printed = _run(capsys, ckpt, folder, ann / "sav_000001", pred / "sav_000001")
    assert rc == 0, printed
    assert "prompted on frame(s) 0 (00000), 4 (00004), tracked forward from each object's first mask" in printed
    assert "object folder(s) 007" in printed and "every PNG empty, written empty" in printed

    out = pred / "sav_000001"
    written = {}
    for name in ("001", "004", "007"):
        assert sorted(p.name for p in (out / name).iterdir()) == [f"{t:05d}.png" for t in range(T)]
        stack = []
        for t in range(T):
            with Image.open(out / name / f"{t:05d}.png") as im:
                assert im.mode == "P" and im.size == (VW, VH)
                stack.append(np.asarray(im))
        written[name] = np.stack(stack)
        assert set(np.unique(written[name]).tolist()) <= {0, 1}
    assert not written["007"].any()
    assert not written["004"][:4].any()  # absent before its first annotated frame

    with np.load(out / "masks.npz") as npz:
        logits, scores, obj_ids = npz["logits"], npz["object_score"], npz["obj_ids"].tolist()
    assert obj_ids == [1, 4] and logits.shape == (T, 2, VH, VW)
    assert (logits[:4, 1] == NO_OBJ_SCORE).all() and (scores[:4, 1] == NO_OBJ_SCORE).all()
    for row, (name, obj_id, k) in enumerate((("001", 1, 0), ("004", 4, 4))):
        ref = _reference(predictor, folder, obj_id, k, masks[obj_id][k])  # this object alone
        np.testing.assert_array_equal(logits[k:, row], ref[k:].astype(np.float16))
        assert np.array_equal(written[name][k:] == 1, ref[k:] > 0)
        assert 0 < written[name][k].sum() < VH * VW  # a real mask (random weights still segment something)

    result = evaluate(ann, pred, "sav", progress=False)  # what edgetam-eval jf --protocol sav reads
    assert [(o.object, o.frames) for o in result.objects] == [("001", 1), ("004", 1)]  # 007: never in the GT


def _annotations(tmp_path, layout: dict[str, dict[str, np.ndarray]]):
    """An annotation folder: {object folder: {png name: mask}}."""
    folder = tmp_path / "ann"
    folder.mkdir()
    for name, pngs in layout.items():
        (folder / name).mkdir()
        for png, mask in pngs.items():
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / name / png)
    return folder


@pytest.mark.parametrize("layout,message", [
    ({}, "holds no object folders; expected <video>/<object>/<frame>.png"),
    ({"car": {"00000.png": "full"}}, "object folder 'car' is not an integer object id"),
    ({"1": {"00000.png": "full"}, "001": {"00000.png": "full"}}, "object folders '001' and '1' are the same object"),
    ({"000": {}}, "object folder '000' holds no PNG"),
    ({"000": {"00000.png": "full", "00012.png": "full"}}, "['00012.png'] name no frame of the video"),
    ({"000": {"00000.png": "small"}}, "is 10x8 but the video is 128x96 (W x H)"),
    ({"000": {"00000.png": "empty"}, "001": {"00004.png": "empty"}}, "every PNG of its 2 object folder(s) is empty"),
])
def test_folders_not_in_the_sav_layout_are_refused_before_anything_is_written(sav, capsys, tmp_path, layout, message):
    _, ckpt, folder, _, _, _ = sav
    arrays = {"full": np.ones((VH, VW), bool), "empty": np.zeros((VH, VW), bool), "small": np.ones((8, 10), bool)}
    ann = _annotations(tmp_path, {n: {png: arrays[a] for png, a in pngs.items()} for n, pngs in layout.items()})
    out = tmp_path / "out"
    rc, err = _run(capsys, ckpt, folder, ann, out)
    assert rc == 2 and message in err and "--init-masks" in err, err
    assert not out.exists()


def test_missing_init_masks_path_names_both_layouts(sav, capsys, tmp_path):
    _, ckpt, folder, _, _, _ = sav
    rc, err = _run(capsys, ckpt, folder, tmp_path / "nowhere", tmp_path / "out")
    assert rc == 2 and "nowhere does not exist" in err and "SA-V annotation folder" in err
