"""Pictures of predicted masks during training, readable at a glance: one row per frame, one panel per mask.

Each row is one frame (images: one row; stage-2 clips: every frame of the clip, in time order, so tracking is
visible): ``image + prompt | ground truth | student | teacher`` (the teacher panel only when a teacher answered).
Colours stay the same everywhere and are outlined in black so they show on dark and light images: ground truth
amber, student magenta, teacher cyan (each panel's title is written in its colour); positive clicks green dots,
negative clicks red dots, box prompts white rectangles. Prediction panels carry the ground-truth outline and their IoU
with the ground truth (at full resolution; 1.00 when both are empty). Drawing goes through
``torchvision.utils.draw_segmentation_masks`` / ``draw_keypoints`` / ``draw_bounding_boxes``.

The LightningModule's ``training_step`` returns, on the steps it chooses (``vis_every_n_steps``; keep it equal to this
callback's ``every_n_steps``), extra keys next to ``loss`` (B samples, T frames, S the input side):

- ``vis_images``  (B, T, 3, S, S) float, ImageNet-normalised (or (B, 3, S, S): T = 1);
- ``vis_gt``      (B, T, S, S) bool ground truth;
- ``vis_student`` (B, T, S, S) float student mask logits (threshold 0);
- ``vis_teacher`` (B, T, S, S) float teacher mask logits, or None;
- ``vis_point_coords`` (B, T, P, 2) x, y in input pixels and ``vis_point_labels`` (B, T, P) (1 positive, 0 negative,
  2/3 box corners, -1 none), or None;
- ``vis_notes`` B lists of T strings (what prompted each frame: "click", "box", "mask prompt", "memory"), or None.

Every ``every_n_steps`` optimiser steps (counted at the start of the batch, like ``self.global_step`` inside
``training_step``) the first ``max_images`` samples are drawn and sent to the loggers: ``WandbLogger`` gets the
pictures and, per frame, a ``wandb.Image`` with the three masks as switchable overlays (``masks=``, key
``<key>_overlays``); ``TensorBoardLogger`` gets ``add_image``; with neither, PNG files are written to
``<first logger's log_dir or default_root_dir>/mask_pictures/step_XXXXXXX_i.png``. Global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD, denormalise

GT_COLOUR = (255, 190, 0)
STUDENT_COLOUR = (255, 0, 220)
TEACHER_COLOUR = (0, 200, 255)
POSITIVE_COLOUR = (0, 230, 0)
NEGATIVE_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 255, 255)
HALO = (0, 0, 0)
MAX_OVERLAYS = 16  # wandb.Image overlays per drawing


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool masks; 1.0 when both are empty."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0 if r else mask


def outline(mask: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Pixels of the (H, W) bool ``mask`` that touch its outside (4-neighbours), thickened to ``width`` pixels."""
    inner = ~_dilate(~mask, 1)
    return _dilate(mask & ~inner, max(0, width - 1))


def draw_mask(rgb: torch.Tensor, mask: torch.Tensor, colour: tuple[int, int, int], fill: float = 0.4,
              width: int = 2) -> torch.Tensor:
    """``rgb`` (3, H, W) uint8 with ``mask`` (H, W) bool filled (alpha ``fill``; 0: outline only) and outlined in
    ``colour`` over a one-pixel black halo."""
    if not mask.any():
        return rgb
    edge = outline(mask, width)
    if fill > 0:
        rgb = draw_segmentation_masks(rgb, mask[None], alpha=fill, colors=[colour])
    rgb = draw_segmentation_masks(rgb, _dilate(edge, 1)[None], alpha=1.0, colors=[HALO])
    return draw_segmentation_masks(rgb, edge[None], alpha=1.0, colors=[colour])


def draw_prompt(rgb: torch.Tensor, coords: torch.Tensor | None, labels: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """Clicks (labels 1 green, 0 red) as dots and boxes (labels 2, 3: corners) as white rectangles, black-edged;
    ``coords`` (P, 2) in input pixels, multiplied by ``scale``; labels -1 are skipped."""
    if coords is None or labels is None or labels.numel() == 0:
        return rgb
    xy, lab = coords.detach().float().cpu() * scale, labels.detach().cpu().long()
    r = max(3, rgb.shape[-1] // 48)
    corners = [xy[lab == k] for k in (2, 3)]
    if len(corners[0]) and len(corners[0]) == len(corners[1]):
        boxes = torch.cat(corners, dim=1)
        rgb = draw_bounding_boxes(rgb, boxes, colors=[HALO] * len(boxes), width=r // 2 + 3)
        rgb = draw_bounding_boxes(rgb, boxes, colors=[BOX_COLOUR] * len(boxes), width=r // 2 + 1)
    for value, colour in ((1, POSITIVE_COLOUR), (0, NEGATIVE_COLOUR)):
        pts = xy[lab == value]
        if len(pts):
            rgb = draw_keypoints(rgb, pts[None], colors=HALO, radius=r + 2)
            rgb = draw_keypoints(rgb, pts[None], colors=colour, radius=r)
    return rgb


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def title_height(panel_size: int) -> int:
    """Height of the title strip above each panel."""
    return max(10, panel_size // 16) + 5


def _titled(panel: torch.Tensor, title: str, colour: tuple[int, int, int]) -> Image.Image:
    """The panel under a black strip with ``title`` written in ``colour`` (the strip hides nothing of the frame)."""
    body = Image.fromarray(panel.permute(1, 2, 0).numpy())
    strip = title_height(body.width)
    img = Image.new("RGB", (body.width, body.height + strip), HALO)
    img.paste(body, (0, strip))
    ImageDraw.Draw(img).text((3, 1), title, fill=colour, font=_font(strip - 5))
    return img


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    out = F.interpolate(x[None].float(), size=(size, size), mode=mode, **({"antialias": True} if mode == "bilinear"
                                                                           else {}))[0]
    return out


def frame_row(image: torch.Tensor, gt: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor | None,
              coords: torch.Tensor | None = None, labels: torch.Tensor | None = None, note: str = "",
              panel_size: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> list[Image.Image]:
    """The panels of one frame: image + prompt, ground truth, student, and teacher when given.

    Args:
        image: (3, S, S) normalised; gt: (S, S) bool; student / teacher: (S, S) logits.
        coords / labels: the frame's prompt, (P, 2) input pixels / (P,) (see :func:`draw_prompt`).
        note: what prompted the frame, in the first panel's title.
    """
    size = image.shape[-1]
    rgb = _resize(denormalise(image, mean, std), panel_size, "bilinear").round().clamp(0, 255).to(torch.uint8)
    gt_full = gt.detach().cpu().bool()
    gt_small = _resize(gt_full[None], panel_size, "nearest")[0] > 0
    scale = panel_size / size

    def prediction(logits: torch.Tensor, colour: tuple[int, int, int], who: str) -> Image.Image:
        full = logits.detach().float().cpu() > 0
        small = _resize(full[None], panel_size, "nearest")[0] > 0
        out = draw_mask(draw_mask(rgb, small, colour), gt_small, GT_COLOUR, fill=0.0, width=1)
        return _titled(draw_prompt(out, coords, labels, scale), f"{who}  IoU {iou(full, gt_full):.2f}", colour)

    panels = [_titled(draw_prompt(rgb, coords, labels, scale), note or "image", BOX_COLOUR),
              _titled(draw_mask(rgb, gt_small, GT_COLOUR), "ground truth", GT_COLOUR),
              prediction(student, STUDENT_COLOUR, "student")]
    if teacher is not None:
        panels.append(prediction(teacher, TEACHER_COLOUR, "teacher"))
    return panels


def _frames(x: torch.Tensor | None, frame_dims: int) -> torch.Tensor | None:
    """Add the frame axis to a single-frame tensor (``frame_dims``: the dims of one frame)."""
    return None if x is None else (x[None] if x.ndim == frame_dims else x)


def sample_picture(images: torch.Tensor, gt: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor | None,
                   panel_size: int = 256, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   point_coords: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                   notes: Sequence[str] | None = None) -> Image.Image:
    """One picture of a sample: a row of :func:`frame_row` panels per frame.

    Args:
        images: (T, 3, S, S) or (3, S, S); gt: (T, S, S) bool; student / teacher: (T, S, S) logits (teacher: None).
        point_coords / point_labels: (T, P, 2) / (T, P) prompts per frame (labels -1: none), or None.
        notes: T strings, what prompted each frame.
    Returns:
        PIL RGB image, (3 or 4)·panel_size wide and T·(panel_size + title strip) high.
    """
    images, gt, student = _frames(images, 3), _frames(gt, 2), _frames(student, 2)
    teacher = _frames(teacher, 2)
    coords, labels = _frames(point_coords, 2), _frames(point_labels, 1)
    rows = []
    for t in range(images.shape[0]):
        note = (notes[t] if notes else "") if images.shape[0] == 1 else f"frame {t}: {notes[t] if notes else ''}"
        rows.append(frame_row(images[t], gt[t], student[t], None if teacher is None else teacher[t],
                              None if coords is None else coords[t], None if labels is None else labels[t],
                              note.strip(": "), panel_size, mean, std))
    height = panel_size + title_height(panel_size)
    picture = Image.new("RGB", (panel_size * len(rows[0]), height * len(rows)))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            picture.paste(panel, (c * panel_size, r * height))
    return picture


def wandb_overlays(outputs: Mapping[str, Any], n: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> tuple[list[np.ndarray], list[dict], list[str]]:
    """Per frame of the first ``n`` samples (at most ``MAX_OVERLAYS``): the RGB frame, the ``masks=`` dict of
    ``wandb.Image`` (ground truth, student, teacher; each switchable in the W&B UI) and a caption."""
    images, gt, student = outputs["vis_images"], outputs["vis_gt"], outputs["vis_student"]
    teacher = outputs.get("vis_teacher")
    if images.ndim == 4:
        images = images[:, None]
        gt, student = gt[:, None], student[:, None]
        teacher = None if teacher is None else teacher[:, None]
    frames, masks, captions = [], [], []
    for i in range(n):
        for t in range(images.shape[1]):
            if len(frames) == MAX_OVERLAYS:
                return frames, masks, captions
            layers = {"ground_truth": gt[i, t].bool(), "student": student[i, t] > 0}
            if teacher is not None:
                layers["teacher"] = teacher[i, t] > 0
            frames.append(denormalise(images[i, t], mean, std).permute(1, 2, 0).numpy())
            masks.append({name: {"mask_data": m.detach().cpu().numpy().astype(np.uint8),
                                 "class_labels": {1: name.replace("_", " ")}} for name, m in layers.items()})
            captions.append(f"sample {i} frame {t}")
    return frames, masks, captions


class MaskPictures(Callback):
    """Draws the ``vis_*`` outputs of the training step every ``every_n_steps`` steps (see module docstring).

    Args:
        every_n_steps: draw when the step at batch start is a multiple of it (and the vis keys are present).
        max_images: at most this many samples per drawing.
        panel_size: side of each panel, pixels.
        key: logger key (wandb / TensorBoard).
        mean / std: the normalisation of ``vis_images``.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 4, panel_size: int = 256,
                 key: str = "train/mask_pictures", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if every_n_steps < 1 or max_images < 1:
            raise ValueError(f"every_n_steps and max_images must be >= 1, got {every_n_steps}, {max_images}")
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.panel_size = panel_size
        self.key = key
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._step = 0
        self._last_drawn: int | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = self._step
        if not trainer.is_global_zero or step % self.every_n_steps != 0 or step == self._last_drawn:
            return
        if not isinstance(outputs, Mapping) or outputs.get("vis_images") is None:
            return
        pictures = self.draw(outputs)
        if pictures:
            self.write(trainer, pictures, step, outputs)
            self._last_drawn = step

    def draw(self, outputs: Mapping[str, Any]) -> list[Image.Image]:
        """One picture per sample from the ``vis_*`` outputs, at most ``max_images``."""
        images, gt, student = outputs["vis_images"], outputs["vis_gt"], outputs["vis_student"]
        teacher, coords, labels = (outputs.get(k) for k in ("vis_teacher", "vis_point_coords", "vis_point_labels"))
        notes = outputs.get("vis_notes")
        n = min(self.max_images, images.shape[0])
        return [sample_picture(images[i], gt[i], student[i], None if teacher is None else teacher[i],
                               self.panel_size, self.mean, self.std, None if coords is None else coords[i],
                               None if labels is None else labels[i], None if notes is None else notes[i])
                for i in range(n)]

    def write(self, trainer: pl.Trainer, pictures: list[Image.Image], step: int,
              outputs: Mapping[str, Any] | None = None) -> list[Path]:
        """Send the pictures to wandb / TensorBoard loggers, else write PNGs; returns the PNG paths written."""
        shown = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=pictures, step=step,
                                 caption=[f"step {step} sample {i}" for i in range(len(pictures))])
                if outputs is not None:
                    frames, masks, captions = wandb_overlays(outputs, len(pictures), self.mean, self.std)
                    logger.log_image(key=f"{self.key}_overlays", images=frames, step=step, masks=masks,
                                     caption=captions)
                shown = True
            elif isinstance(logger, TensorBoardLogger):
                for i, pic in enumerate(pictures):
                    logger.experiment.add_image(f"{self.key}/{i}", np.asarray(pic), step, dataformats="HWC")
                shown = True
        if shown:
            return []
        # trainer.log_dir is a collective (it broadcasts from rank 0) and only rank 0 gets here: under DDP it
        # deadlocked the next step, so read the first logger's directory locally instead
        logger = trainer.loggers[0] if trainer.loggers else None
        out_dir = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir) / "mask_pictures"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, pic in enumerate(pictures):
            path = out_dir / f"step_{step:07d}_{i}.png"
            pic.save(path)
            paths.append(path)
        return paths
