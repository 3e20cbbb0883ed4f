"""Which optimiser and learning-rate schedule a run uses, chosen in the config by a ``_partial_`` target.

``model.optimizer`` and ``model.scheduler`` (``configs/model/distill_image.yaml``) are Hydra nodes with
``_target_`` and ``_partial_: true``, so :class:`~edgetam_train.distill.module.DistillationModule` receives
``functools.partial`` objects (the lightning-hydra-template convention). The defaults are ours:
:func:`~edgetam_train.distill.optim.build_optimizer` (AdamW over the decay / no-decay / trunk groups) and
:func:`~edgetam_train.distill.optim.build_scheduler` (inverse-sqrt or cosine, stepped every optimiser step).

How each kind of target is called (:func:`make_optimizer`, :func:`make_scheduler`):

* optimiser: a ``torch.optim.Optimizer`` class gets the student's parameter groups of
  :func:`~edgetam_train.distill.optim.param_groups` at its ``lr`` and ``weight_decay`` (so the no-decay rule holds
  for any optimiser), e.g. ``model.optimizer._target_=torch.optim.SGD +model.optimizer.momentum=0.9
  ~model.optimizer.betas`` (the grouping keys ``vision_lr``, ``vision_prefix`` and ``weight_decay_rule`` go to
  ``param_groups``, not to the class; other keys the class does not take are an error, unless null); any other
  callable (ours) gets the student module;
* schedule: called with the optimiser, plus ``total_steps`` = ``trainer.max_steps`` when its signature has a
  ``total_steps`` parameter the config does not set (ours, ``torch.optim.lr_scheduler.OneCycleLR``); null: a
  constant learning rate.

A partial is the one accepted form (code that builds the module directly passes ``functools.partial(build_optimizer,
lr=...)``); a null optimiser is ours with its defaults. What the checkpoint's hyper-parameters record is
:func:`describe`'s plain dict, derived here and nowhere else, never the partial (Lightning's resume loads checkpoints
with ``weights_only=True``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from edgetam_train.distill.optim import build_optimizer, param_groups

Spec = Callable[..., Any] | None  # a (nested) functools.partial, or None
GROUPING_KEYS = ("vision_lr", "vision_prefix", "weight_decay_rule")  # param_groups' keys, for any optimiser class


def _target(spec: Callable[..., Any]) -> Callable[..., Any]:
    """The callable behind (nested) ``functools.partial`` objects."""
    while isinstance(spec, functools.partial):
        spec = spec.func
    return spec


def _keywords(spec: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments bound by (nested) ``functools.partial`` objects, outer ones winning."""
    out: dict[str, Any] = {}
    while isinstance(spec, functools.partial):
        out = {**spec.keywords, **out}
        spec = spec.func
    return out


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _check(spec: Spec, key: str) -> None:
    """Refuse anything but a callable or None, naming the config key."""
    if spec is not None and not callable(spec):
        raise TypeError(f"{key}: expected a _partial_ target (_target_: ..., _partial_: true) or null, got "
                        f"{type(spec).__name__} {spec!r}")


def describe(spec: Spec) -> dict[str, Any] | None:
    """A plain, ``weights_only``-loadable dict of an optimiser / schedule choice for the hyper-parameters:
    ``{"_target_": "module.name", "_partial_": True, **bound keywords}``; None for None."""
    _check(spec, "model.optimizer / model.scheduler")
    if spec is None:
        return None
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in _keywords(spec).items()}
    return {"_target_": _name(_target(spec)), "_partial_": True, **kw}


def make_optimizer(spec: Spec, student: nn.Module) -> Optimizer:
    """The optimiser of ``student`` from ``spec`` (module docstring: a partial, or None for ours with its
    defaults)."""
    _check(spec, "model.optimizer")
    if spec is None:
        return build_optimizer(student)
    target = _target(spec)
    if inspect.isclass(target) and issubclass(target, Optimizer):
        accepted = inspect.signature(target).parameters
        kw = _keywords(spec)
        grouping = {k: kw.pop(k) for k in GROUPING_KEYS if k in kw and k not in accepted}
        kw = {k: v for k, v in kw.items() if k in accepted or v is not None}  # null keys: unset
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            raise ValueError(f"model.optimizer: {_name(target)} takes no {unknown}; remove them (e.g. "
                             f"~model.optimizer.{unknown[0]}) or set them to null")
        lr = kw.get("lr", accepted["lr"].default if "lr" in accepted else 1e-3)
        wd = kw.get("weight_decay", accepted["weight_decay"].default if "weight_decay" in accepted else 0.0)
        groups = param_groups(student, weight_decay=float(wd), lr=float(lr), **grouping)
        if not groups:
            raise ValueError(f"{type(student).__name__} has no trainable parameters to optimise")
        return target(groups, **kw)
    optimizer = spec(student)
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"model.optimizer: {_name(target)}(student) returned {type(optimizer).__name__}, expected a "
                         "torch.optim.Optimizer")
    return optimizer


def make_scheduler(spec: Spec, optimizer: Optimizer, total_steps: int | None
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule of ``optimizer`` from ``spec`` (stepped every optimiser step), or None for a constant rate;
    ``total_steps``: the trainer's ``max_steps`` (None outside a Trainer or when unlimited)."""
    _check(spec, "model.scheduler")
    if spec is None:
        return None
    target = _target(spec)
    try:
        takes_total = "total_steps" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes_total = False
    if takes_total and "total_steps" not in _keywords(spec):
        return spec(optimizer, total_steps=total_steps)
    return spec(optimizer)
