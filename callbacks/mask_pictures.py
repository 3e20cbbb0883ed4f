"""Pictures of predicted masks during training: image | ground truth | student | teacher, one picture per sample.

The LightningModule's ``training_step`` returns, on the steps it chooses (``vis_every_n_steps``; keep it equal to this
callback's ``every_n_steps``), extra keys next to ``loss``:

- ``vis_images``  (B, 3, S, S) float, ImageNet-normalised;
- ``vis_gt``      (B, S, S) bool ground truth;
- ``vis_student`` (B, S, S) float student mask logits (threshold 0);
- ``vis_teacher`` (B, S, S) float teacher mask logits, or None.

Every ``every_n_steps`` optimiser steps (counted at the start of the batch, like ``self.global_step`` inside
``training_step``) the first ``max_images`` samples are drawn and sent to the loggers: ``WandbLogger`` gets
``wandb.Image``s through ``log_image``; ``TensorBoardLogger`` gets ``add_image``; with neither, PNG files are written
to ``<trainer.log_dir or default_root_dir>/mask_pictures/step_XXXXXXX_i.png``. Global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw

from edgetam_train.data.transforms import IMAGENET_MEAN, IMAGENET_STD

GT_COLOUR = (0, 200, 0)
STUDENT_COLOUR = (230, 40, 40)
TEACHER_COLOUR = (40, 110, 240)


def denormalise(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """(3, H, W) normalised float tensor → (H, W, 3) uint8 RGB."""
    x = image.detach().float().cpu()
    x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def overlay(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    """Blend ``colour`` into (H, W, 3) uint8 ``rgb`` where the (H, W) bool ``mask`` is set; returns a new array."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the (H, W) bool ``mask`` that have a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _panel(rgb: np.ndarray, title: str) -> Image.Image:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, img.width, 14), fill=(0, 0, 0))
    draw.text((3, 1), title, fill=(255, 255, 255))
    return img


def sample_picture(image: torch.Tensor, gt: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor | None,
                   panel_size: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Image.Image:
    """One row of panels: image | GT overlay | student overlay | teacher overlay (or a black "no teacher" panel).

    Student and teacher panels carry the GT outline in white and their IoU with the GT (at full resolution) in the
    title.

    Args:
        image: (3, S, S) normalised; gt: (S, S) bool; student / teacher: (S, S) logits (teacher may be None).
        panel_size: side of each square panel in the picture.
    Returns:
        PIL RGB image of size (4·panel_size, panel_size).
    """
    rgb = np.asarray(Image.fromarray(denormalise(image, mean, std)).resize((panel_size, panel_size),
                                                                          Image.Resampling.BILINEAR))
    gt_full = gt.detach().cpu().numpy().astype(bool)
    gt_small = _resize_mask(gt_full, panel_size)
    edge = _outline(gt_small)

    def prediction_panel(logits: torch.Tensor, colour: tuple[int, int, int], who: str) -> Image.Image:
        full = (logits.detach().float().cpu() > 0).numpy()
        out = overlay(rgb, _resize_mask(full, panel_size), colour)
        out[edge] = 255
        return _panel(out, f"{who} IoU {_iou(full, gt_full):.2f}")

    panels = [_panel(rgb.copy(), "image"), _panel(overlay(rgb, gt_small, GT_COLOUR), "ground truth"),
              prediction_panel(student, STUDENT_COLOUR, "student")]
    if teacher is not None:
        panels.append(prediction_panel(teacher, TEACHER_COLOUR, "teacher"))
    else:
        panels.append(_panel(np.zeros_like(rgb), "no teacher"))
    picture = Image.new("RGB", (panel_size * len(panels), panel_size))
    for i, p in enumerate(panels):
        picture.paste(p, (i * panel_size, 0))
    return picture


class MaskPicturesCallback(Callback):
    """Draws the ``vis_*`` tensors of the training-step output every ``every_n_steps`` steps (see module docstring).

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
            self.write(trainer, pictures, step)
            self._last_drawn = step

    def draw(self, outputs: Mapping[str, Any]) -> list[Image.Image]:
        """One picture per sample from the ``vis_*`` tensors, at most ``max_images``."""
        images, gt, student = outputs["vis_images"], outputs["vis_gt"], outputs["vis_student"]
        teacher = outputs.get("vis_teacher")
        n = min(self.max_images, images.shape[0])
        return [sample_picture(images[i], gt[i], student[i], None if teacher is None else teacher[i],
                               self.panel_size, self.mean, self.std) for i in range(n)]

    def write(self, trainer: pl.Trainer, pictures: list[Image.Image], step: int) -> list[Path]:
        """Send the pictures to wandb / TensorBoard loggers, else write PNGs; returns the PNG paths written."""
        shown = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=pictures, step=step,
                                 caption=[f"step {step} sample {i}" for i in range(len(pictures))])
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
