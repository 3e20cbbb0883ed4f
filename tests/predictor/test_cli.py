"""``edgetam-predict image``: the npz / png it writes (documented shapes), equality with :class:`ImagePredictor` on
the same input, and with transformers' ``EdgeTamModel`` loaded from the directory ``edgetam-export --format hf``
wrote, on the same pixels and clicks. ``edgetam-predict video`` on a 4-frame folder and mp4: the PNGs / npz / gif
it writes, equality with :class:`VideoPredictor` called directly (forward + backward tracking), and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgetam_train.data.formats.sav import iter_mp4_frames
from edgetam_train.data.synthetic.videos import write_mp4
from edgetam_train.export.hf import save_hf
from edgetam_train.models.build import build_model
from edgetam_train.predictor import cli
from edgetam_train.predictor.image import ImagePredictor
from edgetam_train.predictor.preprocess import image_to_input
from edgetam_train.predictor.video import VideoPredictor
from tests.helpers.hf_reference import random_official_state_dict
from tests.helpers.video_clip import smooth_frames

S = 256
H, W = 150, 200
POINTS = [[120.0, 70.0], [40.0, 30.0]]
LABELS = [1, 0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp dir, official checkpoint path, state_dict, image path, RGB array)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    sd = random_official_state_dict("edgetam", seed=4)
    ckpt = root / "edgetam.pt"
    torch.save({"model": sd}, ckpt)
    rng = np.random.default_rng(0)
    image = (rng.random((H, W, 3)) * 80).astype(np.uint8)
    image[40:110, 80:170] = (200, 60, 40)
    path = root / "image.png"  # lossless, so the CLI reads exactly these pixels
    Image.fromarray(image).save(path)
    yield root, ckpt, sd, path, image
    torch.set_num_threads(before)


def _predict(capsys, ckpt, image, out, *extra) -> dict[str, np.ndarray]:
    rc = cli.main(["image", "--ckpt", str(ckpt), "--image-size", str(S), "--image", str(image), "--out", str(out),
                   "--device", "cpu", *extra])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    with np.load(cli.output_prefix(out).with_suffix(".npz")) as data:
        return dict(data)


def _points_args():
    return ["--points", ";".join(f"{x},{y}" for x, y in POINTS), "--labels", ";".join(map(str, LABELS))]


def test_writes_documented_npz_and_png(setup, capsys):
    root, ckpt, _, image, _ = setup
    out = root / "one_click"
    pred = _predict(capsys, ckpt, image, out, "--points", "120,70", "--labels", "1")  # auto: multimask
    assert set(pred) == {"masks", "iou", "low_res_logits", "object_score"}
    assert pred["masks"].shape == (3, H, W) and pred["masks"].dtype == bool
    assert pred["iou"].shape == (3,) and pred["low_res_logits"].shape == (3, S // 4, S // 4)
    assert pred["object_score"].shape == () and np.isfinite(pred["object_score"])
    with Image.open(f"{out}.png") as png:
        assert png.size == (W, H) and png.mode == "RGB"

    pred = _predict(capsys, ckpt, image, root / "box.npz", "--box", "80,40,170,110", *_points_args())
    assert pred["masks"].shape == (1, H, W)  # box / several clicks: single mask by default
    assert (root / "box.png").exists()
    pred = _predict(capsys, ckpt, image, root / "forced", *_points_args(), "--multimask")
    assert pred["masks"].shape == (3, H, W)


def test_masks_equal_image_predictor(setup, capsys):
    root, ckpt, sd, image_path, image = setup
    pred = _predict(capsys, ckpt, image_path, root / "parity", *_points_args(), "--no-multimask")
    model = build_model("edgetam", image_size=S)
    model.load_state_dict(sd)
    predictor = ImagePredictor(model)
    predictor.set_image(image)
    ref = predictor.predict(points=POINTS, labels=LABELS, multimask_output=False)
    assert np.array_equal(pred["masks"], ref.masks)
    np.testing.assert_array_equal(pred["low_res_logits"], ref.low_res_logits)
    np.testing.assert_array_equal(pred["iou"], ref.iou)
    assert float(pred["object_score"]) == pytest.approx(ref.object_score, abs=1e-6)


def test_masks_equal_transformers_from_exported_dir(setup, capsys):
    transformers = pytest.importorskip("transformers")
    root, ckpt, sd, image_path, image = setup
    pred = _predict(capsys, ckpt, image_path, root / "hf_parity", *_points_args(), "--multimask")
    model = build_model("edgetam", image_size=S)
    model.load_state_dict(sd)
    hf_dir = save_hf(model, root / "hf", "edgetam")
    net = transformers.EdgeTamModel.from_pretrained(hf_dir).float().eval()
    pixels = image_to_input(image, S)  # the same pixels (transformers' processor would resize the uint8 image)
    points = torch.tensor(POINTS) * torch.tensor([S / W, S / H])
    with torch.no_grad():
        out = net(pixel_values=pixels, input_points=points[None, None], input_labels=torch.tensor([[LABELS]]),
                  multimask_output=True)
    low = out.pred_masks[0, 0]
    assert (low - torch.from_numpy(pred["low_res_logits"])).abs().max() <= 1e-4
    assert (out.iou_scores[0, 0] - torch.from_numpy(pred["iou"])).abs().max() <= 1e-4
    logits = F.interpolate(low[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    decided = logits.abs() > 1e-3  # pixels whose sign cannot flip within the tolerance
    assert decided.float().mean() > 0.99
    assert np.array_equal((logits > 0).numpy()[decided.numpy()], pred["masks"][decided.numpy()])


def test_bad_arguments(setup, capsys):
    root, ckpt, _, image, _ = setup
    base = ["image", "--ckpt", str(ckpt), "--image-size", str(S), "--image", str(image), "--out", str(root / "x")]
    assert cli.main(base + ["--points", "1,2;3,4", "--labels", "1"]) == 2
    assert "2 points but 1 labels" in capsys.readouterr().err
    assert cli.main(base + ["--points", "1,2", "--labels", "2"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert cli.main(base + ["--points", "500,20", "--labels", "1"]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert cli.main(base) == 2
    assert "--box" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- video

T, VH, VW = 4, 144, 192  # even sides: the mp4 is yuv420p
VIDEO_POINTS = "120,60;30,120"


@pytest.fixture(scope="module")
def video(setup):
    """(frame folder, mp4, (T, H, W, 3) uint8 frames, reference VideoPredictor with the checkpoint's weights)."""
    root, _, sd, _, _ = setup
    frames = smooth_frames(T, VH, VW, seed=1)
    for t in range(T):  # a red rectangle moving right
        frames[t, 40:100, 70 + 8 * t:150 + 8 * t] = (210, 50, 40)
    folder = root / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{t:02d}.png")  # lossless: the CLI reads exactly these pixels
    mp4 = root / "clip.mp4"
    write_mp4(mp4, frames, fps=12)
    model = build_model("edgetam", image_size=S)
    model.load_state_dict(sd)
    return folder, mp4, frames, VideoPredictor(model, fill_hole_area=8)


def _run_video(capsys, ckpt, frames, out, *extra) -> tuple[int, str]:
    rc = cli.main(["video", "--ckpt", str(ckpt), "--image-size", str(S), "--frames", str(frames), "--out", str(out),
                   "--device", "cpu", *extra])
    printed = capsys.readouterr()
    return rc, printed.err + printed.out


def _reference(predictor, frames, k, obj_id, **prompts) -> tuple[np.ndarray, np.ndarray]:
    """(logits on frame k right after the prompt (H, W), logits of every frame (T, 1, H, W)) from VideoPredictor
    called directly: prompt frame k, propagate forward, then backward from k."""
    state = predictor.init_state(list(frames))
    first = predictor.add_clicks(state, k, obj_id, **prompts).numpy()
    out = np.full((len(frames), 1, *first.shape), np.nan, dtype=np.float32)
    for t, ids, logits in predictor.propagate(state, start_frame_idx=k):
        out[t] = logits.numpy()
    if k > 0:
        for t, ids, logits in predictor.propagate(state, start_frame_idx=k, reverse=True):
            out[t] = logits.numpy()
    return first, out


def _check_outputs(out, names, obj_id) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Documented files and shapes; returns (npz arrays, (T, H, W) label maps read back from the PNGs)."""
    with np.load(out / "masks.npz") as data:
        npz = dict(data)
    assert set(npz) == {"logits", "object_score", "obj_ids", "frames"}
    assert npz["logits"].shape == (T, 1, VH, VW) and npz["logits"].dtype == np.float16
    assert npz["object_score"].shape == (T, 1) and npz["object_score"].dtype == np.float32
    assert npz["obj_ids"].tolist() == [obj_id] and npz["frames"].tolist() == names
    labels = []
    for name in names:
        with Image.open(out / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (VW, VH)
            labels.append(np.asarray(png))
    labels = np.stack(labels)
    assert set(np.unique(labels).tolist()) <= {0, obj_id}
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == T and gif.size == (VW, VH)  # under --gif-max-side 480: not shrunk
    return npz, labels


def test_video_from_folder_equals_video_predictor(setup, video, capsys):
    root, ckpt, _, _, _ = setup
    folder, _, frames, predictor = video
    out, k, obj_id = root / "video_dir", 1, 3
    rc, printed = _run_video(capsys, ckpt, folder, out, "--frame-idx", str(k), "--points", VIDEO_POINTS,
                             "--labels", "1;0", "--obj-id", str(obj_id))
    assert rc == 0, printed
    assert "forward and backward over 4 frames" in printed
    names = [f"frame_{t:02d}" for t in range(T)]
    npz, labels = _check_outputs(out, names, obj_id)

    first, ref = _reference(predictor, frames, k, obj_id, points=[[120, 60], [30, 120]], labels=[1, 0])
    assert not np.isnan(ref).any()  # every frame tracked, backward to frame 0 too
    assert np.array_equal(labels[k] == obj_id, first > 0)  # the clicked frame's mask = the direct call's
    np.testing.assert_array_equal(npz["logits"][k, 0], first.astype(np.float16))
    np.testing.assert_array_equal(npz["logits"], ref.astype(np.float16))  # tracked frames, both directions
    assert np.array_equal(labels == obj_id, ref[:, 0] > 0)
    assert 0 < (labels[k] == obj_id).sum() < VH * VW  # a real mask (random weights still segment something)


def test_video_from_mp4_with_box(setup, video, capsys):
    root, ckpt, _, _, _ = setup
    _, mp4, frames, predictor = video
    out = root / "video_mp4"
    rc, printed = _run_video(capsys, ckpt, mp4, out, "--box", "60,30,160,110")
    assert rc == 0, printed
    npz, labels = _check_outputs(out, [f"{t:05d}" for t in range(T)], 1)
    decoded = np.stack([rgb for _, rgb in iter_mp4_frames(mp4)])  # the pixels the CLI tracked (lossy H.264)
    error = np.abs(decoded.astype(int) - frames).mean(axis=(1, 2, 3))
    assert decoded.shape == frames.shape and error.max() < 3, error
    first, ref = _reference(predictor, decoded, 0, 1, box=[60, 30, 160, 110])
    assert np.array_equal(labels[0] == 1, first > 0)
    np.testing.assert_array_equal(npz["logits"], ref.astype(np.float16))
    assert np.array_equal(labels == 1, ref[:, 0] > 0)
    assert "tracked forward over 4 frames" in printed


def test_video_errors(setup, video, capsys):
    root, ckpt, _, _, _ = setup
    folder, _, _, _ = video
    out = root / "video_err"
    clicks = ["--points", "120,60", "--labels", "1"]
    (root / "empty").mkdir()
    rc, err = _run_video(capsys, ckpt, root / "empty", out, *clicks)
    assert rc == 2 and "no .jpg/.jpeg/.png frames found" in err and "empty" in err
    bad = root / "bad.mp4"
    bad.write_text("not a video")
    rc, err = _run_video(capsys, ckpt, bad, out, *clicks)
    assert rc == 2 and "cannot decode it as a video" in err and "bad.mp4" in err
    rc, err = _run_video(capsys, ckpt, root / "missing", out, *clicks)
    assert rc == 2 and "does not exist" in err
    rc, err = _run_video(capsys, ckpt, folder, out, *clicks, "--frame-idx", "4")
    assert rc == 2 and "--frame-idx 4 is out of range" in err and "4 frames (valid: 0 .. 3)" in err
    rc, err = _run_video(capsys, ckpt, folder, out, "--points", "120,60;30,20", "--labels", "1")
    assert rc == 2 and "2 points but 1 labels" in err
    rc, err = _run_video(capsys, ckpt, folder, out, "--points", "500,20", "--labels", "1")
    assert rc == 2 and "(500.0, 20.0)" in err and "outside the frame of width 192 and height 144" in err
    assert not out.exists()  # nothing written before the inputs are checked
    with pytest.raises(SystemExit):
        cli.main(["video", "--ckpt", str(ckpt)])  # --frames and --out are required
    assert "--frames" in capsys.readouterr().err
