"""Pictures of predicted masks during training, readable at a glance: one row per frame, one panel per mask.

Each row is one frame (images: one row; stage-2 clips: every frame of the clip, in time order, so tracking is
visible): ``image + prompt | ground truth | student | teacher`` (the teacher panel only when a teacher answered).
Colours come from :mod:`edgetam_train.drawing` and stay the same everywhere; outlines sit on a black band so they
show on dark and light images: ground truth amber, student magenta, teacher cyan (each panel's title is written in
its colour); positive clicks green dots, negative clicks red dots (white-ringed), box prompts white rectangles.
Prediction panels carry the ground-truth outline and their IoU with the ground truth (at full resolution; 1.00 when
both are empty).

What is drawn comes from the training step's output, ``outputs["step"]`` (a
:class:`~edgetam_train.distill.step_output.ClipStepOutput`), on this callback's steps only
(:func:`step_pictures`): the first object of each image or clip on every frame, the student's (and teacher's) best
mask of the first decoder pass (the prompt on conditioning frames, memory on the others) and that pass's prompt.
Without a replayed clip the teacher decodes the first prompt on its own features (single frames only; one no-grad
teacher pass, on drawing steps only). Other steps cost nothing.

Every ``every_n_steps`` optimiser steps (counted at the start of the batch, like ``self.global_step`` inside
``training_step``) the first ``max_images`` samples are drawn and sent to the loggers: ``WandbLogger`` gets the
pictures and, per frame, a ``wandb.Image`` with the three masks as switchable overlays (``masks=``, key
``<key>_overlays``); ``TensorBoardLogger`` gets ``add_image``; with neither, PNG files are written to
``<first logger's log_dir or default_root_dir>/mask_pictures/step_XXXXXXX_i.png``. Global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont

from edgetam_train.distill.prompting import FrameRecord
from edgetam_train.distill.step_output import ClipStepOutput
from edgetam_train.drawing import (
    BOX_COLOUR,
    GT_COLOUR,
    HALO,
    STUDENT_COLOUR,
    TEACHER_COLOUR,
    Colour,
    DrawnPrompt,
    draw_masks,
    draw_prompt,
)
from edgetam_train.imaging import IMAGENET_MEAN, IMAGENET_STD, denormalise

MAX_OVERLAYS = 16  # wandb.Image overlays per drawing
PANEL_FILL = 0.4  # tint of the ground truth and prediction masks in their panels
FIRST_NOTES = {"point": "click", "box": "box", "mask": "mask prompt"}  # what prompted a conditioning frame


@dataclass
class StepPictures:
    """What one drawing shows, per sample (B samples, T frames, P prompt points, S the input side).

    Attributes:
        images: (B, T, 3, S, S) float, normalised as the model saw them.
        gt: (B, T, S, S) bool ground truth.
        student: (B, T, S, S) float student mask logits (threshold 0).
        teacher: (B, T, S, S) float teacher mask logits, or None.
        point_coords: (B, T, P, 2) x, y in input pixels, and point_labels (B, T, P) (1 positive, 0 negative, 2/3 box
            corners, -1 none), or None.
        notes: B lists of T strings (what prompted each frame: "click", "box", "mask prompt", "memory"), or None.
    """

    images: torch.Tensor
    gt: torch.Tensor
    student: torch.Tensor
    teacher: torch.Tensor | None = None
    point_coords: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    notes: list[list[str]] | None = None


def _best_masks(records: list[FrameRecord], first: torch.Tensor, size: int) -> torch.Tensor:
    """(n, T, S, S) logits: per frame (time order), the best-IoU candidate of the first decoder pass of the objects
    ``first`` (n,), upsampled to ``size``."""
    out = []
    for r in sorted(records, key=lambda r: r.frame_idx):  # records come in processing order
        step = r.steps[0]
        best = step.ious[first].argmax(dim=1)
        low = step.multimasks[first, best][:, None].float()
        out.append(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(out, dim=1)


@torch.no_grad()
def step_pictures(step: ClipStepOutput, teacher: Any = None, max_images: int | None = None) -> StepPictures:
    """The pictures of a training step: the first object of each image or clip (at most ``max_images``), every frame.

    Args:
        step: the step's output (``outputs["step"]``).
        teacher: the module's teacher (``first_prompt_masks`` answers a single frame's first prompt when the step has
            no teacher replay), or None.
        max_images: draw only the first this many samples.
    """
    obj_to_img = step.obj_to_img
    first = torch.stack([torch.nonzero(obj_to_img == i)[0, 0] for i in obj_to_img.unique()])[:max_images]
    images = step.clip_images[obj_to_img[first]].detach()  # (n, T, 3, S, S)
    size, frames = images.shape[-1], images.shape[1]
    by_frame = sorted(step.records, key=lambda r: r.frame_idx)
    prompts = [(r.steps[0].point_coords, r.steps[0].point_labels) for r in by_frame]
    width = max([0] + [c.shape[1] for c, _ in prompts if c is not None])
    coords = images.new_zeros(len(first), frames, width, 2)
    labels = torch.full((len(first), frames, width), -1, dtype=torch.long, device=images.device)
    for t, (c, lab) in enumerate(prompts):
        if c is not None:
            coords[:, t, : c.shape[1]] = c[first].float()
            labels[:, t, : c.shape[1]] = lab[first].long()
    teacher_masks = None
    if step.teacher_records is not None:
        teacher_masks = _best_masks(step.teacher_records, first, size)
    elif teacher is not None and frames == 1:
        c, lab = prompts[0]
        low = teacher.first_prompt_masks(images[:, 0], None if c is None else c[first],
                                         None if lab is None else lab[first])
        if low is not None:
            teacher_masks = F.interpolate(low.float(), size=(size, size), mode="bilinear", align_corners=False)
    plan = step.plan
    notes = [FIRST_NOTES.get(plan.first_kind, plan.first_kind) if t in plan.init_cond_frames else "memory"
             for t in range(frames)]
    return StepPictures(images=images, gt=step.clip_gt[:, first, 0].transpose(0, 1),
                        student=_best_masks(step.records, first, size), teacher=teacher_masks, point_coords=coords,
                        point_labels=labels, notes=[notes] * len(first))


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool masks; 1.0 when both are empty."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def frame_prompt(coords: torch.Tensor | None, labels: torch.Tensor | None, scale: float) -> DrawnPrompt:
    """A frame's prompt, ``coords`` (P, 2) input pixels and ``labels`` (P,) (1, 0 clicks; 2, 3 box corners; -1 none),
    as the :class:`DrawnPrompt` of a panel ``scale`` times the input size."""
    if coords is None or labels is None or labels.numel() == 0:
        return DrawnPrompt()
    xy, lab = coords.detach().float().cpu() * scale, labels.detach().cpu().long()
    corners = [xy[lab == k] for k in (2, 3)]
    box = torch.cat(corners, dim=1)[0] if len(corners[0]) == 1 and len(corners[1]) == 1 else None
    clicks = (lab == 0) | (lab == 1)
    return DrawnPrompt(xy[clicks], lab[clicks], box)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def title_height(panel_size: int) -> int:
    """Height of the title strip above each panel."""
    return max(10, panel_size // 16) + 5


def _titled(panel: torch.Tensor, title: str, colour: Colour) -> Image.Image:
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
        coords / labels: the frame's prompt, (P, 2) input pixels / (P,) (see :func:`frame_prompt`).
        note: what prompted the frame, in the first panel's title.
    """
    size = image.shape[-1]
    rgb = _resize(denormalise(image, mean, std), panel_size, "bilinear").round().clamp(0, 255).to(torch.uint8)
    gt_full = gt.detach().cpu().bool()
    gt_small = _resize(gt_full[None], panel_size, "nearest")[0] > 0
    scale = panel_size / size

    def prediction(logits: torch.Tensor, colour: Colour, who: str) -> Image.Image:
        full = logits.detach().float().cpu() > 0
        small = _resize(full[None], panel_size, "nearest")[0] > 0
        out = draw_masks(draw_masks(rgb, small[None], [colour], PANEL_FILL, width=2, halo=True), gt_small[None],
                         [GT_COLOUR], alpha=0.0, width=1, halo=True)
        return _titled(draw_prompt(out, prompt), f"{who}  IoU {iou(full, gt_full):.2f}", colour)

    prompt = frame_prompt(coords, labels, scale)
    panels = [_titled(draw_prompt(rgb, prompt), note or "image", BOX_COLOUR),
              _titled(draw_masks(rgb, gt_small[None], [GT_COLOUR], PANEL_FILL, width=2, halo=True), "ground truth",
                      GT_COLOUR),
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


def wandb_overlays(pictures: StepPictures, n: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> tuple[list[np.ndarray], list[dict], list[str]]:
    """Per frame of the first ``n`` samples (at most ``MAX_OVERLAYS``): the RGB frame, the ``masks=`` dict of
    ``wandb.Image`` (ground truth, student, teacher; each switchable in the W&B UI) and a caption."""
    p = pictures
    frames, masks, captions = [], [], []
    for i in range(n):
        for t in range(p.images.shape[1]):
            if len(frames) == MAX_OVERLAYS:
                return frames, masks, captions
            layers = {"ground_truth": p.gt[i, t].bool(), "student": p.student[i, t] > 0}
            if p.teacher is not None:
                layers["teacher"] = p.teacher[i, t] > 0
            frames.append(denormalise(p.images[i, t], mean, std).permute(1, 2, 0).numpy())
            masks.append({name: {"mask_data": m.detach().cpu().numpy().astype(np.uint8),
                                 "class_labels": {1: name.replace("_", " ")}} for name, m in layers.items()})
            captions.append(f"sample {i} frame {t}")
    return frames, masks, captions


class MaskPictures(Callback):
    """Draws the training step's masks every ``every_n_steps`` steps (see module docstring): the one setting of how
    often pictures are drawn.

    Args:
        every_n_steps: draw when the step at batch start is a multiple of it (and the step returned ``"step"``).
        max_images: at most this many samples per drawing.
        panel_size: side of each panel, pixels.
        key: logger key (wandb / TensorBoard).
        mean / std: the normalisation of the step's images.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 4, panel_size: int = 256,
                 key: str = "train/mask_pictures", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if every_n_steps < 1 or max_images < 1:
            raise ValueError(f"callbacks.mask_pictures: every_n_steps and max_images must be >= 1, got "
                             f"{every_n_steps}, {max_images} (callbacks.mask_pictures=null: no pictures)")
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
        out = outputs.get("step") if isinstance(outputs, Mapping) else None
        if not isinstance(out, ClipStepOutput):
            return
        pictures = step_pictures(out, getattr(pl_module, "teacher", None), self.max_images)
        drawn = self.draw(pictures)
        if drawn:
            self.write(trainer, drawn, step, pictures)
            self._last_drawn = step

    def draw(self, pictures: StepPictures) -> list[Image.Image]:
        """One picture per sample, at most ``max_images``."""
        p = pictures
        n = min(self.max_images, p.images.shape[0])
        return [sample_picture(p.images[i], p.gt[i], p.student[i], None if p.teacher is None else p.teacher[i],
                               self.panel_size, self.mean, self.std,
                               None if p.point_coords is None else p.point_coords[i],
                               None if p.point_labels is None else p.point_labels[i],
                               None if p.notes is None else p.notes[i])
                for i in range(n)]

    def write(self, trainer: pl.Trainer, pictures: list[Image.Image], step: int,
              source: StepPictures | None = None) -> list[Path]:
        """Send the pictures to wandb / TensorBoard loggers (wandb also gets the per-frame overlays of ``source``),
        else write PNGs; returns the PNG paths written."""
        shown = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=pictures, step=step,
                                 caption=[f"step {step} sample {i}" for i in range(len(pictures))])
                if source is not None:
                    frames, masks, captions = wandb_overlays(source, len(pictures), self.mean, self.std)
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
