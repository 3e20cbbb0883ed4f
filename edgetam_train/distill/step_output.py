"""What one training step of :class:`~edgetam_train.distill.module.DistillationModule` produced, typed.

``DistillationModule.clip_step`` returns a :class:`ClipStepOutput`; ``training_step`` hands it to Lightning as
``{"loss": <scalar to back-propagate>, "step": ClipStepOutput}`` on every step, so callbacks read what the step
computed (``on_train_batch_end``'s ``outputs["step"]``) instead of the module doing callback work. Nothing here is
computed for a callback: the fields are the step's own tensors (``MaskPictures`` draws from them on its steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from edgetam_train.distill.prompting import ClipPlan, FrameRecord


@dataclass
class ClipStepOutput:
    """One batch of clips (images are 1-frame clips) after the student's (and teacher's) passes.

    B clips, T frames, N objects, S the input side.

    Attributes:
        losses: the loss terms of :class:`~edgetam_train.distill.losses.DistillationLoss` (``loss`` the weighted
            total, still attached to the graph; ``loss_task``, ``loss_f16``, ``loss_fm``, ``loss_mask``, ...).
        clip_images: (B, T, 3, S, S) float, normalised as the model saw them.
        clip_gt: (T, N, 1, S, S) bool ground truth per frame and object.
        obj_to_img: (N,) long, the clip each object belongs to.
        plan: the clip's conditioning / corrected frames and first prompt type.
        records: the student's :class:`FrameRecord` per frame, in processing order (``steps[0]``: the first decoder
            pass of the frame, with its prompt).
        teacher_records: the teacher's replay of the clip (same layout), or None when it did not replay (no teacher,
            a single frame, or λ_M = 0).
    """

    losses: dict[str, Tensor]
    clip_images: Tensor
    clip_gt: Tensor
    obj_to_img: Tensor
    plan: ClipPlan
    records: list[FrameRecord]
    teacher_records: list[FrameRecord] | None = None

    @property
    def num_objects(self) -> int:
        """N, the objects of the batch (on this rank)."""
        return int(self.clip_gt.shape[1])
