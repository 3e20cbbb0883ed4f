"""SAM 2's training/inference differences of a frame step, as an explicit choice instead of ``nn.Module.training``.

SAM 2 ties four behaviours to ``self.training`` (sam2/modeling/sam2_base.py, sam/mask_decoder.py). A frozen teacher
that replays the student's training step sits in ``eval()`` (dropout off, BatchNorm frozen), so with those ties it
would replay the clip under the inference rules while the student trains under the training rules, and its F_M target
would come from a different memory. Here the rules are a model attribute (:attr:`SAM2Model.rules`), chosen by the
caller: the prompt simulation of training (student step and teacher replay, ``distill.prompting.run_clip``) uses
:data:`TRAINING`, the predictors and validation use :data:`INFERENCE` (the default). Dropout still follows
``nn.Module.training``.

Each rule only applies when the model is configured for it (the flag in parentheses, see ``configs/arch``):

===========================  =================================================================  ==========  ==========
rule                         effect when on                                                      TRAINING    INFERENCE
===========================  =================================================================  ==========  ==========
binarize_memory_masks        memory of a point-prompted frame encodes ``logits > 0`` instead of  off         on
                             ``sigmoid(logits)`` (``binarize_mask_from_pts_for_mem_enc``)
past_pointers_only           object pointers only from conditioning frames not in the future     off         on
                             (``only_obj_ptrs_in_the_past_for_eval``); off: all selected
                             conditioning frames, also later ones
dynamic_multimask            single-mask output falls back to the best multimask when unstable   off         on
                             (``sam_mask_decoder.dynamic_multimask_via_stability``)
eval_memory_stride           spatial memories every r-th frame (``memory_temporal_stride_for_    off         on
                             eval``, r = 1 in every config: no effect by default)
===========================  =================================================================  ==========  ==========
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepRules:
    """Which of SAM 2's eval-only behaviours a frame step follows (see the module docstring)."""

    name: str
    binarize_memory_masks: bool
    past_pointers_only: bool
    dynamic_multimask: bool
    eval_memory_stride: bool


TRAINING = StepRules("training", binarize_memory_masks=False, past_pointers_only=False, dynamic_multimask=False,
                     eval_memory_stride=False)


INFERENCE = StepRules("inference", binarize_memory_masks=True, past_pointers_only=True, dynamic_multimask=True,
                      eval_memory_stride=True)


def rules_by_name(name: str | StepRules) -> StepRules:
    """``"training"`` -> :data:`TRAINING`, ``"inference"`` -> :data:`INFERENCE` (a ``StepRules`` passes through)."""
    if isinstance(name, StepRules):
        return name
    table = {r.name: r for r in (TRAINING, INFERENCE)}
    if name not in table:
        raise ValueError(f"step rules {name!r}: expected one of {sorted(table)}")
    return table[name]
