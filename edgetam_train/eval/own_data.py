"""Scoring a checkpoint on the fine-tuning formats (``edgetam-eval miou --data`` / ``edgetam-eval jf --data``), with
the datasets and the scoring code of in-training validation, so the numbers are the same on the same split.

``--data`` specs (:func:`parse_data_spec`):

* ``coco:ANN.json:IMAGES`` -- :class:`~edgetam_train.data.datasets.coco.COCOValDataset` (``data=coco``'s val split);
* ``masks:DIR`` -- :class:`~edgetam_train.data.datasets.mask_folder.MaskFolderValDataset` (``data=mask_folder``);
* ``sa1b:DIR`` -- :class:`~edgetam_train.data.datasets.val.MIoUValDataset` (``data.val.miou``);
* ``vos:DIR`` -- :class:`~edgetam_train.data.datasets.val.VOSValDataset` (``data=vos_finetune``'s val videos; jf only).

Images: the clicks of :func:`edgetam_train.eval.miou.simulate_clicks` with the unfused :class:`ImagePredictor` (what
validation runs: click 1 = ``val/mIoU_1click``). Videos: :func:`~edgetam_train.eval.validation.track_video` +
:func:`~edgetam_train.eval.validation.score_video` (``val/J&F``). A bad file is skipped, counted and named, as in
validation.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from edgetam_train.eval.jf import JFResult
from edgetam_train.eval.miou import MIoUResult, simulate_clicks
from edgetam_train.eval.validation import describe_skipped, score_video, track_video
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.image import ImagePredictor

log = logging.getLogger(__name__)
KINDS = ("coco", "masks", "sa1b", "vos")


@dataclass
class DataSpec:
    """A parsed ``--data``: the format and its paths."""

    kind: str
    paths: list[Path]


def parse_data_spec(spec: str, image_only: bool = True) -> DataSpec | None:
    """``coco:ANN.json:IMAGES`` / ``masks:DIR`` / ``sa1b:DIR`` / ``vos:DIR`` -> :class:`DataSpec`; a plain folder
    (no known ``kind:``) -> None (the SA-1B folder of :func:`edgetam_train.eval.miou.evaluate_miou`).

    Raises:
        ValueError: a known kind with the wrong number of paths, or ``vos`` where images are scored.
    """
    kind, sep, rest = str(spec).partition(":")
    if not sep or kind not in KINDS:
        return None
    paths = [Path(p) for p in rest.split(":")] if rest else []
    want = 2 if kind == "coco" else 1
    if len(paths) != want:
        form = "coco:ANN.json:IMAGES" if kind == "coco" else f"{kind}:DIR"
        raise ValueError(f"--data {spec}: expected {form} ({want} path{'s' if want > 1 else ''})")
    if image_only and kind == "vos":
        raise ValueError(f"--data {spec}: videos are scored by `edgetam-eval jf --data vos:DIR`, not miou")
    if not image_only and kind != "vos":
        raise ValueError(f"--data {spec}: jf scores videos (vos:DIR, the data=vos_finetune layout)")
    return DataSpec(kind, paths)


def build_dataset(spec: DataSpec, max_images: int | None = None, max_masks: int | None = None) -> Dataset:
    """The validation dataset of ``spec`` (module docstring); ``max_images`` / ``max_masks`` as ``data.val.miou``
    (for ``vos``: ``max_images`` limits the videos)."""
    if spec.kind == "coco":
        from edgetam_train.data.datasets.coco import COCOValDataset

        return COCOValDataset(spec.paths[0], spec.paths[1], max_images=max_images, max_masks=max_masks)
    if spec.kind == "masks":
        from edgetam_train.data.datasets.mask_folder import MaskFolderValDataset

        return MaskFolderValDataset(spec.paths[0], max_images=max_images, max_masks=max_masks)
    from edgetam_train.data.datasets.val import MIoUValDataset, VOSValDataset

    if spec.kind == "sa1b":
        return MIoUValDataset(spec.paths[0], max_images=max_images, max_masks=max_masks)
    return VOSValDataset(spec.paths[0], max_videos=max_images)


@dataclass
class OwnMIoU(MIoUResult):
    """:class:`MIoUResult` plus the per-image rows and the skipped files."""

    images: list[tuple[str, list[list[float]]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def evaluate_dataset_miou(model: SAM2Model, dataset: Dataset, num_clicks: int, progress: bool = True) -> OwnMIoU:
    """N-click IoUs of every mask of every item of ``dataset`` (validation's items and predictor)."""
    from tqdm import tqdm

    if num_clicks < 1:
        raise ValueError(f"--clicks must be >= 1, got {num_clicks}")
    result = OwnMIoU()
    predictor = ImagePredictor(model)
    for i in tqdm(range(len(dataset)), desc=f"mIoU ({num_clicks} clicks)", unit="image", disable=not progress):
        item = dataset[i]
        if item.get("kind") == "skipped":
            log.warning(describe_skipped(item))
            result.skipped.append(str(item["path"]))
            continue
        rows = []
        if len(item["masks"]):
            predictor.set_image(item["image"])
            rows = [simulate_clicks(predictor, gt, num_clicks) for gt in item["masks"]]
        result.per_mask += rows
        result.names += [f"{item['name']}#{k}" for k in range(len(rows))]
        result.images.append((str(item["name"]), rows))
    return result


def write_miou_csv(result: OwnMIoU, num_clicks: int, path: str | Path) -> Path:
    """One row per image: ``image,masks,mIoU_1click,...,mIoU_<N>click`` (empty scores for an image without masks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "masks"] + [f"mIoU_{k}click" for k in range(1, num_clicks + 1)])
        for name, rows in result.images:
            means = np.asarray(rows, dtype=np.float64).mean(axis=0).tolist() if rows else [""] * num_clicks
            writer.writerow([name, len(rows)] + [f"{v:.6f}" if v != "" else "" for v in means])
    return path


def evaluate_dataset_jf(model: SAM2Model, dataset: Dataset, progress: bool = True) -> JFResult:
    """J and F of every object of every video of a :class:`VOSValDataset` (first-frame GT mask prompt, tracked)."""
    from tqdm import tqdm

    objects = []
    for i in tqdm(range(len(dataset)), desc="J&F", unit="video", disable=not progress):
        item = dataset[i]
        if item.get("kind") == "skipped":
            log.warning(describe_skipped(item))
            continue
        objects += score_video(item, track_video(model, item["frames"], item["labels"][0]))
    return JFResult(objects)
