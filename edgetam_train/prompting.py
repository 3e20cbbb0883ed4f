"""Prompt simulation as in SAM 2 training: first prompt (point, box or mask), then correction clicks.

Images (stage 1): the first prompt is a point or a box (a mask prompt is optional: on a single frame it is fed to the
decoder as a low-res logit prompt, since taking it as the output would teach nothing), then ``num_correction_clicks``
clicks sampled uniformly from the error region (positive where the prediction misses the object, negative where it
spills over; with probability ``prob_click_from_gt`` from the ground truth instead), each pass reading the previous
low-res logits. 1 + 7 = 8 decoder passes per image; every pass is supervised.

All sampling uses torch's global RNG (seeded by Lightning), so runs are reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.sam2_model import ImageFeatures, SAM2Model


@dataclass
class PromptConfig:
    """Prompt-simulation settings (Hydra: ``model.prompts``).

    point / box / mask: relative probabilities of the first prompt type (normalised to sum 1).
    num_correction_clicks: correction passes after the first prompt (SAM 2 / EdgeTAM: 7).
    prob_click_from_gt: chance that a correction click is drawn from the ground truth rather than the error region.
    box_noise / box_noise_bound: box corner jitter, fraction of box size capped at this many pixels (SAM defaults).
    """

    point: float = 0.5
    box: float = 0.5
    mask: float = 0.0
    num_correction_clicks: int = 7
    prob_click_from_gt: float = 0.1
    box_noise: float = 0.1
    box_noise_bound: float = 20.0

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
    """(N, 1, H, W) bool -> (N, 4) boxes x0, y0, x1, y1 (inclusive pixel bounds; zeros for an empty mask)."""
    n, _, h, w = masks.shape
    ys = torch.arange(h, device=masks.device).view(1, h, 1)
    xs = torch.arange(w, device=masks.device).view(1, 1, w)
    m = masks[:, 0]
    big = max(h, w)
    x0 = torch.where(m, xs, big).flatten(1).amin(1)
    y0 = torch.where(m, ys, big).flatten(1).amin(1)
    x1 = torch.where(m, xs, -1).flatten(1).amax(1)
    y1 = torch.where(m, ys, -1).flatten(1).amax(1)
    box = torch.stack((x0, y0, x1, y1), dim=1).float()
    return torch.where(m.flatten(1).any(1, keepdim=True), box, torch.zeros_like(box))


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


def image_prompt_steps(model: SAM2Model, feats: ImageFeatures, gt: Tensor, cfg: PromptConfig,
                       kind: str | None = None) -> list[PromptStep]:
    """Interactive segmentation of N objects on their images, as SAM 2 trains on static images.

    Args:
        model: the model whose decoder is trained.
        feats: per-object image features (``ImageFeatures.select(obj_to_img)``), N rows.
        gt: (N, 1, S, S) bool ground-truth masks at model-input size.
        cfg: prompt settings; ``kind`` forces the first prompt type.
    Returns:
        1 + ``cfg.num_correction_clicks`` :class:`PromptStep`, in order.
    """
    kind = kind or cfg.draw_kind()
    pix_feat = model.condition(feats, None)  # an image is an initial conditioning frame: F16 + no-memory embedding
    coords = labels = mask_in = None
    if kind == "point":
        coords, labels = sample_click(gt)
    elif kind == "box":
        coords, labels = sample_box(gt, cfg.box_noise, cfg.box_noise_bound)
    elif kind == "mask":
        mask_in = mask_prompt_logits(gt, model.image_size // 4)
    else:
        raise ValueError(f"unknown prompt kind {kind!r}; valid: point, box, mask")
    steps: list[PromptStep] = []
    for step in range(cfg.num_correction_clicks + 1):
        if step > 0:
            from_gt = torch.rand(()) < cfg.prob_click_from_gt
            with torch.no_grad():
                pred = None if from_gt else (out.high_res_masks > 0)
                new_c, new_l = sample_click(gt, pred)
            coords, labels = concat_points(coords, labels, new_c, new_l)
            mask_in = out.low_res_masks
        num_pts = 0 if labels is None else labels.shape[1]
        out = model.decode(pix_feat, feats.high_res, coords, labels, mask_in,
                           multimask_output=model.use_multimask(True, num_pts))
        steps.append(PromptStep(out.multimasks, out.ious, out.object_score_logits, coords, labels))
    return steps
