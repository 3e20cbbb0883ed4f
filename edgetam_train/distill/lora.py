"""LoRA fine-tuning in the training module (``model.lora``): set-up, and the checkpoint's adapter entry.

:func:`setup_lora` adds peft LoRA layers to the student (:mod:`edgetam_train.models.lora`) after ``init_from`` and
``model.freeze`` are applied, so only the adapters and ``model.lora.heads`` train; everything else, BatchNorm running
statistics included (:func:`keep_batchnorm_eval`), stays bit-identical to ``init_from``.

Checkpoints put the adapters in the checkpoint's ``lora`` entry and keep ``student.<official key>`` for the other
tensors (:func:`save_lora`). With a ``model.init_from`` they keep only the trained tensors (adapters, ``heads``; the
optimiser state is already only theirs) and its reference (``lora_base``: path, size, sha256; :func:`lora_base`): a
hiera_t LoRA checkpoint is a few MB instead of the whole model. :func:`restore_lora` checks on resume that
``model.init_from`` is still that file, puts peft's key names back and fills the frozen tensors from the module (which
holds ``init_from``) before Lightning loads the state_dict strictly. Readers of a plain model
(:func:`edgetam_train.models.checkpoint.read_checkpoint`) load the base (sha256-checked), put the trained tensors over
it and merge the adapters, so exports have the official layout.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from edgetam_train.distill.freeze import normalise_prefixes, trainable_summary
from edgetam_train.models.checkpoint import CheckpointMismatchError, base_reference
from edgetam_train.models.lora import (
    BASE_KEY,
    LORA_KEY,
    LoraSpec,
    apply_lora,
    join_state_dict,
    lora_record,
    parse_spec,
    split_state_dict,
)

log = logging.getLogger(__name__)
PREFIX = "student."


def setup_lora(student: nn.Module, cfg: Mapping[str, Any] | None, freeze: Sequence[str] | None) -> LoraSpec | None:
    """Apply ``model.lora`` (``cfg``; None / rank 0: off) to ``student`` in place; returns the spec or None.

    Raises:
        ValueError: a target matching no linear, a target or head only under ``model.freeze``, or nothing left to
            train (each names the entries).
    """
    spec = parse_spec(cfg)
    if spec is None:
        return None
    frozen = normalise_prefixes(freeze)
    targets = apply_lora(student, spec, frozen)
    trainable, total = trainable_summary(student)
    if trainable == 0:
        raise ValueError(f"model.lora={spec.targets} with model.freeze={frozen} leaves nothing to train")
    adapters = sum(p.numel() for n, p in student.named_parameters() if ".lora_" in n)
    log.info("LoRA rank %d (alpha %g) on %d linears (%s); trainable: %d adapter + %d head parameters of %d",
             spec.rank, spec.alpha, len(targets), ", ".join(spec.targets), adapters, trainable - adapters, total)
    return spec


def keep_batchnorm_eval(student: nn.Module) -> None:
    """BatchNorm layers in eval mode: their running statistics are not adapters and must not change."""
    for m in student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def lora_base(spec: LoraSpec | None, init_from: str | None) -> dict[str, Any] | None:
    """The ``lora_base`` reference (path, size, sha256 of ``init_from``) that a LoRA run's checkpoints carry instead
    of the frozen weights; None without LoRA, or without an ``init_from`` (then checkpoints hold the whole model)."""
    if spec is None:
        return None
    if not init_from or str(init_from).strip().lower() == "none":
        log.info("LoRA without model.init_from: checkpoints hold the whole student (no base file to refer to)")
        return None
    base = base_reference(init_from)
    log.info("LoRA checkpoints hold the adapters and trained heads only, over model.init_from=%s (sha256 %s)",
             init_from, base["sha256"][:12])
    return base


def save_lora(checkpoint: dict[str, Any], spec: LoraSpec, trainable: Collection[str],
              base: Mapping[str, Any] | None) -> None:
    """Put the checkpoint's adapters in its ``lora`` entry and the other ``student.*`` tensors under their official
    keys (in place). With a ``base`` (:func:`lora_base`), only the ``trainable`` tensors (module state_dict keys) are
    kept, in ``state_dict`` and in the EMA callback's ``current_model_state``, and ``lora_base`` records the base."""
    if base is not None:
        for key in ("state_dict", "current_model_state"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in trainable}
        checkpoint[BASE_KEY] = dict(base)
    plain, adapters = split_state_dict(checkpoint["state_dict"])
    checkpoint["state_dict"] = plain
    checkpoint[LORA_KEY] = lora_record(spec, adapters, prefix=PREFIX)


def restore_lora(checkpoint: dict[str, Any], current: Mapping[str, Tensor], base: Mapping[str, Any] | None) -> None:
    """The inverse of :func:`save_lora` (in place), for Lightning's resume into the LoRA-wrapped student: peft's key
    names back, and the tensors a slim checkpoint left out taken from ``current`` (the module's state_dict, i.e. its
    ``model.init_from`` weights) once the checkpoint's ``lora_base`` is checked to be this run's ``base``.

    Raises:
        CheckpointMismatchError: the checkpoint's base is not this run's ``model.init_from`` (naming both).
    """
    reference = checkpoint.get(BASE_KEY)
    if reference is not None:
        recorded = reference.get("sha256") if isinstance(reference, dict) else None
        if base is None or base.get("sha256") != recorded:
            ours = (f"this run's model.init_from={base['path']} has sha256 {base['sha256']}" if base is not None
                    else "this run has no model.init_from")
            raise CheckpointMismatchError(
                f"the checkpoint resumed from holds LoRA adapters trained over {reference.get('path')} (sha256 "
                f"{recorded}), but {ours}: resume with the original model.init_from file")
    record = checkpoint.get(LORA_KEY)
    if isinstance(record, dict):
        adapters = {PREFIX + k: v for k, v in record.get("adapters", {}).items()}
        checkpoint["state_dict"] = join_state_dict(checkpoint["state_dict"], adapters)
    if reference is not None:  # the frozen tensors: this run's init_from, already in the module
        for key in ("state_dict", "current_model_state"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = {**current, **checkpoint[key]}
