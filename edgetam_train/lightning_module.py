"""Distillation LightningModule: L = L_task + λ_F·MSE(F16_teacher, F16_student) [+ λ_M·MSE(F_M) on video].

Stage 1 (images): the student segments every sampled mask of each image through 1 + 7 prompted decoder passes
(``prompting.image_prompt_steps``); the frozen teacher only supplies F16 (and, for the mask pictures, its own masks).

The teacher is kept outside the registered module tree (see :meth:`DistillationModule.__init__`), so it is never in
the optimizer, never wrapped by DDP and never in a saved checkpoint: a checkpoint holds ``student.<official key>``
tensors only and :func:`edgetam_train.models.checkpoint.read_state_dict` reads it back for resume and export.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor

from .losses import DistillationLoss
from .models.checkpoint import check_state_dict, read_state_dict
from .models.sam2_model import SAM2Model
from .optim import build_optimizer, build_scheduler
from .prompting import PromptConfig, image_prompt_steps
from .teacher import FrozenTeacher

log = logging.getLogger(__name__)


class DistillationModule(pl.LightningModule):
    """Student EdgeTAM trained from ground truth and a frozen SAM 2.1 teacher.

    Args:
        student: the model being trained.
        teacher: frozen teacher (None trains without feature distillation).
        loss: combines the task loss and the feature terms (weights λ_F, λ_M).
        prompts: prompt-simulation settings.
        optimizer / scheduler: dicts for :func:`edgetam_train.optim.build_optimizer` / ``build_scheduler``.
        init_from: a checkpoint (official or training) whose weights initialise the student (student keys only).
        vis_every_n_steps: how often the step returns mask-picture tensors for ``MaskPicturesCallback``.
    """

    def __init__(self, student: SAM2Model, teacher: FrozenTeacher | None, loss: DistillationLoss,
                 prompts: PromptConfig | dict | None = None, optimizer: dict | None = None,
                 scheduler: dict | None = None, init_from: str | None = None, vis_every_n_steps: int = 500) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "loss"])
        self.student = student
        # not registered as a submodule: no optimizer, no DDP, no checkpoint; moved to the device in setup()
        object.__setattr__(self, "teacher", teacher)
        self.loss = loss
        self.prompts = prompts if isinstance(prompts, PromptConfig) else PromptConfig(**(prompts or {}))
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})
        self.vis_every_n_steps = vis_every_n_steps
        if teacher is not None and teacher.net.image_size != student.image_size:
            raise ValueError(f"teacher image_size {teacher.net.image_size} != student image_size "
                             f"{student.image_size}: both must see the same images (set both model.*.image_size)")
        if init_from:
            sd = read_state_dict(init_from)
            check_state_dict(student, sd, str(init_from))
            student.load_state_dict(sd)
            log.info("student initialised from %s", init_from)

    # ------------------------------------------------------------------ plumbing
    def setup(self, stage: str) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.student, **self.optimizer_cfg)
        if not self.scheduler_cfg:
            return optimizer
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None
        scheduler = build_scheduler(optimizer, total_steps=total, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _global_num_objects(self, n: int) -> float:
        """Objects per rank averaged over ranks (SAM 2's loss normaliser), at least 1."""
        t = torch.tensor(float(n), device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
            t = t / dist.get_world_size()
        return max(float(t), 1.0)

    # ------------------------------------------------------------------ the step
    def image_step(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Stage-1 loss on a batch of images: returns (loss terms, tensors for the mask pictures)."""
        images: Tensor = batch["images"]
        gt: Tensor = batch["masks"].unsqueeze(1)  # (N, 1, S, S) bool, one row per object
        obj_to_img: Tensor = batch["obj_to_img"]
        feats = self.student.encode_image(images)
        f16_teacher = self.teacher.encode_image(images).f16 if self.teacher is not None else None
        steps = image_prompt_steps(self.student, feats.select(obj_to_img), gt, self.prompts)
        losses = self.loss(steps=steps, targets=gt, num_objects=self._global_num_objects(gt.shape[0]),
                           f16_student=feats.f16, f16_teacher=f16_teacher)
        return losses, {"steps": steps, "gt": gt, "obj_to_img": obj_to_img}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        losses, aux = self.image_step(batch)
        bs = batch["images"].shape[0]
        self.log("train/loss", losses["loss"].detach(), batch_size=bs, prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=bs)
        self.log("train/num_objects", float(aux["gt"].shape[0]), batch_size=bs)
        out: dict[str, Any] = {"loss": losses["loss"]}
        if self.vis_every_n_steps and self.global_step % self.vis_every_n_steps == 0:
            out.update(self._pictures(batch, aux))
        return out

    @torch.no_grad()
    def _pictures(self, batch: dict[str, Any], aux: dict[str, Any]) -> dict[str, Tensor | None]:
        """First object of each image: image, ground truth, student mask after the first prompt, teacher mask."""
        obj_to_img = aux["obj_to_img"]
        first = torch.stack([torch.nonzero(obj_to_img == i)[0, 0] for i in obj_to_img.unique()])
        step0 = aux["steps"][0]
        best = step0.ious[first].argmax(dim=1)
        student_low = step0.multimasks[first, best][:, None]
        size = batch["images"].shape[-1]
        up = lambda x: torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear")[:, 0]
        teacher = None
        if self.teacher is not None:
            net = self.teacher.net
            images = batch["images"][obj_to_img[first]]
            tf = net.encode_image(images)
            coords = None if step0.point_coords is None else step0.point_coords[first]
            labels = None if step0.point_labels is None else step0.point_labels[first]
            num = 0 if labels is None else labels.shape[1]
            t_out = net.decode(net.condition(tf, None), tf.high_res, coords, labels,
                               multimask_output=net.use_multimask(True, num))
            teacher = up(t_out.low_res_masks)
        return {"vis_images": batch["images"][obj_to_img[first]], "vis_gt": aux["gt"][first, 0],
                "vis_student": up(student_low), "vis_teacher": teacher}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only student weights (the loss has no parameters; the teacher is never saved)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}
