"""Prompt simulation as in SAM 2 training: first prompt (point, box or mask), then correction clicks, over clips.

Images (stage 1) are clips of one frame: the first prompt is a point or a box (a mask prompt is optional: on a single
frame it is fed to the decoder as a low-res logit prompt, since taking it as the output would teach nothing), then
``num_correction_clicks`` clicks sampled uniformly from the error region (positive where the prediction misses the
object, negative where it spills over; with probability ``prob_click_from_gt`` from the ground truth instead), each
pass reading the previous low-res logits. 1 + 7 = 8 decoder passes per image; every pass is supervised.

Videos (stage 2, :func:`plan_clip` + :func:`run_clip`): 1–2 initial conditioning frames (frame 0 and a random one)
prompted with points/boxes (then 1–2 frames get correction clicks and become conditioning frames) or with ground-truth
masks (no corrections); every other frame is segmented from memory alone; each frame's final mask is encoded into
memory. Conditioning frames are processed first, then the rest in time order, as SAM 2 does. The teacher replays the
student's recorded prompts (:class:`FrameRecord`) with its own memory bank.

All sampling uses torch's global RNG, seeded by Lightning and re-seeded at every training batch from (seed, rank,
epoch, batch) by ``edgetam_train/callbacks/batch_seed.py``: runs are reproducible and resume step-exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import masks_to_boxes

from edgetam_train.models.memory_bank import FrameOutput, MemoryBank
from edgetam_train.models.sam2_model import ImageFeatures, SAM2Model
from edgetam_train.models.step_rules import TRAINING, StepRules


@dataclass
class PromptConfig:
    """Prompt-simulation settings (Hydra: ``model.prompts``).

    point / box / mask: relative probabilities of the first prompt type (normalised to sum 1).
    num_correction_clicks: correction passes after the first prompt (SAM 2 / EdgeTAM: 7).
    prob_click_from_gt: chance that a correction click is drawn from the ground truth rather than the error region.
    box_noise / box_noise_bound: box corner jitter, fraction of box size capped at this many pixels (SAM defaults).
    video_prob_points: clips prompted with clicks/boxes (else with ground-truth masks, and no corrections).
    video_prob_box: among those, the chance that the first prompt is a box.
    max_init_cond_frames / max_corrected_frames: 1..N of each, drawn per clip (SAM 2.1: 2 and 2).
    corrected_frames_are_cond: a frame that receives correction clicks becomes a conditioning frame.
    """

    point: float = 0.5
    box: float = 0.5
    mask: float = 0.0
    num_correction_clicks: int = 7
    prob_click_from_gt: float = 0.1
    box_noise: float = 0.1
    box_noise_bound: float = 20.0
    video_prob_points: float = 0.5
    video_prob_box: float = 0.5
    max_init_cond_frames: int = 2
    max_corrected_frames: int = 2
    corrected_frames_are_cond: bool = True

    def __post_init__(self) -> None:
        probs = (self.point, self.box, self.mask)
        if min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"prompt probabilities point/box/mask must be >= 0 with a positive sum, got {probs}")
        if self.num_correction_clicks < 0:
            raise ValueError(f"num_correction_clicks must be >= 0, got {self.num_correction_clicks}")

    def draw_kind(self) -> str:
        """'point', 'box' or 'mask', drawn with the configured probabilities."""
        probs = torch.tensor([self.point, self.box, self.mask], dtype=torch.float64)
        return ("point", "box", "mask")[int(torch.multinomial(probs / probs.sum(), 1))]


@dataclass
class PromptStep:
    """One supervised decoder pass over N objects: multimasks (N, M, h, w), ious (N, M), object scores (N, 1)."""

    multimasks: Tensor
    ious: Tensor
    object_score_logits: Tensor
    point_coords: Tensor | None
    point_labels: Tensor | None


def sample_click(gt: Tensor, pred: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One click per object, uniform over the error region (SAM 2 "uniform" sampling).

    Args:
        gt: (N, 1, H, W) bool ground truth.
        pred: (N, 1, H, W) bool prediction, or None (then the click is a positive point inside ``gt``).
    Returns:
        coords (N, 1, 2) float xy pixel coordinates, labels (N, 1) int32 (1 = in a missed region, 0 = spill-over).
        A perfectly predicted object gets a negative click in the background.
    """
    if pred is None:
        pred = torch.zeros_like(gt)
    false_neg = gt & ~pred
    false_pos = ~gt & pred
    all_correct = (gt == pred).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    candidates = (false_neg | false_pos | (all_correct & ~gt)).flatten(1).float()
    empty = candidates.sum(dim=1) == 0
    candidates[empty, 0] = 1.0  # nothing to click at: (0, 0), negative, as the official argmax of zeros does
    idx = torch.multinomial(candidates, 1)  # (N, 1)
    w = gt.shape[-1]
    coords = torch.stack((idx % w, torch.div(idx, w, rounding_mode="floor")), dim=-1).float()
    labels = false_neg.flatten(1).gather(1, idx).to(torch.int32)
    return coords, labels


def mask_to_box(masks: Tensor) -> Tensor:
    """(N, 1, H, W) bool -> (N, 4) float32 boxes x0, y0, x1, y1 (inclusive pixel bounds; zeros for an empty mask):
    ``torchvision.ops.masks_to_boxes``."""
    return masks_to_boxes(masks[:, 0])


def sample_box(gt: Tensor, noise: float = 0.1, noise_bound: float = 20.0) -> tuple[Tensor, Tensor]:
    """Noisy box of each mask as two corner points: coords (N, 2, 2), labels (N, 2) = [2, 3]."""
    n, _, h, w = gt.shape
    box = mask_to_box(gt)
    if noise > 0:
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        bound = torch.tensor(noise_bound, device=gt.device)
        dx, dy = torch.minimum(bw * noise, bound), torch.minimum(bh * noise, bound)
        jitter = (2 * torch.rand(n, 4, device=gt.device) - 1) * torch.stack((dx, dy, dx, dy), dim=1)
        limit = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=gt.device, dtype=box.dtype)
        box = torch.minimum((box + jitter).clamp(min=0), limit)
    labels = torch.tensor([2, 3], dtype=torch.int32, device=gt.device).repeat(n, 1)
    return box.view(n, 2, 2), labels


def mask_prompt_logits(gt: Tensor, size: int) -> Tensor:
    """A ground-truth mask as a low-res logit prompt (N, 1, size, size): ±10 logits, antialiased downsampling."""
    logits = gt.float() * 20.0 - 10.0
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def concat_points(coords: Tensor | None, labels: Tensor | None, new_coords: Tensor, new_labels: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Append clicks (N, k, 2)/(N, k) to an existing prompt (or start one)."""
    if coords is None:
        return new_coords, new_labels
    return torch.cat((coords, new_coords), dim=1), torch.cat((labels, new_labels), dim=1)


@dataclass
class ClipPlan:
    """Random choices for one clip, shared by student and teacher.

    init_cond_frames: prompted first (frame 0 first); correct_frames: frames that get correction clicks;
    first_kind: 'point', 'box' or 'mask' for the initial conditioning frames.
    """

    num_frames: int
    init_cond_frames: list[int]
    correct_frames: list[int]
    first_kind: str

    @property
    def order(self) -> list[int]:
        """Processing order: conditioning frames, then the others in time order."""
        return self.init_cond_frames + [t for t in range(self.num_frames) if t not in self.init_cond_frames]


@dataclass
class FrameRecord:
    """What happened on one frame: the supervised passes, the prompts of each pass (for the teacher's replay),
    the mask the memory was encoded from, and F_M (``pix_feat``; ``read_memory`` says whether memory attention ran).
    """

    frame_idx: int
    steps: list[PromptStep]
    memory_mask: Tensor
    pix_feat: Tensor
    read_memory: bool


def plan_clip(num_frames: int, cfg: PromptConfig) -> ClipPlan:
    """Draw the clip's conditioning frames, corrected frames and first prompt type (SAM 2 training rules).

    A single frame always gets a point or box (``cfg.point``/``cfg.box``/``cfg.mask`` probabilities) and corrections.
    """
    if num_frames == 1:
        kind = cfg.draw_kind()
        return ClipPlan(1, [0], [0] if cfg.num_correction_clicks > 0 else [], kind)
    use_points = bool(torch.rand(()) < cfg.video_prob_points)
    n_init = int(torch.randint(1, min(cfg.max_init_cond_frames, num_frames) + 1, ()))
    others = (torch.randperm(num_frames - 1) + 1).tolist()
    init = [0] + others[: n_init - 1]
    if not use_points:
        return ClipPlan(num_frames, init, [], "mask")
    kind = "box" if bool(torch.rand(()) < cfg.video_prob_box) else "point"
    n_corr = max(n_init, int(torch.randint(n_init, max(cfg.max_corrected_frames, n_init) + 1, ())))
    rest = [t for t in others if t not in init]
    correct = init + rest[: n_corr - n_init] if cfg.num_correction_clicks > 0 else []
    return ClipPlan(num_frames, init, correct, kind)


def _first_prompt(kind: str, gt: Tensor, cfg: PromptConfig) -> tuple[Tensor | None, Tensor | None]:
    """Initial clicks (N, P, 2)/(N, P) for 'point' or 'box'; (None, None) for 'mask'."""
    if kind == "point":
        return sample_click(gt)
    if kind == "box":
        return sample_box(gt, cfg.box_noise, cfg.box_noise_bound)
    if kind == "mask":
        return None, None
    raise ValueError(f"unknown prompt kind {kind!r}; valid: point, box, mask")


def run_clip(model: SAM2Model, frame_feats: list[ImageFeatures], gt: Tensor, plan: ClipPlan, cfg: PromptConfig,
             replay: list[FrameRecord] | None = None, memory_masks: dict[int, Tensor] | None = None,
             rules: StepRules = TRAINING) -> list[FrameRecord]:
    """Segment N objects through a clip with simulated prompts, building memory from the model's own masks.

    Every frame step runs under ``rules`` (SAM 2's training rules by default, for the student and for the teacher
    replaying it; see ``models/step_rules.py``), whatever ``model.training`` says.

    Args:
        model: student or teacher.
        frame_feats: per frame, the image features of the N objects' images (``ImageFeatures.select(obj_to_img)``).
        gt: (T, N, 1, S, S) bool ground truth (an empty mask = the object is absent on that frame).
        plan: from :func:`plan_clip`.
        replay: the student's records: reuse their prompts (first prompts and correction clicks) instead of sampling.
        memory_masks: frame -> (N, 1, S, S) mask logits to encode into memory instead of this model's own masks (the
            teacher can encode the student's masks so both memories hold the same masks).
        rules: the step rules (``TRAINING`` or ``INFERENCE``).
    Returns:
        One :class:`FrameRecord` per frame, in processing order.
    """
    with model.using_rules(rules):
        return _run_clip(model, frame_feats, gt, plan, cfg, replay, memory_masks)


def _run_clip(model: SAM2Model, frame_feats: list[ImageFeatures], gt: Tensor, plan: ClipPlan, cfg: PromptConfig,
              replay: list[FrameRecord] | None, memory_masks: dict[int, Tensor] | None) -> list[FrameRecord]:
    """:func:`run_clip`'s loop, under the rules the caller set."""
    bank = MemoryBank()
    records: list[FrameRecord] = []
    by_frame = {r.frame_idx: r for r in replay} if replay is not None else {}
    last = plan.order[-1]
    for t in plan.order:
        feats, target = frame_feats[t], gt[t]
        is_init = t in plan.init_cond_frames
        corrected = t in plan.correct_frames
        old = by_frame.get(t)
        coords = labels = mask_in = None
        if is_init and old is not None:
            coords, labels = old.steps[0].point_coords, old.steps[0].point_labels
        elif is_init:
            coords, labels = _first_prompt(plan.first_kind, target, cfg)
        if is_init and plan.first_kind == "mask":
            if plan.num_frames == 1:  # a single frame: the mask is a decoder prompt (as output it teaches nothing)
                mask_in = mask_prompt_logits(target, model.image_size // 4)
            else:
                mask_in = target.float()
        single_mask_prompt = plan.num_frames == 1 and mask_in is not None
        out = model.track_step(t, is_init, feats, bank, plan.num_frames, coords, labels,
                               mask_inputs=None if single_mask_prompt else mask_in,
                               prev_mask_logits=mask_in if single_mask_prompt else None,
                               run_mem_encoder=False)
        steps = [PromptStep(out.multimasks, out.ious, out.object_score_logits, coords, labels)]
        if corrected:
            for k in range(1, cfg.num_correction_clicks + 1):
                if old is not None:
                    coords, labels = old.steps[k].point_coords, old.steps[k].point_labels
                else:
                    from_gt = torch.rand(()) < cfg.prob_click_from_gt
                    with torch.no_grad():
                        new_c, new_l = sample_click(target, None if from_gt else out.high_res_masks > 0)
                    coords, labels = concat_points(coords, labels, new_c, new_l)
                num_pts = labels.shape[1]
                sam = model.decode(out.pix_feat, feats.high_res, coords, labels, out.low_res_masks,
                                   multimask_output=model.use_multimask(is_init, num_pts))
                out = FrameOutput(sam.low_res_masks, sam.high_res_masks, sam.obj_ptr, sam.object_score_logits,
                                  sam.ious, sam.multimasks, pix_feat=out.pix_feat)
                steps.append(PromptStep(sam.multimasks, sam.ious, sam.object_score_logits, coords, labels))
        mem_mask = out.high_res_masks if memory_masks is None else memory_masks[t]
        if t != last and model.num_maskmem > 0:  # the last frame's memory is never read
            out.memory, out.memory_pos = model.encode_memory(feats, mem_mask, out.object_score_logits,
                                                             is_mask_from_pts=labels is not None)
        bank.add(t, out, is_cond=is_init or (corrected and cfg.corrected_frames_are_cond))
        records.append(FrameRecord(t, steps, mem_mask, out.pix_feat, read_memory=not is_init))
    return records
