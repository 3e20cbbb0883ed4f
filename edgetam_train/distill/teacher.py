"""Teacher targets behind one interface: what the distillation loss compares the student with.

A teacher turns a training batch (and the student's own pass over it, for replay) into :class:`TeacherTargets`:
F16 for every frame and, for clips whose frames read memory, the teacher's replay records (their F_M). Two kinds:

- :class:`FrozenTeacher` (live): a frozen SAM 2.1 model encodes the frames and replays the student's prompts with its
  own memory bank (config ``model/teacher=frozen``, the default), under SAM 2's training rules like the student
  (``models/step_rules.py``) but in ``eval()`` (dropout off);
- :class:`StudentCopyTeacher`: the student's own architecture with the student's current weights (config
  ``model/teacher=student_copy``, used by ``debug=identity``): every feature loss must be ~0, which checks that the
  teacher's replay computes exactly what the student's step computes;
- :class:`CachedTeacher`: F16 was computed ahead of training by ``edgetam-cache-teacher`` and arrives in the batch
  (``batch["teacher_f16"]``, read by the SA-1B loader from ``data.teacher_cache``); stage 1 only, no model is built
  (config ``model/teacher=cached``).

Another kind of teacher is one more :class:`Teacher` subclass and one YAML file in ``configs/model/teacher/``.
Teachers are kept out of the training module's tree (never in the optimizer, DDP or a checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgetam_train.data.teacher_cache import check_teacher_config, read_manifest
from edgetam_train.distill.prompting import ClipPlan, FrameRecord, PromptConfig, run_clip
from edgetam_train.models.checkpoint import load_checkpoint
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.models.step_rules import StepRules, rules_by_name

log = logging.getLogger(__name__)


@dataclass
class ClipReplay:
    """The student's pass over a batch of clips (images are clips of one frame), as a teacher replays it.

    frames: float (T*B, 3, S, S), frame-major (row = frame * B + image).
    rows: per frame, int64 (N,) rows of ``frames`` holding each object's image.
    gt: bool (T, N, 1, S, S) ground truth.
    plan / prompts: the clip plan and prompt settings the student used.
    records: the student's :class:`FrameRecord` per frame (prompts to replay, masks its memory was encoded from).
    """

    frames: Tensor
    rows: list[Tensor]
    gt: Tensor
    plan: ClipPlan
    prompts: PromptConfig
    records: list[FrameRecord]


def memory_features(records: list[FrameRecord] | None) -> Tensor | None:
    """F_M of the frames that read memory, stacked in processing order: (F, N, 256, S/16, S/16); None if none did."""
    if not records:
        return None
    fm = [r.pix_feat for r in records if r.read_memory]
    return torch.stack(fm) if fm else None


@dataclass
class TeacherTargets:
    """What the loss compares the student with. f16: (T*B, 256, S/16, S/16) frame-major, or None (no teacher);
    records: the teacher's replay of the clip (only when memory targets were asked for)."""

    f16: Tensor | None = None
    records: list[FrameRecord] | None = None

    @property
    def fm(self) -> Tensor | None:
        """The teacher's F_M on the frames that read memory (see :func:`memory_features`)."""
        return memory_features(self.records)


class Teacher(nn.Module):
    """Interface of every teacher: ``targets`` for the loss, ``first_prompt_masks`` for the mask pictures.

    ``image_size`` is the input side the targets were made for (None: unknown); the training module refuses a
    student of another size.
    """

    image_size: int | None = None

    def bind_student(self, student: nn.Module) -> None:
        """Called once by the training module with its student; a teacher that needs it keeps a reference."""

    def targets(self, batch: Mapping[str, Any], replay: ClipReplay, with_memory: bool) -> TeacherTargets:
        """Targets for one batch; ``with_memory``: also replay the clip through memory (stage 2, λ_M > 0)."""
        raise NotImplementedError

    def first_prompt_masks(self, images: Tensor, coords: Tensor | None, labels: Tensor | None) -> Tensor | None:
        """Low-res mask logits (n, 1, S/4, S/4) of the teacher's answer to the first prompt on ``images`` (n, 3, S, S),
        for the mask pictures; None when the teacher cannot decode (e.g. a cache)."""
        return None


class FrozenTeacher(Teacher):
    """A live, frozen :class:`SAM2Model`: ``requires_grad_(False)`` and ``eval()`` forever.

    Args:
        net: the teacher model (e.g. SAM 2.1 Hiera-B+).
        checkpoint: official ``{"model": state_dict}`` file (or training checkpoint) with its weights.
        allow_random_init: without a checkpoint, refuse to start unless this is True (then warn loudly: a random
            teacher distils noise; only for smoke tests and the quick start).
        rules: the step rules of the replay, ``"training"`` (SAM 2's, the student's; the default) or ``"inference"``
            (the predictors': binarised memory masks, past-only pointers, dynamic multimask). Only for experiments:
            under ``"inference"`` the teacher's F_M comes from another memory than the student's.
    """

    def __init__(self, net: SAM2Model, checkpoint: str | Path | None = None, allow_random_init: bool = False,
                 rules: str | StepRules = "training") -> None:
        super().__init__()
        self.net = net
        self.rules = rules_by_name(rules)
        if checkpoint:
            load_checkpoint(net, checkpoint)
            log.info("teacher weights loaded from %s", checkpoint)
        elif not allow_random_init:
            raise ValueError(
                "no teacher checkpoint: set model.teacher.checkpoint=/path/to/sam2.1_hiera_base_plus.pt "
                "(official SAM 2.1 weights), or model.teacher.allow_random_init=true for a smoke test")
        else:
            msg = ("TEACHER IS RANDOMLY INITIALISED (model.teacher.allow_random_init=true): distillation targets are "
                   "noise. Use this only for smoke tests and the quick start.")
            log.warning("!" * 20 + " " + msg + " " + "!" * 20)
        self.net.requires_grad_(False)
        self.eval()  # the wrapper too, so no module under the teacher reports training=True

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignore ``mode``: the teacher always stays in eval mode (dropout off, BatchNorm statistics frozen)."""
        return super().train(False)

    def __getattr__(self, name: str):
        """Delegate attribute access (e.g. ``image_size``, ``encode_image``) to the wrapped model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)

    @property
    def image_size(self) -> int:  # type: ignore[override]
        return self.net.image_size

    @torch.no_grad()
    def encode_image(self, images: Tensor):
        """Teacher image features without autograd (see :meth:`SAM2Model.encode_image`)."""
        return self.net.encode_image(images)

    @torch.no_grad()
    def targets(self, batch: Mapping[str, Any], replay: ClipReplay, with_memory: bool) -> TeacherTargets:
        """F16 of every frame; with ``with_memory`` the teacher also replays the student's prompts through its own
        memory bank, encoding the student's masks so both memories hold the same masks."""
        feats = self.encode_image(replay.frames)
        records = None
        if with_memory:
            records = run_clip(self.net, [feats.select(r) for r in replay.rows], replay.gt, replay.plan,
                               replay.prompts, replay=replay.records,
                               memory_masks={r.frame_idx: r.memory_mask.detach() for r in replay.records},
                               rules=self.rules)
        return TeacherTargets(feats.f16, records)

    @torch.no_grad()
    def first_prompt_masks(self, images: Tensor, coords: Tensor | None, labels: Tensor | None) -> Tensor:
        net = self.net
        feats = net.encode_image(images)
        num = 0 if labels is None else labels.shape[1]
        with net.using_rules(self.rules):
            out = net.decode(net.condition(feats, None), feats.high_res, coords, labels,
                             multimask_output=net.use_multimask(True, num))
        return out.low_res_masks


class StudentCopyTeacher(FrozenTeacher):
    """The student's own architecture with the student's weights, copied before every batch (``debug=identity``).

    Frozen and in ``eval()`` like every live teacher and replaying under the same rules, so with the student's dropout
    off and its BatchNorm frozen (``model.freeze_batchnorm``) every F16 and F_M target equals the student's: a
    feature loss above float rounding means the teacher's replay differs from the student's step.

    Args:
        net: a model of the student's architecture (config: ``${model.student}``); its initial weights are replaced.
        rules: as :class:`FrozenTeacher`.
    """

    def __init__(self, net: SAM2Model, rules: str | StepRules = "training") -> None:
        Teacher.__init__(self)
        self.net = net
        self.rules = rules_by_name(rules)
        self.net.requires_grad_(False)
        self.eval()
        self._student: tuple[nn.Module, ...] = ()  # a tuple: not registered, never moved or saved with the teacher

    def bind_student(self, student: nn.Module) -> None:
        self._student = (student,)

    @torch.no_grad()
    def copy_student(self) -> None:
        """Load the student's current weights (and BatchNorm statistics) into the teacher."""
        if not self._student:
            raise RuntimeError("StudentCopyTeacher: no student bound (the training module calls bind_student)")
        self.net.load_state_dict(self._student[0].state_dict())

    def targets(self, batch: Mapping[str, Any], replay: ClipReplay, with_memory: bool) -> TeacherTargets:
        self.copy_student()
        return super().targets(batch, replay, with_memory)


class CachedTeacher(Teacher):
    """F16 read ahead of training (``edgetam-cache-teacher``): the batch carries it as ``teacher_f16``.

    Args:
        directory: the cache (``data.teacher_cache``); its manifest is checked against the teacher described by
            ``net`` and ``checkpoint`` (architecture and weights' sha256). None: nothing to check (benchmarks, tests).
        net: the teacher's architecture config (``configs/arch/sam2.1_hiera_*.yaml``); never built.
        checkpoint, allow_random_init: the teacher's weights as the live teacher would load them.
        rules: accepted for config symmetry with the live teacher; a cache replays nothing.
    """

    def __init__(self, directory: str | Path | None = None, net: Mapping[str, Any] | None = None,
                 checkpoint: str | Path | None = None, allow_random_init: bool = False,
                 rules: str = "training") -> None:
        super().__init__()
        self.directory = directory
        if directory is not None:
            teacher = None if net is None else {"net": net, "checkpoint": checkpoint,
                                                 "allow_random_init": allow_random_init}
            check_teacher_config(directory, teacher)
            self.image_size = int(read_manifest(directory)["image_size"])
            log.info("teacher F16 read from the cache %s: no teacher is built", directory)

    def targets(self, batch: Mapping[str, Any], replay: ClipReplay, with_memory: bool) -> TeacherTargets:
        if replay.plan.num_frames > 1:
            raise ValueError("a teacher cache holds stage-1 image F16 only; clips (stage 2) need the live teacher "
                             "(model/teacher=frozen)")
        f16 = batch.get("teacher_f16")
        if f16 is None:
            raise ValueError("model/teacher=cached: the batch has no teacher_f16; the SA-1B loader adds it when "
                             "data.teacher_cache=<dir from edgetam-cache-teacher> is set")
        return TeacherTargets(f16)
