"""SA-23-style interactive mIoU: N simulated clicks per mask on SA-1B-format images, with :class:`ImagePredictor`.

Data: a folder (searched recursively) of ``<name>.jpg`` + ``<name>.json`` pairs in the SA-1B layout
(``{"image": {...}, "annotations": [{"segmentation": {"size": [h, w], "counts": str}, ...}]}``); every annotation
is one object to segment. Each image is encoded once.

Click simulation (deterministic; SAM's interactive protocol with the click at the centre of the error):

1. First click: positive, at the mask pixel farthest from the mask boundary (Euclidean distance transform of the
   mask padded with background, so the image border counts as boundary); multimask output, the candidate with the
   highest predicted IoU is kept (SAM's 1-click setting for ambiguous prompts).
2. Click k > 1: the error region is split into false negatives (object, not predicted) and false positives
   (predicted, not object); the largest connected component (8-connectivity) of either gets the next click at its
   pixel farthest from its boundary -- positive in a false negative, negative in a false positive. The decoder gets
   all clicks so far plus the previous low-res logits as mask input, single-mask output. When the prediction is
   already perfect no click is added and the prediction is kept.

Ties are broken by the first pixel in row-major order. mIoU after k clicks = the mean over all masks of the IoU
(at the image's resolution) of the k-click prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgetam_train.data.formats.images import read_image
from edgetam_train.data.formats.rle import decode_annotations
from edgetam_train.data.formats.sa1b import read_record, scan_pairs
from edgetam_train.predictor.image import ImagePredictor


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of two (H, W) boolean masks; 1.0 when both are empty."""
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def farthest_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` (H, W) bool farthest from its boundary (image border = boundary)."""
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The next corrective click ((x, y), label) for prediction ``pred`` of ``gt``, or None if there is no error.

    Label 1 in a false-negative region, 0 in a false-positive one; the region is the largest connected error
    component (8-connectivity) over both kinds.
    """
    best = None  # (area, region, label)
    for error, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not error.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[k, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, comp == k, label)
    if best is None:
        return None
    return farthest_point(best[1]), best[2]


def simulate_clicks(predictor: ImagePredictor, gt: np.ndarray, num_clicks: int) -> list[float]:
    """IoU after 1..``num_clicks`` simulated clicks on one object (the image is already set on ``predictor``)."""
    points: list[tuple[int, int]] = [farthest_point(gt)]
    labels: list[int] = [1]
    pred = predictor.predict(points=points, labels=labels, multimask_output=True)
    best = int(np.argmax(pred.iou))
    mask, logits = pred.masks[best], pred.low_res_logits[best:best + 1]
    ious = [iou(gt, mask)]
    for _ in range(1, num_clicks):
        click = next_click(gt, mask)
        if click is not None:
            points.append(click[0])
            labels.append(click[1])
            pred = predictor.predict(points=points, labels=labels, mask_input=logits, multimask_output=False)
            mask, logits = pred.masks[0], pred.low_res_logits[:1]
        ious.append(iou(gt, mask))
    return ious


@dataclass
class MIoUResult:
    """Per-mask IoUs after each click; ``per_mask[i][k]`` = IoU of mask i after k + 1 clicks."""

    per_mask: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def miou(self) -> list[float]:
        """mIoU after 1, 2, ... clicks."""
        return np.asarray(self.per_mask, dtype=np.float64).mean(axis=0).tolist() if self.per_mask else []

    def summary(self) -> str:
        """``clicks=1 mIoU=0.5550`` lines, one per click count."""
        return "\n".join(f"clicks={k} mIoU={v:.4f}" for k, v in enumerate(self.miou, start=1))


def evaluate_miou(predictor: ImagePredictor, data_dir: str | Path, num_clicks: int, max_images: int | None = None,
                  max_masks: int | None = None, progress: bool = True) -> MIoUResult:
    """N-click mIoU over the SA-1B-format images under ``data_dir`` (see the module docstring).

    Args:
        predictor: an :class:`ImagePredictor` (model in eval mode).
        data_dir: folder of ``*.jpg`` + ``*.json`` pairs.
        num_clicks: clicks per mask (>= 1).
        max_images: evaluate only the first images (sorted by path).
        max_masks: at most this many annotations per image (the first ones in the json).
        progress: tqdm bar over images.
    """
    from tqdm import tqdm

    if num_clicks < 1:
        raise ValueError(f"--clicks must be >= 1, got {num_clicks}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    pairs = scan_pairs(data_dir)
    if not pairs:
        raise FileNotFoundError(f"no <name>.jpg + <name>.json pairs (SA-1B layout) under {data_dir}")
    pairs = pairs[:max_images] if max_images else pairs
    result = MIoUResult()
    for rel in tqdm(pairs, desc=f"mIoU ({num_clicks} clicks)", unit="image", disable=not progress):
        jpg = data_dir / rel
        info, annotations = read_record(jpg.with_suffix(".json"))
        image = read_image(jpg)
        h, w = image.shape[:2]
        annotations = annotations[:max_masks] if max_masks else annotations
        predictor.set_image(image)
        for k, gt in enumerate(decode_annotations(annotations, h, w, jpg.with_suffix(".json"))):
            if not gt.any():
                continue
            result.per_mask.append(simulate_clicks(predictor, gt, num_clicks))
            result.names.append(f"{rel}#{annotations[k].get('id', k)}")
    return result
