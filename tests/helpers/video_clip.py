"""A synthetic 3-frame clip and the stage-2 quick-start module, shared by the clip-step and prompting tests, and the
smooth random frames of the predictor CLI tests.

The module is composed as ``python train.py experiment=edgetam_distill_video debug=quickstart_video`` (256² student,
randomly initialised SAM 2.1-T teacher).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from edgetam_train.config import CONFIG_DIR

S, T = 256, 3  # image side, frames per clip


def build_module(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["experiment=edgetam_distill_video", "debug=quickstart_video",
                                          "paths.root_dir=.", *overrides])
    torch.manual_seed(0)
    return instantiate(cfg.model, _convert_="partial")


def make_clip() -> dict:
    """One clip: a square moving right (object 0) and a disc that leaves on frame 1 and re-enters on frame 2."""
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    images = torch.zeros(1, T, 3, S, S)
    masks = torch.zeros(T, 2, S, S, dtype=torch.bool)
    for t in range(T):
        square = (ys >= 60) & (ys < 130) & (xs >= 40 + 12 * t) & (xs < 110 + 12 * t)
        disc = ((ys - 180) ** 2 + (xs - 170) ** 2) < 30 ** 2
        masks[t, 0] = square
        if t != 1:
            masks[t, 1] = disc
        background = 0.3 * torch.sin(xs / 9.0) * torch.cos(ys / 13.0)
        images[0, t] = background + torch.stack([square * 1.5, masks[t, 1] * 1.5, square * -1.0]).float()
    return {"images": images, "masks": masks, "obj_to_img": torch.zeros(2, dtype=torch.long)}


def smooth_frames(num: int, height: int, width: int, seed: int) -> np.ndarray:
    """(num, height, width, 3) uint8 frames: uniform noise on a 1/16 grid upsampled bilinearly (values 0..60), smooth
    enough that H.264 keeps them closely and textured enough for the image encoder."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((num, 3, height // 16, width // 16), dtype=np.float32) * 60)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth.permute(0, 2, 3, 1).round().numpy().astype(np.uint8)
