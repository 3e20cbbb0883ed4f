"""``edgetam-predict image``: the npz / png it writes (documented shapes), equality with :class:`ImagePredictor` on
the same input, and with transformers' ``EdgeTamModel`` loaded from the directory ``edgetam-export --format hf``
wrote, on the same pixels and clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgetam_train.export.hf import save_hf
from edgetam_train.models.build import build_model
from edgetam_train.predictor import cli
from edgetam_train.predictor.image import ImagePredictor
from edgetam_train.predictor.preprocess import image_to_input

from hf_reference import random_official_state_dict

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
    with pytest.raises(SystemExit):
        cli.main(["video"])  # not a subcommand (yet)
