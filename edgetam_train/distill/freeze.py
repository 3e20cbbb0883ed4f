"""Freezing parts of the student by config (``model.freeze``), for fine-tuning with little data or memory.

``model.freeze=[image_encoder.trunk]`` names module-name prefixes inside the student (the official checkpoint's key
prefixes; a leading ``student.`` is accepted). Everything under a frozen prefix

* has ``requires_grad=False``, so :func:`edgetam_train.distill.optim.build_optimizer` leaves it out of the optimizer
  (its parameter groups skip parameters that do not require grad) and autograd does not track it;
* is in eval mode, and stays there when Lightning or the user calls ``train()`` on the LightningModule
  (:func:`keep_frozen_in_eval`), so BatchNorm running statistics are not updated and dropout is off: the frozen
  tensors, buffers included, are bit-identical in every checkpoint and export of the run.

A prefix may also name a single parameter or buffer (e.g. ``no_mem_embed``); a prefix that matches nothing is an
error naming the student's top-level modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def normalise_prefixes(prefixes: Iterable[str] | str | None) -> list[str]:
    """The prefixes of ``model.freeze`` as a list of dotted names (``student.`` removed, empty entries refused)."""
    if prefixes is None:
        return []
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    out = []
    for p in prefixes:
        p = str(p).strip()
        if p.startswith("student."):
            p = p[len("student."):]
        if not p or p == "student":
            raise ValueError(f"model.freeze entry {p!r}: name a part of the student, e.g. image_encoder.trunk "
                             f"(freezing the whole student leaves nothing to train)")
        out.append(p)
    return out


def freeze(model: nn.Module, prefixes: Iterable[str] | str | None) -> list[str]:
    """Freeze every module / parameter of ``model`` under ``prefixes`` (module docstring).

    Returns:
        the names of the frozen modules (for :func:`keep_frozen_in_eval`), outermost only.
    Raises:
        ValueError: a prefix matches no module, parameter or buffer of ``model``, or every parameter would be frozen.
    """
    prefixes = normalise_prefixes(prefixes)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    frozen_modules: list[str] = []
    for prefix in prefixes:
        hit_params = [n for n in params if _matches(n, prefix)]
        hit_buffers = [n for n in buffers if _matches(n, prefix)]
        if not hit_params and not hit_buffers:
            top = sorted({n.split(".")[0] for n in list(params) + list(buffers)})
            raise ValueError(f"model.freeze entry {prefix!r} matches no module or parameter of the student; "
                             f"prefixes are dotted module names such as image_encoder.trunk, "
                             f"sam_mask_decoder.transformer; top-level names: {', '.join(top)}")
        for n in hit_params:
            params[n].requires_grad_(False)
        if prefix in modules:
            frozen_modules.append(prefix)
    if params and not any(p.requires_grad for p in params.values()):
        raise ValueError(f"model.freeze={prefixes} freezes every parameter of the student: nothing would train")
    frozen_modules = [m for m in frozen_modules if not any(o != m and _matches(m, o) for o in frozen_modules)]
    keep_frozen_in_eval(model, frozen_modules)
    return frozen_modules


def keep_frozen_in_eval(model: nn.Module, frozen_modules: Sequence[str]) -> None:
    """Put the frozen modules (names from :func:`freeze`) of ``model`` in eval mode; call after every ``train()``."""
    if not frozen_modules:
        return
    modules = dict(model.named_modules())
    for name in frozen_modules:
        modules[name].eval()


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
