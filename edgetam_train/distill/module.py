"""Distillation LightningModule: L = L_task + λ_F·MSE(F16_teacher, F16_student) + λ_M·MSE(F_M_teacher, F_M_student).

Stage 1 (images, λ_M = 0): the student segments every sampled mask of each image through 1 + 7 prompted decoder
passes; the frozen teacher only supplies F16 (and, for the mask pictures, its own masks).
Stage 2 (clips, λ_M = 1): conditioning frames are prompted, correction clicks land on 1–2 frames, every other frame
is segmented from memory; the teacher replays the student's prompts with its own memory bank and supplies F16 and F_M
(``prompting.plan_clip`` / ``run_clip``). Images are clips of one frame, so both stages run the same step.

Logged every step: ``train/loss`` and each term (``train/loss_task``, ``loss_f16``, ``loss_fm``, ``loss_mask``,
``loss_dice``, ``loss_iou``, ``loss_class``), ``train/num_objects``, and the running totals of bad samples the loaders
skipped, ``data/skipped`` and ``data/skipped_<reason>`` (summed over steps and ranks, kept across resume), and
``train/nonfinite_steps``: steps skipped (no update) because a loss term was NaN/inf
(:mod:`edgetam_train.distill.nonfinite`).
Every training step returns ``{"loss": ..., "step": ClipStepOutput}`` (:mod:`edgetam_train.distill.step_output`):
callbacks such as ``MaskPictures`` draw from what the step computed; the module itself draws nothing.
Validation (``data.val``, every ``trainer.val_check_interval`` batches) logs ``val/J&F``, ``val/J``, ``val/F``,
``val/mIoU_1click`` and ``val/skipped`` (videos / images with a bad file) (:meth:`DistillationModule.validation_step`).

The teacher is kept outside the registered module tree (see :meth:`DistillationModule.__init__`), so it is never in
the optimizer, never wrapped by DDP and never in a saved checkpoint: a checkpoint holds ``student.<official key>``
tensors only (a LoRA run's: the trained ones and a reference to ``model.init_from``, :mod:`edgetam_train.distill.lora`)
and :func:`edgetam_train.models.checkpoint.read_state_dict` reads it back for resume and export.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from edgetam_train.data.skips import REASONS
from edgetam_train.distill.efficiency import apply_activation_checkpointing, compile_student
from edgetam_train.distill.freeze import freeze as freeze_modules
from edgetam_train.distill.freeze import keep_frozen_in_eval, trainable_summary
from edgetam_train.distill.lora import keep_batchnorm_eval, lora_base, restore_lora, save_lora, setup_lora
from edgetam_train.distill.losses import DistillationLoss, sum_loss_dicts
from edgetam_train.distill.nonfinite import DEFAULT_MAX_CONSECUTIVE_NONFINITE, NonFiniteGuard, zero_loss
from edgetam_train.distill.optim_select import describe, make_optimizer, make_scheduler
from edgetam_train.distill.prompting import PromptConfig, plan_clip, run_clip
from edgetam_train.distill.step_output import ClipStepOutput
from edgetam_train.distill.teacher import ClipReplay, Teacher, TeacherTargets, memory_features
from edgetam_train.distributed import all_reduce_sum, world_size
from edgetam_train.eval.validation import ValScores, describe_skipped, one_click_ious, score_video, track_video
from edgetam_train.models.build import architecture_difference
from edgetam_train.models.checkpoint import CheckpointMismatchError, add_arch_record, check_state_dict, read_state_dict
from edgetam_train.models.sam2_model import SAM2Model

log = logging.getLogger(__name__)
# the column naming the optimiser step a validation scored (read by callbacks/loss_curve.py)
VAL_STEP = "val_step"

# skip reasons logged as data/skipped_<reason>; a reason outside data.skips.REASONS is counted as "other"
SKIP_KEYS: tuple[str, ...] = REASONS + ("other",)



def validation_summary(logged: dict[str, Any], counts: dict[str, Any]) -> str:
    """``val/mIoU_1click=0.7124 val/skipped=0.0000 (13 masks)``: the logged scores and the counts of what was scored
    (videos' objects, images' masks), each only when that kind was validated ("0 objects" on image data read as a
    bug); skipped items only when there were any."""
    counted = [(int(counts[what]), what) for what in ("objects", "masks", "skipped")]
    parts = [f"{n} {what}" for n, what in counted if n > 0]
    scores = " ".join(f"{k}={float(v):.4f}" for k, v in logged.items() if k != "val/skipped")
    return f"{scores} ({', '.join(parts) or 'nothing scored'})"

class DistillationModule(pl.LightningModule):
    """Student EdgeTAM trained from ground truth and a frozen SAM 2.1 teacher.

    Args:
        student: the model being trained.
        teacher: supplies the distillation targets (:mod:`edgetam_train.distill.teacher`: the live
            ``FrozenTeacher`` or a ``CachedTeacher`` reading F16 from the batch); None trains on the task loss only.
        loss: combines the task loss and the feature terms (weights λ_F, λ_M).
        prompts: prompt-simulation settings (the config builds the ``PromptConfig``); None: its defaults.
        optimizer / scheduler: ``_partial_`` targets (:mod:`edgetam_train.distill.optim_select`); None: our
            optimiser with its defaults / a constant learning rate.
        init_from: a checkpoint (official or training) whose weights initialise the student (student keys only);
            None or ``"none"`` (no checkpoint, on purpose: what stage 2 must say to start without one) keep the
            student's own init.
        max_consecutive_nonfinite: a step whose loss (or any loss term) is NaN/inf on any rank is skipped (no
            optimizer update) and counted (``train/nonfinite_steps``); this many skipped steps in a row stop the run
            with an error naming the step and the loss terms (:mod:`edgetam_train.distill.nonfinite`). None: skip
            forever, never stop.
        freeze_batchnorm: keep the student's BatchNorm layers in eval mode while training (running statistics used
            and never updated); ``debug=identity`` sets it so that student and teacher compute the same function.
        freeze: module-name prefixes of the student to freeze (``model.freeze``, :mod:`edgetam_train.distill.freeze`):
            no gradients, not in the optimizer, in eval mode for the whole run.
        activation_checkpointing / compile: memory and speed switches of the step
            (:mod:`edgetam_train.distill.efficiency`: none / heads / full; false / true / encoder / student).
        lora: ``model.lora`` (:mod:`edgetam_train.distill.lora`; None or rank 0: off): peft LoRA adapters on the
            chosen linears; only they and ``lora.heads`` train.
    """

    def __init__(self, student: SAM2Model, teacher: Teacher | None, loss: DistillationLoss,
                 prompts: PromptConfig | None = None, optimizer: Callable | None = None,
                 scheduler: Callable | None = None, init_from: str | None = None,
                 max_consecutive_nonfinite: int | None = DEFAULT_MAX_CONSECUTIVE_NONFINITE,
                 freeze_batchnorm: bool = False, freeze: Sequence[str] | None = None,
                 activation_checkpointing: str | bool | None = None, compile: str | bool | None = None,
                 lora: Mapping[str, Any] | None = None) -> None:
        if prompts is not None and not isinstance(prompts, PromptConfig):
            raise TypeError(f"model.prompts: expected a PromptConfig (_target_: "
                            f"edgetam_train.distill.prompting.PromptConfig), got {type(prompts).__name__}")
        if max_consecutive_nonfinite is not None and int(max_consecutive_nonfinite) < 1:
            raise ValueError(f"model.max_consecutive_nonfinite={max_consecutive_nonfinite}: expected an integer "
                             f">= 1 (or null to never stop on non-finite losses)")
        # save_hyperparameters reads these locals: it records plain dicts (weights_only-loadable), not the partials
        optimizer_spec, optimizer = optimizer, describe(optimizer)
        scheduler_spec, scheduler = scheduler, describe(scheduler)
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher", "loss", "prompts", "lora"])
        self.student = student
        # not registered as a submodule: no optimizer, no DDP, no checkpoint; moved to the device in setup()
        object.__setattr__(self, "teacher", teacher)
        self.loss = loss
        self.prompts = prompts if prompts is not None else PromptConfig()
        # the prompt settings as a plain record (weights_only-loadable checkpoints), next to the other arguments
        self.hparams["prompts"] = dataclasses.asdict(self.prompts)
        self.optimizer_spec, self.scheduler_spec = optimizer_spec, scheduler_spec
        self.max_consecutive_nonfinite = None if max_consecutive_nonfinite is None else int(max_consecutive_nonfinite)
        self.freeze_batchnorm = freeze_batchnorm
        self.skip_totals = dict.fromkeys(SKIP_KEYS, 0)  # bad samples skipped so far, all ranks; saved in checkpoints
        self.nonfinite = NonFiniteGuard()  # NaN/inf-loss steps skipped (max_consecutive_nonfinite)
        self.val_scores = ValScores()  # validation sums and counts (no persistent state: not in checkpoints)
        if teacher is not None and teacher.image_size is not None and teacher.image_size != student.image_size:
            raise ValueError(f"teacher image_size {teacher.image_size} != student image_size "
                             f"{student.image_size}: both must see the same images (set both model.*.image_size)")
        if init_from and str(init_from).strip().lower() != "none":
            sd = read_state_dict(init_from)
            other = architecture_difference(student, sd, f"model.init_from={init_from}")
            if other:  # one line naming both, not hundreds of missing keys
                raise CheckpointMismatchError(other)
            check_state_dict(student, sd, str(init_from))
            student.load_state_dict(sd)
            log.info("student initialised from %s", init_from)
        self.frozen_modules = freeze_modules(student, freeze)  # after init_from: the loaded tensors stay as loaded
        if freeze:
            log.info("frozen (eval mode, not optimised): %s; %d of %d student parameters train",
                     ", ".join(map(str, freeze)), *trainable_summary(student))
        self.lora_spec = setup_lora(student, lora, freeze)  # after freeze: no adapters in frozen modules
        self.hparams["lora"] = dataclasses.asdict(self.lora_spec) if self.lora_spec else None
        self.lora_base = lora_base(self.lora_spec, init_from)  # checkpoints refer to it instead of holding it
        if teacher is not None:
            teacher.bind_student(student)
        apply_activation_checkpointing(student, loss.task_loss, activation_checkpointing)
        compile_student(student, compile)

    def on_train_start(self) -> None:
        """Lightning does not call ``train()`` when fitting starts (modules are built in training mode)."""
        self._keep_eval_parts()

    def _keep_eval_parts(self) -> None:
        """Frozen modules (``model.freeze``) and, with ``freeze_batchnorm``, every student BatchNorm stay in eval
        mode."""
        keep_frozen_in_eval(self.student, getattr(self, "frozen_modules", ()))
        if getattr(self, "lora_spec", None) is not None:
            keep_batchnorm_eval(self.student)
        if getattr(self, "freeze_batchnorm", False):
            for m in self.student.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> DistillationModule:
        """``nn.Module.train``, except that frozen modules and (``freeze_batchnorm``) BatchNorm stay in eval mode."""
        super().train(mode)
        if mode:
            self._keep_eval_parts()
        return self

    def on_fit_start(self) -> None:
        """Move the teacher (not a registered submodule, so Lightning does not) to the student's device.

        Only fitting uses the teacher, and ``on_fit_start`` is the first hook after the strategy moved the module to
        its device (``setup`` runs before that, still on the CPU).
        """
        if self.teacher is not None:
            self.teacher.to(self.device)

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.optimizer_spec, self.student)
        trainer = self._trainer  # None in a bare loop (``self.trainer`` would raise): then only "constant" works
        total = trainer.max_steps if trainer is not None and trainer.max_steps > 0 else None
        scheduler = make_scheduler(self.scheduler_spec, optimizer, total)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _global_num_objects(self, n: int) -> float:
        """Objects per rank averaged over ranks (SAM 2's loss normaliser), at least 1."""
        if world_size() == 1:
            return max(float(n), 1.0)
        t = all_reduce_sum(torch.tensor(float(n), device=self.device))
        return max(float(t) / world_size(), 1.0)

    # ------------------------------------------------------------------ the step
    @staticmethod
    def as_clip(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """A batch as clips: images (B, T, 3, S, S), masks (T, N, 1, S, S) bool, obj_to_img (N,).

        Image batches (images (B, 3, S, S), masks (N, S, S)) are clips of one frame.
        """
        images, masks = batch["images"], batch["masks"]
        if images.ndim == 4:
            images, masks = images[:, None], masks[None]
        return images, masks.unsqueeze(2), batch["obj_to_img"]

    def clip_step(self, batch: dict[str, Any]) -> ClipStepOutput:
        """Loss on a batch of clips (images are 1-frame clips): the loss terms and what the passes produced.

        L = Σ_frames L_task + λ_F·MSE(F16_t, F16_s) over all frames + λ_M·MSE(F_M_t, F_M_s) over frames that read
        memory. The teacher replays the clip through memory only when λ_M > 0 (stage 1 needs F16 alone).
        """
        images, gt, obj_to_img = self.as_clip(batch)
        b, t = images.shape[:2]
        frames = images.transpose(0, 1).reshape(t * b, *images.shape[2:])  # frame-major: row = frame * B + image
        rows = [i * b + obj_to_img for i in range(t)]
        feats = self.student.encode_image(frames)
        plan = plan_clip(t, self.prompts)
        records = run_clip(self.student, [feats.select(r) for r in rows], gt, plan, self.prompts)
        targets = TeacherTargets()
        if self.teacher is not None:
            replay = ClipReplay(frames, rows, gt, plan, self.prompts, records)
            targets = self.teacher.targets(batch, replay, with_memory=self.loss.lambda_fm > 0 and t > 1)
        num_objects = self._global_num_objects(gt.shape[1])
        task = sum_loss_dicts(self.loss.task_loss(r.steps, gt[r.frame_idx], num_objects) for r in records)
        with_fm = targets.records is not None
        losses = self.loss(task_losses=task, f16_student=feats.f16, f16_teacher=targets.f16,
                           fm_student=memory_features(records) if with_fm else None, fm_teacher=targets.fm)
        return ClipStepOutput(losses=losses, clip_images=images, clip_gt=gt, obj_to_img=obj_to_img, plan=plan,
                              records=records, teacher_records=targets.records)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``{"loss": scalar to back-propagate, "step": ClipStepOutput}``; on a skipped (non-finite) step the loss is
        :func:`zero_loss` and ``step`` still says what the step computed (``outputs`` of ``on_train_batch_end``)."""
        out = self.clip_step(batch)
        losses = out.losses
        bs = batch["images"].shape[0]
        self.log("train/loss", losses["loss"].detach(), batch_size=bs, prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=bs)
        self.log("train/num_objects", float(out.num_objects), batch_size=bs)
        self._log_skips(batch.get("skips"), bs)
        # the same decision on every rank; raises after max_consecutive_nonfinite skips in a row
        skip = self.nonfinite.check(losses, self.global_step, self.max_consecutive_nonfinite)
        self.log("train/nonfinite_steps", float(self.nonfinite.total), batch_size=bs)
        # a skipped step back-propagates zero gradients, dropped before the optimizer step (on_before_optimizer_step)
        return {"loss": zero_loss(self.parameters()) if skip else losses["loss"], "step": out}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """No update from a batch whose loss was non-finite (:mod:`edgetam_train.distill.nonfinite`)."""
        self.nonfinite.drop_grads(optimizer)

    def _log_skips(self, skips: Mapping[str, int] | None, batch_size: int) -> None:
        """Add the batch's skipped samples (``batch["skips"]``: reason -> count, from the collate function) to the
        running totals and log them: ``data/skipped`` every step, ``data/skipped_<reason>`` once non-zero.

        The totals are summed over steps and, under DDP, over ranks (one small all-reduce per step, which every rank
        makes, so all ranks log the same keys); they survive resume through the checkpoint.
        """
        counts = [0] * len(SKIP_KEYS)
        for reason, n in (skips or {}).items():
            counts[SKIP_KEYS.index(reason) if reason in SKIP_KEYS else -1] += int(n)
        if world_size() > 1:
            counts = all_reduce_sum(torch.tensor(counts, dtype=torch.int64, device=self.device)).tolist()
        for key, n in zip(SKIP_KEYS, counts):
            self.skip_totals[key] += n
        self.log("data/skipped", float(sum(self.skip_totals.values())), batch_size=batch_size)
        for key, n in self.skip_totals.items():
            if n:
                self.log(f"data/skipped_{key}", float(n), batch_size=batch_size)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score one ``data.val`` item (:mod:`edgetam_train.data.datasets.val`) with the student, add it to
        ``val_scores``.

        VOS video: every object prompted with its first-frame GT mask and tracked (:func:`track_video`), J and F
        per object (DAVIS 2017). Image: 1-click IoU per mask. Padding items (equal batch counts on all ranks) add
        nothing.
        """
        kind = batch.get("kind")
        if kind == "vos":
            pred = track_video(self.student, batch["frames"], batch["labels"][0])
            scores = score_video(batch, pred)
            self.val_scores.update(j=[s.j for s in scores], f=[s.f for s in scores])
        elif kind == "miou":
            self.val_scores.update(ious=one_click_ious(self.student, batch["image"], batch["masks"]))
        elif kind == "skipped":  # a bad file: counted (val/skipped) and named, validation goes on
            log.warning(describe_skipped(batch))
            self.val_scores.update(skipped=1)
        elif kind != "padding":
            raise ValueError(f"validation batch of kind {kind!r}: expected a data.val item (vos, miou or padding) "
                             f"from edgetam_train.data.datasets.val")

    def on_validation_epoch_end(self) -> None:
        """Log ``val/J&F``, ``val/J``, ``val/F`` (when videos were scored) and ``val/mIoU_1click`` (when images were).

        ``compute`` sums the sums and counts over ranks (every rank calls it), so every rank logs the same exact
        dataset means; ``sync_dist`` then only averages equal values (and keeps Lightning from warning).
        """
        values = self.val_scores.compute()
        self.val_scores.reset()
        logged = {}
        if values["objects"] > 0:
            logged.update({f"val/{k}": values[k] for k in ("J&F", "J", "F")})
        if values["masks"] > 0:
            logged["val/mIoU_1click"] = values["mIoU_1click"]
        if logged or values["skipped"] > 0:
            logged["val/skipped"] = values["skipped"]
        for name, value in logged.items():
            self.log(name, value.float(), sync_dist=True)
        if logged:  # the step the weights were validated at: Lightning's logger step is one less (callbacks/loss_curve)
            self.log(VAL_STEP, float(self.global_step), sync_dist=False)
        if logged and self.global_rank == 0:
            log.info("validation at step %d: %s", self.global_step, validation_summary(logged, values))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only student weights (the loss has no parameters; the teacher is never saved); add the skip totals."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}
        checkpoint["data_skips"] = dict(self.skip_totals)
        checkpoint["nonfinite_steps"] = self.nonfinite.state_dict()
        add_arch_record(checkpoint, self.student)  # the student's architecture (models/arch_record.py)
        if self.lora_spec is not None:  # the adapters apart; with init_from only what trains (distill/lora.py)
            trainable = {n for n, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
            save_lora(checkpoint, self.lora_spec, trainable, self.lora_base)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the skip totals (``data/skipped*`` keep counting from where the run stopped); a LoRA checkpoint's
        adapters go back under peft's key names and its frozen tensors come from ``model.init_from`` (checked to be
        the file it was trained over) before Lightning loads the state_dict."""
        restore_lora(checkpoint, self.state_dict(), getattr(self, "lora_base", None))
        for key, n in checkpoint.get("data_skips", {}).items():
            if key in self.skip_totals:
                self.skip_totals[key] = int(n)
        self.nonfinite.load_state_dict(checkpoint.get("nonfinite_steps", {}))
