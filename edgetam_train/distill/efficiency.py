"""Memory and speed switches of the training step: activation checkpointing and ``torch.compile`` of the student.

Both are applied from the distillation layer without touching the model classes (config
``model.activation_checkpointing``
and ``model.compile``, read by :class:`edgetam_train.distill.module.DistillationModule`).

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant): a checkpointed piece keeps only its inputs
during the forward pass and runs again in the backward pass, so losses and gradients are unchanged (same RNG state on
the recomputation) while its intermediate tensors are never stored. Levels:

- ``none``: everything is stored (fastest).
- ``heads``: every decoder pass (prompt encoder + mask decoder + the upsampling of its chosen mask,
  :meth:`SAM2Model.decode`), checkpointed in chunks of :data:`DECODE_CHUNK` objects (objects are independent in the
  decoder, so a chunk's recomputation and backward hold only its own activations), and, with the ``direct`` mask
  loss, every pass's task loss (:meth:`TaskLoss.step_losses`, which then upsamples the N x 3 candidate masks to
  S x S). The ``lean`` mask loss (the default, :mod:`edgetam_train.distill.mask_loss`) keeps nothing of that size
  for backward and is not checkpointed again. With 64 masks x 8 passes at 1024² the decoder passes are most of a
  stage-1 step's activations (``scripts/bench/step_memory.py`` shows how much); recomputing them costs about one
  more forward pass of the heads.
- ``full``: ``heads`` + the student's trunk stage by stage (timm's own ``set_grad_checkpointing``), memory attention
  (:meth:`SAM2Model.condition`) and the memory encoder (:meth:`SAM2Model.encode_memory`).

A caveat of checkpointing a trunk with BatchNorm in training mode (RepViT): the recomputation updates the running
statistics a second time (the gradients and the loss are unaffected; running statistics only serve ``eval()``).

``compile``: ``nn.Module.compile`` (state-dict keys unchanged) of the student's image encoder (``encoder``) or also of
its prompt encoder and mask decoder (``student``; one static graph per number of prompt points). ``true`` means
``encoder``. Compilation happens on the first step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_LEVELS = ("none", "heads", "full")
# objects per checkpointed chunk of a decoder pass (``heads``): 16 of the 64 masks of a 1024² image hold ~1.3 GiB of
# decoder activations during their recomputation and backward, instead of ~5 GiB for all 64 at once
DECODE_CHUNK = 16
COMPILE_CHOICES = ("none", "encoder", "student")
_MARK = "_edgetam_checkpointed"


def checkpoint_level(value: str | bool | None) -> str:
    """Normalise ``model.activation_checkpointing``: None/false -> 'none', true -> 'full', else one of the levels."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    level = str(value).lower()
    if level not in CHECKPOINT_LEVELS:
        raise ValueError(f"model.activation_checkpointing={value!r}: expected one of {', '.join(CHECKPOINT_LEVELS)} "
                         "(or true = full, false = none)")
    return level


def compile_target(value: str | bool | None) -> str:
    """Normalise ``model.compile``: None/false -> 'none', true -> 'encoder', else one of the choices."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "encoder"
    target = str(value).lower()
    if target not in COMPILE_CHOICES:
        raise ValueError(f"model.compile={value!r}: expected true/false or one of {', '.join(COMPILE_CHOICES)}")
    return target


def _checkpointed(fn: Callable[..., Any], owner: nn.Module) -> Callable[..., Any]:
    """``fn`` run under non-reentrant activation checkpointing while autograd records (plain call otherwise).

    The recomputation runs in the backward pass, after the caller's ``with model.using_rules(TRAINING)`` block has
    exited; the step rules (``models/step_rules.py``) in force at the forward call are captured and put back around
    the recomputation, so both runs take the same branches (otherwise the eval-only stability fallback would change
    the recomputed graph and ``torch.utils.checkpoint`` raises a metadata mismatch)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        rules = getattr(owner, "rules", None)
        if rules is None:
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)

        def under_rules(*a: Any, **k: Any) -> Any:
            with owner.using_rules(rules):
                return fn(*a, **k)

        return checkpoint(under_rules, *args, use_reentrant=False, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _split(value: Any, sl: slice, n: int) -> Any:
    """``value`` restricted to the objects ``sl`` when it is batched over the ``n`` objects (a tensor, or a list of
    tensors, whose first dimension is ``n``); anything else (flags, None, shared tensors) unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[sl]
    if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) and v.shape[0] == n for v in value):
        return [v[sl] for v in value]
    return value


def _join(parts: list[Any]) -> Any:
    """Concatenate chunk outputs along the object dimension: tensors, or dataclasses of tensors (``SamOutput``)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: _join([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)})
    raise TypeError(f"cannot join chunked outputs of type {type(first).__name__}")


def _chunked(fn: Callable[..., Any], chunk: int) -> Callable[..., Any]:
    """``fn(*args)`` over objects (the first argument's first dimension) run ``chunk`` objects at a time, outputs
    concatenated: with ``fn`` checkpointed, each chunk is recomputed and back-propagated on its own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        n = args[0].shape[0]
        if not torch.is_grad_enabled() or n <= chunk:
            return fn(*args, **kwargs)
        parts = []
        for i in range(0, n, chunk):
            sl = slice(i, min(i + chunk, n))
            parts.append(fn(*(_split(a, sl, n) for a in args), **{k: _split(v, sl, n) for k, v in kwargs.items()}))
        return _join(parts)

    return wrapper


def _wrap_method(obj: nn.Module, name: str, chunk: int | None = None) -> None:
    """Replace the bound method ``obj.name`` by a checkpointed one (an instance attribute: the class is unchanged,
    nothing enters the state dict), run ``chunk`` objects at a time when given; idempotent."""
    method = getattr(obj, name)
    if not getattr(method, _MARK, False):
        wrapped = _checkpointed(method, obj)
        if chunk is not None:
            wrapped = _chunked(wrapped, chunk)
            setattr(wrapped, _MARK, True)
        object.__setattr__(obj, name, wrapped)


def _unwrap_method(obj: nn.Module, name: str) -> None:
    if getattr(getattr(obj, name, None), _MARK, False):
        del obj.__dict__[name]


def apply_activation_checkpointing(student: nn.Module, task_loss: nn.Module | None, level: str | bool | None) -> str:
    """Set the checkpointing ``level`` (see the module docstring) on ``student`` (a ``SAM2Model``) and ``task_loss``
    (a ``TaskLoss``, whose per-pass loss is checkpointed with the heads); returns the normalised level.
    Calling it again with another level replaces the previous setting."""
    level = checkpoint_level(level)
    direct_loss = task_loss is not None and getattr(task_loss, "mask_loss", "direct") == "direct"
    heads = [(student, "decode", DECODE_CHUNK)] + ([(task_loss, "step_losses", None)] if direct_loss else [])
    rest = [(student, "condition", None), (student, "encode_memory", None)]
    for obj, name in [(student, "decode"), (student, "condition"), (student, "encode_memory")] + (
            [(task_loss, "step_losses")] if task_loss is not None else []):
        _unwrap_method(obj, name)
    if level in ("heads", "full"):
        for obj, name, chunk in heads:
            _wrap_method(obj, name, chunk)
    body = getattr(getattr(getattr(student, "image_encoder", None), "trunk", None), "body", None)
    if level == "full":
        for obj, name, _ in rest:
            _wrap_method(obj, name)
    if body is not None and hasattr(body, "set_grad_checkpointing"):
        body.set_grad_checkpointing(level == "full")
    elif level == "full":
        log.warning("activation_checkpointing=full: the trunk %s has no set_grad_checkpointing; it is not "
                    "checkpointed", type(body).__name__)
    return level


def compile_student(student: nn.Module, target: str | bool | None) -> list[str]:
    """``torch.compile`` parts of ``student`` in place (``nn.Module.compile``); returns the compiled submodule names.

    ``encoder``: the image encoder; ``student``: also the prompt encoder and the mask decoder, with static shapes
    (their number of prompt tokens changes across correction passes: one graph per count, so the recompile limit is
    raised to 64; dynamic-shape graphs of the heads failed an inductor stride check on torch 2.14.1, CPU).
    """
    target = compile_target(target)
    parts = {"none": [], "encoder": ["image_encoder"],
             "student": ["image_encoder", "sam_prompt_encoder", "sam_mask_decoder"]}[target]
    if "sam_mask_decoder" in parts:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for name in parts:
        getattr(student, name).compile(**({} if name == "image_encoder" else {"dynamic": False}))
    return parts
