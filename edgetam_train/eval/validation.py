"""Validation during training: J&F of tracked videos and 1-click mIoU of images, as a DDP-safe torchmetrics metric.

The scores come from the same code as the offline tools: videos are tracked by :class:`VideoPredictor` (every object
prompted with its first-frame GT mask, then propagated; the SAM 2 ``vos_inference.py`` setting: no hole filling, the
lower object id wins where masks overlap) and scored by :func:`edgetam_train.eval.jf.score_label_frames` (DAVIS 2017
protocol); images get one click at the mask pixel farthest from the boundary
(:func:`edgetam_train.eval.miou.simulate_clicks`, the highest-IoU of the 3 multimask outputs).

:class:`ValScores` keeps sums and counts (J, F per object; IoU per mask) that are summed over ranks when computed, so
the dataset means are exact for any split of the videos over ranks (a mean of per-rank means would not be).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from edgetam_train.data.formats.vos import object_ids
from edgetam_train.eval.jf import ObjectScore, num_label_objects, score_label_frames
from edgetam_train.eval.miou import simulate_clicks
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.image import ImagePredictor
from edgetam_train.predictor.video import VideoPredictor


class ValScores(Metric):
    """Sums and counts of the validation scores; :meth:`compute` all-reduces them (sum) and returns the means.

    ``update(j=..., f=...)`` takes one J and one F per object (each the mean over the object's scored frames),
    ``update(ious=...)`` one IoU per mask, ``update(skipped=n)`` n videos / images that could not be scored.
    :meth:`compute` returns ``{"J", "F", "J&F", "mIoU_1click"}`` (NaN when no object / mask was scored on any rank)
    and the counts ``{"objects", "masks", "skipped"}``, all float64 scalars.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("j_sum", "f_sum", "objects", "iou_sum", "masks", "skipped"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, j: Sequence[float] = (), f: Sequence[float] = (), ious: Sequence[float] = (),
               skipped: int = 0) -> None:
        if len(j) != len(f):
            raise ValueError(f"one J and one F per object: got {len(j)} J and {len(f)} F values")
        self.skipped += int(skipped)
        self.j_sum += float(np.sum(j, dtype=np.float64))
        self.f_sum += float(np.sum(f, dtype=np.float64))
        self.objects += len(j)
        self.iou_sum += float(np.sum(ious, dtype=np.float64))
        self.masks += len(ious)

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.objects.device)
        j = self.j_sum / self.objects if self.objects > 0 else nan
        f = self.f_sum / self.objects if self.objects > 0 else nan
        miou = self.iou_sum / self.masks if self.masks > 0 else nan
        return {"J": j, "F": f, "J&F": (j + f) / 2, "mIoU_1click": miou, "objects": self.objects.clone(),
                "masks": self.masks.clone(), "skipped": self.skipped.clone()}


def describe_skipped(item: dict[str, Any]) -> str:
    """One line naming the file and reason of a ``{"kind": "skipped"}`` validation item
    (:mod:`edgetam_train.data.datasets.val`)."""
    detail = f": {item['detail']}" if item.get("detail") else ""
    return (f"validation: skipped {item['set']} item {item['name']!r} ({item['reason']}) because of "
            f"{item['path']}{detail}")


def combine_masks(masks: dict[int, np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """{object id: (H, W) bool} -> (H, W) uint8 label map; where masks overlap the lower id wins (SAM 2's
    ``vos_inference.py`` ``put_per_obj_mask``)."""
    label = np.zeros(hw, dtype=np.uint8)
    for obj_id in sorted(masks, reverse=True):
        label[masks[obj_id]] = obj_id
    return label


@torch.no_grad()
def track_video(model: SAM2Model, frames: np.ndarray, first_labels: np.ndarray) -> np.ndarray:
    """Semi-supervised VOS: every object of ``first_labels`` prompted with its mask on frame 0, then propagated.

    Args:
        model: the model (put in eval mode by the predictor).
        frames: (T, H, W, 3) uint8 RGB.
        first_labels: (H, W) object ids of frame 0 (0 background, 255 void: neither is an object).

    Returns:
        (T, H, W) uint8 predicted object ids (frame 0 included: the decoded mask prompt).
    """
    hw = tuple(frames.shape[1:3])
    out = np.zeros(frames.shape[:3], dtype=np.uint8)
    ids = object_ids(first_labels).tolist()
    if not ids:
        return out
    predictor = VideoPredictor(model)
    state = predictor.init_state(frames)
    for obj_id in ids:
        predictor.add_mask(state, 0, obj_id, first_labels == obj_id)
    for t, obj_ids, logits in predictor.propagate(state):
        masks = predictor.masks_from_logits(logits).cpu().numpy()
        out[t] = combine_masks(dict(zip(obj_ids, masks)), hw)
    return out


def score_video(item: dict[str, Any], pred_labels: np.ndarray) -> list[ObjectScore]:
    """J and F of each object of a ``data.val`` VOS item (see :mod:`edgetam_train.data.datasets.val`) against predicted
    ids (T, H, W); DAVIS 2017 protocol: objects 1..max id of the first GT frame, first and last frames not scored."""
    labels, names = item["labels"], item["frame_names"]
    if pred_labels.shape != labels.shape:
        raise ValueError(f"video {item['video']!r}: predicted labels {pred_labels.shape} != GT {labels.shape}")
    frames = ((names[t], labels[t], pred_labels[t]) for t in range(1, len(names) - 1))
    return score_label_frames(item["video"], frames, num_label_objects(labels[0]), protocol="davis")


def one_click_ious(model: SAM2Model, image: np.ndarray, masks: np.ndarray) -> list[float]:
    """IoU of each mask (M, H, W) bool of ``image`` (H, W, 3) uint8 after one click (``edgetam-eval miou``'s)."""
    if len(masks) == 0:
        return []
    predictor = ImagePredictor(model)
    predictor.set_image(image)
    return [simulate_clicks(predictor, gt, 1)[0] for gt in masks]
