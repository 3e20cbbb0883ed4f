"""Image predictor: one image + points / box / mask prompts -> masks, IoU predictions, low-res logits.

Matches the official ``SAM2ImagePredictor`` (same preprocessing, box-before-points prompt order, no-memory embedding
added to F16, logits upsampled bilinearly to the original size, threshold 0).

Example::

    model = build_model("edgetam", checkpoint="edgetam.pt")
    predictor = ImagePredictor(model)
    predictor.set_image(rgb_uint8)                      # (H, W, 3)
    pred = predictor.predict(points=[[500, 375]], labels=[1])
    pred.masks  # (3, H, W) bool; pred.iou (3,); pred.low_res_logits (3, 256, 256); pred.object_score
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgetam_train.models.fuse import fuse_high_res_projection
from edgetam_train.models.sam2_model import ImageFeatures, SAM2Model
from edgetam_train.predictor.preprocess import check_image, image_to_input, scale_points


@dataclass
class ImagePrediction:
    """Result for one prompt set: M = 3 with multimask output, else 1.

    masks (M, H, W) bool; iou (M,); low_res_logits (M, S/4, S/4) clamped to ±32; logits (M, H, W);
    object_score: the object-presence logit (float).
    """

    masks: np.ndarray
    iou: np.ndarray
    low_res_logits: np.ndarray
    logits: np.ndarray
    object_score: float


def fuse_for_inference(model: SAM2Model) -> SAM2Model:
    """Speed up inference in place; outputs equal within 1e-5, but the model must not be trained or saved after.

    Fuses RepViT BatchNorm/RepVGG branches (timm ``reparameterize_model``; Hiera has none) and folds the decoder's
    high-res projections into the neck (:func:`~edgetam_train.models.fuse.fuse_high_res_projection`, all variants).
    """
    trunk = model.image_encoder.trunk
    if hasattr(trunk, "reparameterize"):
        trunk.reparameterize()
    fuse_high_res_projection(model)
    return model


class ImagePredictor:
    """Prompted segmentation of single images with a :class:`SAM2Model` (student or teacher), CPU or CUDA.

    Args:
        model: the model; put in eval mode here.
        mask_threshold: logit threshold for the boolean masks.
        fuse: fuse for speed (:func:`fuse_for_inference`: RepViT trunk, high-res projections; modifies ``model``
            in place, which must not be trained or saved afterwards).
    """

    def __init__(self, model: SAM2Model, mask_threshold: float = 0.0, fuse: bool = False) -> None:
        self.model = model.eval()
        if fuse:
            fuse_for_inference(self.model)
        self.mask_threshold = mask_threshold
        self._feats: ImageFeatures | None = None
        self._orig_hw: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def set_image(self, image) -> None:
        """Encode an (H, W, 3) uint8 RGB image (numpy, tensor or PIL)."""
        image = check_image(image)
        self._orig_hw = image.shape[:2]
        self.set_input(image_to_input(image, self.model.image_size, self.device), self._orig_hw)

    @torch.inference_mode()
    def set_input(self, pixels: Tensor, orig_hw: tuple[int, int]) -> None:
        """Encode an already preprocessed (1, 3, S, S) tensor standing for an image of size ``orig_hw``."""
        feats = self.model.encode_image(pixels.to(self.device))
        if self.model.directly_add_no_mem_embed:
            feats.f16 = feats.f16 + self.model.no_mem_embed.view(1, -1, 1, 1)
        self._feats, self._orig_hw = feats, tuple(orig_hw)

    def _prompts(self, points, labels, box) -> tuple[Tensor, Tensor] | None:
        h, w = self._orig_hw
        size = self.model.image_size
        coords, labs = [], []
        if box is not None:
            box = torch.as_tensor(np.asarray(box, dtype=np.float32), device=self.device).reshape(-1)
            if box.numel() != 4:
                raise ValueError(f"box must be [x0, y0, x1, y1], got {box.numel()} values")
            x0, y0, x1, y1 = box.tolist()
            if not (x0 <= x1 and y0 <= y1):
                raise ValueError(f"box must satisfy x0 <= x1 and y0 <= y1, got {box.tolist()}")
            self._check_inside(box.view(2, 2), "box")
            coords.append(box.view(2, 2))
            labs.append(torch.tensor([2, 3], device=self.device))
        if points is not None:
            pts = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device).reshape(-1, 2)
            if labels is None:
                raise ValueError("points given without labels (1 = foreground, 0 = background)")
            lab = torch.as_tensor(np.asarray(labels), device=self.device).reshape(-1)
            if lab.numel() != pts.shape[0]:
                raise ValueError(f"{pts.shape[0]} points but {lab.numel()} labels")
            bad = [int(v) for v in lab.tolist() if v not in (0, 1)]
            if bad:
                raise ValueError(f"point labels must be 0 (background) or 1 (foreground), got {bad}")
            self._check_inside(pts, "point")
            coords.append(pts)
            labs.append(lab)
        if not coords:
            return None
        c = scale_points(torch.cat(coords)[None], (h, w), size)
        return c, torch.cat(labs)[None].to(torch.int32)

    def _check_inside(self, xy: Tensor, what: str) -> None:
        h, w = self._orig_hw
        outside = [(float(x), float(y)) for x, y in xy.tolist() if not (0 <= x <= w and 0 <= y <= h)]
        if outside:
            raise ValueError(f"{what} coordinates {outside} lie outside the image of width {w} and height {h}")

    @torch.inference_mode()
    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask_output: bool = True
                ) -> ImagePrediction:
        """Segment with clicks (N, 2) xy + labels (N,), a box [x0, y0, x1, y1], and/or a low-res mask (1, S/4, S/4).

        Coordinates are pixels of the image given to :meth:`set_image`.
        """
        if self._feats is None:
            raise ValueError("call set_image() before predict()")
        prompts = self._prompts(points, labels, box)
        if prompts is None and mask_input is None:
            raise ValueError("no prompt: give points+labels, a box, or mask_input")
        mask = None
        if mask_input is not None:
            mask = torch.as_tensor(np.asarray(mask_input, dtype=np.float32), device=self.device)
            side = self.model.image_size // 4
            if mask.ndim == 2:
                mask = mask[None]
            if mask.shape != (1, side, side):
                raise ValueError(f"mask_input must be (1, {side}, {side}) low-res logits, got {tuple(mask.shape)}")
            mask = mask[None]
        f = self._feats
        masks, ious, _, obj = self.model.heads(f.f16, f.high_res, prompts, mask, multimask_output)
        logits = F.interpolate(masks.float(), size=self._orig_hw, mode="bilinear", align_corners=False)
        low = masks.float().clamp(-32.0, 32.0)
        return ImagePrediction(
            masks=(logits[0] > self.mask_threshold).cpu().numpy(), iou=ious[0].float().cpu().numpy(),
            low_res_logits=low[0].cpu().numpy(), logits=logits[0].cpu().numpy(), object_score=float(obj[0, 0]))
