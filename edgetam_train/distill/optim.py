"""Optimiser parameter groups, AdamW, and the two learning-rate schedules of the EdgeTAM recipe.

Weight decay, rule ``"sam2"`` (the default; SAM 2.1's training config, ``sam2.1_hiera_b+_MOSE_finetune.yaml``
``weight_decay`` options and ``training/optimizer.py``): a parameter gets **no** weight decay when its full name
contains ``bias`` (``fnmatch('*bias*')``) or its module is exactly a ``torch.nn.LayerNorm``. Everything else is
decayed: conv / linear kernels, BatchNorm and ``LayerNorm2d`` scales, embeddings, position tables, latents, the
"no memory" / "no object" tensors.

Rule ``"extended"`` (:func:`no_weight_decay`, the usual ViT/timm rule, ours before issue 13): **no** weight decay when

1. its module is a normalisation layer (any ``BatchNorm*``/``SyncBatchNorm``/``InstanceNorm*``, ``LayerNorm``,
   ``GroupNorm``, ``LocalResponseNorm``, ``RMSNorm``, or a custom class whose name contains ``LayerNorm``,
   ``BatchNorm``, ``GroupNorm``, ``InstanceNorm`` or ``RMSNorm``, e.g. SAM 2's ``LayerNorm2d``), or
2. it has at most one dimension (biases, norm scales, layer-scale ``gamma``), or
3. its own attribute name is ``bias``, or
4. its module is an ``nn.Embedding`` (learned tokens: ``iou_token``, ``mask_tokens``, ``point_embeddings``...), or
5. its own attribute name (the last part of the dotted name, so ``obj_ptr_tpos_proj.weight`` of a Linear does not
   count) contains one of :data:`NO_DECAY_KEYWORDS`: ``pos_embed``, ``latents``, ``no_mem``, ``no_obj``, ``tpos``,
   ``embed``, ``token`` (positional tables, perceiver latents, the "no memory"/"no object" embeddings).

All other weights (conv / linear kernels, including ``patch_embed.proj.weight``) are decayed.

Learning rates: ``vision_lr`` (stage 2, SAM 2's ``vision_lr``) applies to every parameter under ``vision_prefix``,
``image_encoder`` (trunk and neck, SAM 2's ``param_names: ['image_encoder.*']``); the rest gets ``lr``.

Schedules are multiplier functions ``f(step) -> float`` for :class:`torch.optim.lr_scheduler.LambdaLR` (stepped once
per optimiser step); :func:`build_scheduler` wraps them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY_KEYWORDS: tuple[str, ...] = ("pos_embed", "latents", "no_mem", "no_obj", "tpos", "embed", "token")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_NORM_NAME = re.compile(r"(Layer|Batch|Group|Instance|RMS)Norm")


def is_norm_layer(module: nn.Module) -> bool:
    """True for normalisation layers, by type or by class name (custom ``LayerNorm2d`` and friends)."""
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def no_weight_decay(module: nn.Module, leaf_name: str, param: torch.Tensor,
                    keywords: Sequence[str] = NO_DECAY_KEYWORDS) -> bool:
    """Whether ``param`` (attribute ``leaf_name`` of ``module``) is exempt from weight decay (rule in the docstring)."""
    return (is_norm_layer(module) or param.ndim <= 1 or leaf_name == "bias" or isinstance(module, nn.Embedding)
            or any(k in leaf_name for k in keywords))


WEIGHT_DECAY_RULES: tuple[str, ...] = ("sam2", "extended")


def sam2_no_weight_decay(module: nn.Module, full_name: str) -> bool:
    """SAM 2's rule: exempt when the full parameter name contains ``bias`` or the module is exactly ``nn.LayerNorm``."""
    return "bias" in full_name or type(module) is nn.LayerNorm


def _in_prefix(name: str, prefix: str | None) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + "."))


def param_groups(model: nn.Module, weight_decay: float, lr: float, vision_lr: float | None = None,
                 vision_prefix: str = "image_encoder", weight_decay_rule: str = "sam2",
                 no_decay_keywords: Sequence[str] = NO_DECAY_KEYWORDS) -> list[dict]:
    """Split the trainable parameters of ``model`` into AdamW parameter groups.

    Args:
        model: the module to optimise (parameters with ``requires_grad=False`` are left out; shared parameters once).
        weight_decay: decay of the "decay" groups (the "no_decay" groups get 0).
        lr: learning rate of every group, except the vision groups when ``vision_lr`` is given.
        vision_lr: learning rate of parameters under ``vision_prefix`` (paper stage 2: 6e-5 vs 3e-4).
        vision_prefix: dotted name prefix of the image encoder inside ``model`` (SAM 2: ``image_encoder``, trunk and
            neck; ``image_encoder.trunk`` gives the lower rate to the trunk only).
        weight_decay_rule: ``"sam2"`` or ``"extended"`` (module docstring).
        no_decay_keywords: see :func:`no_weight_decay` (rule ``"extended"`` only).
    Returns:
        list of {"name", "params", "lr", "weight_decay"}; names among "decay", "no_decay", "vision_decay",
        "vision_no_decay" (the vision ones only when ``vision_lr`` is given); empty groups are dropped.
    """
    if weight_decay_rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight_decay_rule={weight_decay_rule!r}: expected one of {list(WEIGHT_DECAY_RULES)}")
    split_vision = vision_lr is not None
    groups: dict[str, dict] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            vision = split_vision and _in_prefix(full, vision_prefix)
            if weight_decay_rule == "sam2":
                decay = not sam2_no_weight_decay(module, full)
            else:
                decay = not no_weight_decay(module, leaf, p, no_decay_keywords)
            key = ("vision_" if vision else "") + ("decay" if decay else "no_decay")
            if key not in groups:
                groups[key] = {"name": key, "params": [], "lr": float(vision_lr if vision else lr),
                               "weight_decay": float(weight_decay) if decay else 0.0}
            groups[key]["params"].append(p)
    order = ("decay", "no_decay", "vision_decay", "vision_no_decay")
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, lr: float = 4e-4, weight_decay: float = 0.1, vision_lr: float | None = None,
                    vision_prefix: str = "image_encoder", weight_decay_rule: str = "sam2",
                    betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (defaults: the paper's stage 1, lr 4e-4, weight decay 0.1, SAM 2's decay
    rule)."""
    groups = param_groups(model, weight_decay=weight_decay, lr=lr, vision_lr=vision_lr, vision_prefix=vision_prefix,
                          weight_decay_rule=weight_decay_rule)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


# ---------------------------------------------------------------------------------------------- schedules
def inverse_sqrt_schedule(warmup_steps: int, cooldown_steps: int, total_steps: int,
                          timescale: float = 1000.0) -> Callable[[int], float]:
    """Reciprocal-square-root schedule with linear warmup and linear cooldown ("Scaling ViTs", SAM / SAM 2).

    ``f(s) = min(1, s / warmup) · 1 / sqrt(1 + max(0, s - warmup) / timescale) · min(1, (total - s) / cooldown)``,
    clamped at 0: it rises linearly from 0 to 1 over the warmup, then decays as 1/sqrt (it is 1 at the end of warmup
    and 1/sqrt(2) after ``timescale`` more steps), and is scaled linearly down to 0 over the last ``cooldown_steps``.
    SAM 2 / EdgeTAM stage 1: warmup 1k, cooldown 5k, timescale 1k.

    Args:
        warmup_steps / cooldown_steps: lengths of the linear ramps (0 disables one).
        total_steps: the optimiser step at which the multiplier reaches 0.
        timescale: steps after warmup at which the decay factor is 1/sqrt(2).
    Returns:
        ``step -> multiplier`` for LambdaLR.
    """
    if cooldown_steps > total_steps or warmup_steps > total_steps:
        raise ValueError(f"warmup ({warmup_steps}) and cooldown ({cooldown_steps}) must fit in total_steps "
                         f"({total_steps})")
    if timescale <= 0:
        raise ValueError(f"timescale must be > 0, got {timescale}")

    def multiplier(step: int) -> float:
        m = 1.0 / math.sqrt(1.0 + max(0, step - warmup_steps) / timescale)
        if warmup_steps > 0:
            m *= min(1.0, step / warmup_steps)
        if cooldown_steps > 0:
            m *= min(1.0, (total_steps - step) / cooldown_steps)
        return max(0.0, m)

    return multiplier


def cosine_schedule(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warmup from 0 to 1, then half-cosine from 1 to ``min_ratio`` at ``total_steps`` (held after it).

    Args:
        warmup_steps: length of the linear warmup (paper stage 2: 15k).
        total_steps: step at which the multiplier reaches ``min_ratio``.
        min_ratio: final multiplier (SAM 2.1's training config ends at base/10: 0.1; stage 2's default).
    Returns:
        ``step -> multiplier`` for LambdaLR.
    """
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "inverse_sqrt", total_steps: int | None = None,
                    warmup_steps: int = 1000, cooldown_steps: int = 5000, timescale: float = 1000.0,
                    min_ratio: float = 0.0) -> LambdaLR:
    """LambdaLR for ``name`` in {"inverse_sqrt", "cosine", "constant"} (step it once per optimiser step).

    ``total_steps`` (the trainer's ``max_steps``) is required by the first two. Arguments a schedule does not use
    are ignored (cooldown/timescale for cosine, min_ratio for inverse_sqrt).
    """
    if name == "constant":
        return LambdaLR(optimizer, lambda step: 1.0)
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"the '{name}' schedule needs total_steps > 0 (set trainer.max_steps), got {total_steps}")
    if name == "inverse_sqrt":
        fn = inverse_sqrt_schedule(warmup_steps, cooldown_steps, total_steps, timescale)
    elif name == "cosine":
        fn = cosine_schedule(warmup_steps, total_steps, min_ratio)
    else:
        raise ValueError(f"unknown schedule '{name}': expected 'inverse_sqrt', 'cosine' or 'constant'")
    return LambdaLR(optimizer, fn)
